"""The root's container, started by a forked child while the CLI is still importing.

Why: a one-shot ``rlm-sandbox run`` spends about half a second importing (click, pydantic,
its settings, asyncio, httpx) before it knows its configuration, and then about a third of a
second starting its root container (Docker's client, create, start, the kernel's start).
Both are mostly CPU, and a process has one GIL: no thread can overlap them. A child forked
before the imports can, on the other core: it reads the same settings with the same code,
starts the container the run would start, and hands it over, the attach socket and the
input file as file descriptors over a socket pair (``SCM_RIGHTS``).

Nothing is trusted that was not checked: the run takes the container only if the child's
sandbox configuration is exactly the one the run computed for its root; otherwise it
declines, and the child removes what it made. A child that fails or is slower than the
run's start timeout changes nothing: the run starts its own container. The child never
reads standard input (it is ``/dev/null`` there) and writes nothing (its stdout and stderr
too); the run's owner label and the input file's name carry the run's pid, not the child's,
so ``gc`` sees them as the run's. If the run dies first, the child sees its end of the pair
close and removes the container; if both die, the container's supervisor ends it when its
attach stream closes, as for any orphan.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the fork happens before pydantic is imported: nothing heavy at the top
    from rlm_sandbox.sandbox.config import SandboxConfig

_HEADER = struct.Struct(">I")
_ADOPTED, _DECLINED = b"A", b"D"
_MAX_MESSAGE = 1 << 20
_CHILD_WAIT_S = 120.0  # a run that never answers: the child removes its container after this


@dataclass
class _Pending:
    pid: int
    sock: socket.socket
    run_id: str
    owner_pid: int


_pending: _Pending | None = None
_in_child: _Pending | None = None
_lock = threading.Lock()


def fork(run_id: str) -> None:
    """Fork the child that will start ``run_id``'s root container (a CLI ``run`` only,
    before any thread exists). A platform without ``fork`` simply gets no prestart."""
    global _pending, _in_child
    if not hasattr(os, "fork") or threading.active_count() > 1 or _pending is not None:
        return
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    owner = os.getpid()
    pid = os.fork()
    if pid == 0:
        parent_sock.close()
        _quiet()
        _in_child = _Pending(pid=0, sock=child_sock, run_id=run_id, owner_pid=owner)
        return
    child_sock.close()
    _pending = _Pending(pid=pid, sock=parent_sock, run_id=run_id, owner_pid=owner)


def run_id() -> str | None:
    """The run id the prestart was forked for: the run must use it (both sides know it)."""
    state = _pending or _in_child
    return state.run_id if state is not None else None


def in_child() -> bool:
    return _in_child is not None


def _quiet() -> None:
    """The child reads nothing and writes nothing the user would see."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


# ---------------------------------------------------------------- the child


def child_start(
    make_config: Callable[[], SandboxConfig | None],
    make_preload: Callable[[], tuple[str, str, int] | None] = lambda: None,
) -> None:
    """In the child: start the container ``make_config()`` describes (None: not eligible),
    load the input ``make_preload()`` names (a plain file's absolute path, its kind and the
    cap on the input; None: the run loads its own), hand both over, and end the process;
    never returns."""
    state = _in_child
    assert state is not None
    code = 0
    try:
        _child(state, make_config, make_preload)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _child(
    state: _Pending,
    make_config: Callable[[], SandboxConfig | None],
    make_preload: Callable[[], tuple[str, str, int] | None],
) -> None:
    from .backend import sandbox_labels
    from .docker_backend import DockerBackend, can_mount_input
    from .image import image_if_built
    from .input_file import InputFile

    config = make_config()
    if config is None or config.backend != "docker":
        return
    backend = DockerBackend(config.docker_url)
    if not backend.url.startswith("unix://"):
        return  # TLS engines relay their stream through a thread: not a socket to hand over
    image = image_if_built(backend.client, config)
    if image is None:
        return  # a build shows progress: the run does it
    inp = InputFile(owner_pid=state.owner_pid) if config.input_file and can_mount_input(backend.url) else None
    labels = sandbox_labels(config, owner_pid=state.owner_pid)
    started = None
    try:
        started = backend.start(config, image, labels, input_path=inp.path if inp else None)
        sock = started.stream.socket
        header = {
            "id": started.id,
            "config": config.model_dump(mode="json"),
            "start_s": started.start_s,
            "leftover": started.stream.leftover.hex(),
            "input": {"dir": inp.dir, "path": inp.path} if inp is not None and started.input_file else None,
        }
        if header["input"] is not None and inp is not None:
            header["preload"] = _preload(sock, inp, make_preload)
        body = json.dumps(header).encode()
        fds = [sock.fileno()] + ([inp.fileno()] if header["input"] else [])
        socket.send_fds(state.sock, [_HEADER.pack(len(body)) + body], fds)
        sock.close()  # the run's copy is the stream now: its end must close it
        state.sock.settimeout(_CHILD_WAIT_S)
        answer = state.sock.recv(1)
    except BaseException:
        answer = b""
    if answer == _ADOPTED and started is not None:
        _serve(state.sock, backend, started.id, inp)
        return
    if started is not None:
        backend.remove(started.id)
    if inp is not None:
        inp.close()


def _preload(sock: socket.socket, inp: Any, make_preload: Callable[[], Any]) -> dict[str, Any] | None:
    """Fill the input file from the run's one plain input and ask the kernel to load it
    (request id 2, the first the run would use): by the time the run needs ``context``,
    the kernel has it. Any doubt (a cap, a file that changed while copied): no preload."""
    from rlm_sandbox.kernel import protocol as P

    try:
        wanted = make_preload()
    except Exception:
        return None
    if wanted is None:
        return None
    path, kind, cap = wanted
    try:
        before = _identity(path)
        if before[0] > cap or not inp.has_room(before[0]):
            return None
        filled = inp.fill(Path(path), lambda _chunk: iter(()), before[0], 4 << 20)
        if filled.error is not None or filled.size != before[0] or _identity(path) != before:
            inp.clear()
            return None
    except OSError:
        inp.clear()
        return None
    ident = 2
    frames = P.encode_header(
        {"t": P.CONTEXT_BEGIN, "id": ident, "kind": kind, "size": filled.size, "file": filled.nonce}
    )
    frames += P.encode_header({"t": P.CONTEXT_END, "id": ident})
    sock.sendall(frames)
    return {"ident": ident, "path": path, "kind": kind, "size": filled.size, "stat": list(before)}


def _serve(sock: socket.socket, backend: Any, sandbox_id: str, inp: Any) -> None:
    """Keep the adopted container for the run: kill, describe the exit, remove, on request
    (one JSON line each way), so the run never imports Docker's client for it. The run's end
    removes it; so does the run's death (end of file), with the input file it left."""
    sock.settimeout(None)
    stream = sock.makefile("rwb")
    removed = False
    try:
        for line in stream:
            op = json.loads(line).get("op")
            reply: dict[str, Any] = {}
            if op == "kill":
                backend.kill(sandbox_id)
            elif op == "exit_info":
                info = backend.exit_info(sandbox_id, wait_s=float(json.loads(line).get("wait_s", 0.0)))
                reply = dataclasses.asdict(info)
            elif op == "remove":
                reply = {"removed": backend.remove(sandbox_id)}
                removed = True
            stream.write(json.dumps(reply).encode() + b"\n")
            stream.flush()
            if removed:
                return
    except (OSError, ValueError):
        pass
    finally:
        if not removed:
            backend.remove(sandbox_id)
            if inp is not None:
                shutil.rmtree(inp.dir, ignore_errors=True)


# ---------------------------------------------------------------- the run


@dataclass
class Preload:
    """The input the child already loaded into the kernel: one plain file, named by its
    absolute path and what ``stat`` said of it, as ``kind``. The run uses it only for the
    same file, unchanged (same size, mtime, inode, device), loaded the same way."""

    ident: int
    path: str
    kind: str
    size: int
    stat: tuple[int, int, int, int]
    info: Any = None  # the kernel's ContextInfo, once the run read its reply

    def matches(self, data: Any, kind: str | None) -> bool:
        if not isinstance(data, os.PathLike) or (kind or "str") != self.kind:
            return False
        try:
            return os.path.abspath(data) == self.path and _identity(self.path) == self.stat
        except OSError:
            return False


def _identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


@dataclass
class Handover:
    """What the child started: its id, the child's end of the pair, its attach socket and
    what came with the upgrade, and its input file (directory, path, descriptor) when it is
    mounted."""

    id: str
    keeper: socket.socket  # to the child, which keeps the container for the run (ChildBackend)
    sock: socket.socket
    leftover: bytes
    start_s: float
    input: tuple[str, str, int] | None
    preload: Preload | None = None

    def started(self) -> Any:
        """As a backend's start returns it: the attach stream with what came with it."""
        from .attach import AttachStream
        from .backend import Started

        stream = AttachStream(self.sock, self.leftover)
        return Started(self.id, stream, self.start_s, input_file=self.input is not None)


def take(expected: SandboxConfig, timeout_s: float) -> Handover | None:
    """The prestarted container, if there is one for exactly ``expected`` (once per
    process); None otherwise, and whatever the child made is removed by the child."""
    global _pending
    with _lock:
        state, _pending = _pending, None
    if state is None or expected.run_id != state.run_id:
        if state is not None:
            _decline(state)
        return None
    try:
        state.sock.settimeout(timeout_s)
        data, fds, _flags, _addr = socket.recv_fds(state.sock, _MAX_MESSAGE, 2)
        while len(data) >= _HEADER.size and len(data) < _HEADER.size + _HEADER.unpack_from(data)[0]:
            more = state.sock.recv(_MAX_MESSAGE)
            if not more:
                break
            data += more
    except OSError:
        _decline(state)
        return None
    from rlm_sandbox.sandbox.config import SandboxConfig

    try:
        (size,) = _HEADER.unpack_from(data)
        header = json.loads(data[_HEADER.size : _HEADER.size + size])
        same = SandboxConfig.model_validate(header["config"]) == expected
        wants = 2 if header["input"] else 1
    except (ValueError, KeyError, TypeError, struct.error):  # pydantic's ValidationError too
        same, wants = False, -1
    if not same or len(fds) != wants:
        for fd in fds:
            os.close(fd)
        _decline(state)
        return None
    state.sock.sendall(_ADOPTED)
    _reap(state)
    inp = header["input"]
    return Handover(
        id=header["id"],
        keeper=state.sock,
        sock=socket.socket(fileno=fds[0]),
        leftover=bytes.fromhex(header["leftover"]),
        start_s=float(header["start_s"]),
        input=(inp["dir"], inp["path"], fds[1]) if inp else None,
        preload=_preload_of(header.get("preload")) if inp else None,
    )


def _preload_of(value: Any) -> Preload | None:
    if not isinstance(value, dict):
        return None
    try:
        return Preload(
            ident=int(value["ident"]),
            path=str(value["path"]),
            kind=str(value["kind"]),
            size=int(value["size"]),
            stat=tuple(int(x) for x in value["stat"]),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError):
        return None


def abandon() -> None:
    """The run will not take it (it ended before its root started): the child removes it."""
    global _pending
    with _lock:
        state, _pending = _pending, None
    if state is not None:
        _decline(state)


def _decline(state: _Pending) -> None:
    try:
        state.sock.sendall(_DECLINED)
    except OSError:
        pass
    state.sock.close()
    _reap(state)


def _reap(state: _Pending) -> None:
    """The child ends at once after the answer: wait for it in the background (no zombie)."""

    def wait() -> None:
        try:
            os.waitpid(state.pid, 0)
        except ChildProcessError:
            pass

    threading.Thread(target=wait, name="prestart-reap", daemon=True).start()


class ChildBackend:
    """The backend of an adopted container: its prestart child, which has Docker's client
    loaded, kills, describes and removes it on request. Should the child be gone, the run
    makes its own client (the same calls, only slower to start)."""

    name = "docker"

    def __init__(self, sock: socket.socket, url: str | None) -> None:
        self._stream = sock.makefile("rwb")
        self._sock = sock
        self._url = url
        self._lock = threading.Lock()
        self._own: Any = None
        self._gone = False

    def _call(self, op: str, **args: Any) -> dict[str, Any] | None:
        with self._lock:
            if self._gone:
                return None
            try:
                self._stream.write(json.dumps({"op": op, **args}).encode() + b"\n")
                self._stream.flush()
                line = self._stream.readline()
                reply = json.loads(line) if line else None
            except (OSError, ValueError):
                reply = None
            if reply is None or op == "remove":
                self._gone = True
                self._sock.close()
            return reply if isinstance(reply, dict) else None

    def _docker(self) -> Any:
        if self._own is None:
            from .docker_backend import DockerBackend

            self._own = DockerBackend(self._url)
        return self._own

    def kill(self, sandbox_id: str) -> None:
        if self._call("kill") is None:
            self._docker().kill(sandbox_id)

    def exit_info(self, sandbox_id: str, wait_s: float = 0.0) -> Any:
        from .backend import ExitInfo

        reply = self._call("exit_info", wait_s=wait_s)
        if reply is None:
            return self._docker().exit_info(sandbox_id, wait_s)
        return ExitInfo(**reply)

    def remove(self, sandbox_id: str) -> bool:
        from .registry import live

        reply = self._call("remove")
        live.discard(self, sandbox_id)
        if reply is None:
            return bool(self._docker().remove(sandbox_id))
        return bool(reply.get("removed"))
