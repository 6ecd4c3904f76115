"""``Sandbox``: one hardened container whose kernel keeps ``context`` and every variable in memory.

Lifecycle: ``new`` -> ``running`` -> ``closed``. ``close()`` (or leaving the ``with`` block)
removes the container whatever happened; a sandbox that failed (timeout past the grace
period, protocol violation, crash) is killed and removed at once and raises the typed error
on every later use. Cells run one at a time; ``llm_query`` calls from a cell are answered
concurrently by the handler from a bounded pool.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, Protocol, runtime_checkable

from rlm_sandbox.errors import (
    CellTimeout,
    EngineUnavailable,
    HostMemoryExceeded,
    ProtocolViolation,
    SandboxClosed,
    SandboxCrashed,
    SandboxError,
    SandboxStartError,
)
from rlm_sandbox.kernel import protocol as P
from rlm_sandbox.safe_text import visible
from rlm_sandbox.sandbox.config import SandboxConfig

from .backend import LABEL, LABEL_NODE, LABEL_OWNER, LABEL_RUN, LABEL_TENANT, Backend
from .channel import KernelChannel, LLMHandler
from .frames import FrameLimits
from .held import Hold
from .messages import ContextReply, ExecReply, RawCitation, citations_of


@dataclass(frozen=True, slots=True)
class FileStart:
    """In a ``files`` context stream: the chunks that follow are the text of ``name``."""

    name: str


@runtime_checkable
class ContextStream(Protocol):
    """A context its owner streams itself (:class:`rlm_sandbox.inputs.InputSet`): several
    files, compressed ones, standard input. ``kind`` is ``str`` (one text) or ``files`` (a
    dict of name -> text; each file's chunks follow a :class:`FileStart`); ``size`` is the
    total in bytes, -1 when unknown. ``pieces`` may raise to stop the load (a cap)."""

    context_kind: str
    context_size: int

    def pieces(self, chunk: int) -> Iterator[bytes | memoryview | FileStart]: ...


ContextInput = str | bytes | bytearray | memoryview | os.PathLike | list | dict | BinaryIO | ContextStream


@dataclass(frozen=True, slots=True)
class ContextInfo:
    """What the kernel built: ``context``'s type and ``len()``, and the bytes sent."""

    type: str
    length: int | None
    bytes: int


@dataclass(slots=True)
class ExecResult:
    """What a cell produced. ``error`` is ``"Type: message"`` or None."""

    stdout: str
    stderr: str
    error: str | None
    ename: str | None
    evalue: str | None
    traceback: str | None
    duration_s: float
    wall_s: float
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    final: str | None
    citations: list[RawCitation] = field(default_factory=list)  # cite() calls, unchecked

    @property
    def ok(self) -> bool:
        return self.error is None


def owner_label() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{_process_start_ticks(os.getpid())}"


def _process_start_ticks(pid: int) -> str:
    """A pid's start time in clock ticks: a pid reused by another process gets a new one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().rsplit(b")", 1)[1].split()
        return stat[19].decode()
    except (OSError, IndexError):
        return "0"


#: How long ``close`` waits for a thread busy with the sandbox once its container is killed.
CLOSE_WAIT_S = 30.0


class Sandbox:
    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        llm_handler: LLMHandler | None = None,
        backend: Backend | str | None = None,
        progress: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(backend, str):  # Sandbox(backend="local") names a kind, like the setting
            overrides["backend"], backend = backend, None
        base = config or SandboxConfig()
        self.config = base.model_copy(update=overrides) if overrides else base
        if overrides:
            self.config = SandboxConfig.model_validate(self.config.model_dump())
        self.llm_handler = llm_handler
        self._backend = backend
        self._progress = progress
        self.id: str | None = None
        self.state = "new"
        self.start_s: float | None = None
        self.kernel_pid: int | None = None
        self._channel: KernelChannel | None = None
        self._error: BaseException | None = None
        self._lock = threading.RLock()
        self._next_id = 2  # even ids: requests started by the host
        self._killed_for: str | None = None

    # ---- lifecycle

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            if self.config.backend == "local":
                from .local_backend import shared_local_backend

                self._backend = shared_local_backend()
            else:
                from .docker_backend import DockerBackend

                self._backend = DockerBackend(self.config.docker_url)
        return self._backend

    def labels(self) -> dict[str, str]:
        cfg = self.config
        return {
            **cfg.labels,
            LABEL: "1",
            LABEL_RUN: cfg.run_id or "adhoc",
            LABEL_NODE: cfg.node_id or uuid.uuid4().hex[:12],
            LABEL_TENANT: cfg.tenant,
            LABEL_OWNER: owner_label(),
        }

    def start(self) -> Sandbox:
        with self._lock:
            if self.state == "closed":
                raise SandboxClosed("this sandbox was closed")
            if self.state == "running":
                return self
            t0 = time.perf_counter()
            backend = self.backend
            image = backend.ensure_image(self.config, progress=self._progress)
            started = backend.start(self.config, image, self.labels())
            self.id = started.id
            self.state = "running"
            self._channel = KernelChannel(
                started.stream,
                limits=FrameLimits(self.config.max_frame_header, self.config.max_frame_payload),
                io_timeout=self.config.io_timeout,
                llm_handler=self.llm_handler,
                llm_concurrency=self.config.llm_concurrency,
                max_pending_llm=self.config.max_pending_llm,
                on_fatal=self._on_fatal,
                name=f"sandbox {started.id[:12]}",
                max_held=self.config.max_held_bytes,
                held_stall_s=self.config.held_stall_timeout,
            )
            self._channel.frame_stall_s = self.config.kill_grace
            try:
                ready = self._channel.wait_ready(self.config.start_timeout)
            except SandboxError as exc:
                self._raise_failure(exc)
            except BaseException:
                self.close()
                raise
            if ready is None:
                self._kill("start timeout")
                self.close()
                raise SandboxStartError(
                    f"the kernel did not report ready within {self.config.start_timeout:g} s",
                    hint="the engine may be overloaded; raise start_timeout",
                )
            self.kernel_pid = ready.pid
            self.start_s = time.perf_counter() - t0
            return self

    def close(self) -> None:
        """Stop and remove the container; safe to call any number of times, from any path.

        Called from another thread while a cell (or a load) holds the sandbox, it kills the
        container first, so that the busy thread's wait ends at once instead of at the
        cell's end, then takes the sandbox from it (at most :data:`CLOSE_WAIT_S`) and removes
        it: when ``close`` returns, the container is gone."""
        if not self._lock.acquire(blocking=False):
            if self.state != "closed":
                self._kill("closed by another thread")
            if not self._lock.acquire(timeout=CLOSE_WAIT_S):
                return  # a thread that never lets go: the registry removes it at exit
        try:
            if self.state == "closed":
                return
            self.state = "closed"
            channel, self._channel = self._channel, None
        finally:
            self._lock.release()
        if channel is not None:
            if channel.error is None:
                try:
                    channel.send({"t": P.SHUTDOWN, "id": 0}, timeout=1.0)
                except SandboxError:
                    pass
            channel.close()
        if self.id is not None:
            self.backend.remove(self.id)

    @property
    def healthy(self) -> bool:
        """Started, not closed, and its channel has seen no error (for pools)."""
        ch = self._channel
        return self.state == "running" and ch is not None and ch.error is None and not ch.eof

    def set_llm_handler(self, handler: LLMHandler | None) -> None:
        """Bind the handler of the node this sandbox now serves (a pooled sandbox had none)."""
        self.llm_handler = handler
        if self._channel is not None:
            self._channel.llm_handler = handler

    # ---- failures

    def _on_fatal(self, exc: BaseException) -> None:
        """Called by the channel's reader on a violation or EOF: kill now, explain later."""
        if isinstance(exc, ProtocolViolation):
            self._kill("protocol violation")
        elif isinstance(exc, HostMemoryExceeded):
            self._kill("host memory bound")

    def _kill(self, why: str) -> None:
        self._killed_for = why
        if self.id is not None:
            self.backend.kill(self.id)

    def _raise_failure(self, exc: BaseException) -> NoReturn:
        """Turn what the channel saw into the most precise typed error, then clean up."""
        err = exc
        if not isinstance(exc, ProtocolViolation | CellTimeout | HostMemoryExceeded) and self.id is not None:
            err = self._crash_error(exc)
        self._error = err
        self.close()
        raise err from None

    def _crash_error(self, cause: BaseException) -> SandboxError:
        info = self.backend.exit_info(self.id or "", wait_s=2.0)
        # What the kernel wrote to its diagnostic stream is the cell's to choose: it enters the
        # error (and so terminals, traces and --json) with every control character made visible.
        diag = visible(self._channel.diagnostics().strip()[-1500:]) if self._channel else ""
        tail = f"; kernel said: {diag}" if diag else ""
        if not info.exists and info.error:
            return EngineUnavailable(
                f"the Docker engine stopped answering while sandbox {self.id and self.id[:12]} ran ({info.error})",
                hint="restart the engine (bash scripts/ensure-docker.sh), then `rlm-sandbox gc` removes what is left",
            )
        if not info.exists:
            return SandboxCrashed(
                f"the sandbox container {self.id and self.id[:12]} disappeared (removed from outside?)",
                reason="removed",
                hint="something else removed the container; check for a concurrent `rlm-sandbox gc`",
            )
        if info.oom_killed:
            return SandboxCrashed(
                f"the sandbox ran out of memory (limit {self.config.memory}) and was killed",
                reason="oom",
                exit_code=info.exit_code,
                hint="raise the memory limit (SandboxConfig.memory / --memory) or process the input in smaller pieces",
            )
        if info.running:
            self._kill("stream ended while running")
            return SandboxCrashed(
                f"the sandbox's stream broke while its kernel was running ({cause}){tail}", reason="stream"
            )
        code = info.exit_code
        if code in (137, 143) and not self._killed_for:
            # `docker rm -f` / `docker stop` from outside look like a kill at first: the engine
            # reports the exit before the container is gone. Look once more.
            time.sleep(0.3)
            again = self.backend.exit_info(self.id or "")
            if not again.exists:
                return SandboxCrashed(
                    f"the sandbox container {self.id and self.id[:12]} was killed and removed from outside",
                    reason="removed",
                    exit_code=code,
                    hint="something else removed the container; check for a concurrent `rlm-sandbox gc`",
                )
        if code == 137 or code == -9:
            return SandboxCrashed(
                f"the sandbox kernel was killed (SIGKILL, exit 137): by a cell, the runtime, or from outside{tail}",
                reason="killed",
                exit_code=code,
                hint="if nothing outside killed it, a cell did (os.kill) or the runtime hit a limit (pids)",
            )
        if code == 143:
            return SandboxCrashed(
                f"the sandbox kernel was terminated (SIGTERM, exit 143): by a cell or from outside (docker stop){tail}",
                reason="terminated",
                exit_code=code,
            )
        return SandboxCrashed(
            f"the sandbox kernel exited with code {code}{tail}",
            reason="exit",
            exit_code=code,
            hint="a cell ended the kernel process (os._exit, a signal, or a crash); the namespace is lost",
        )

    def _check_usable(self) -> KernelChannel:
        if self._error is not None:
            raise self._error
        if self.state == "new":
            self.start()
        if self.state == "closed" or self._channel is None:
            raise SandboxClosed("this sandbox was closed")
        if self._channel.error is not None:
            # The kernel died (or broke the protocol) between two calls: say why, clean up.
            self._raise_failure(self._channel.error)
        return self._channel

    def _expect(self, channel: KernelChannel, ident: int, kind: type) -> Any:
        try:
            return channel.expect(ident, kind)
        except SandboxError as exc:  # the channel failed just now
            self._raise_failure(exc)

    def _new_id(self) -> int:
        ident = self._next_id
        self._next_id += 2
        return ident

    # ---- context

    def load_context(
        self,
        data: ContextInput,
        *,
        kind: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        held: Hold | None = None,
    ) -> ContextInfo:
        """Send the input to the kernel, raw and in chunks; it becomes ``context``.

        str -> str, bytes -> bytes, list/dict -> the same JSON structure, a path (``Path``)
        or a binary file object -> streamed from disk as text (``kind="bytes"`` keeps bytes).
        ``progress(sent, size)`` follows a large load (size -1 when unknown, as for stdin).
        ``held`` is the host's count of ``data`` when it is a parent's prompt: released once
        the load is over (done or failed), when the host needs the text no more.
        """
        try:
            return self._load_context(data, kind, progress)
        finally:
            if held is not None:
                held.release()

    def _load_context(
        self, data: ContextInput, kind: str | None, progress: Callable[[int, int], None] | None
    ) -> ContextInfo:
        with self._lock:
            channel = self._check_usable()
            source, size, ctx_kind = _context_source(data, kind)
            ident = self._new_id()
            waiter = self._expect(channel, ident, ContextReply)
            try:
                channel.send({"t": P.CONTEXT_BEGIN, "id": ident, "kind": ctx_kind, "size": size})
                chunk = self.config.context_chunk
                sent = 0
                for piece in source(chunk):
                    if isinstance(piece, FileStart):
                        channel.send({"t": P.CONTEXT_FILE, "id": ident, "name": piece.name})
                        continue
                    channel.send({"t": P.CONTEXT_CHUNK, "id": ident}, piece)
                    sent += len(piece)
                    if progress is not None:
                        progress(sent, size)
                if size >= 0 and sent != size:
                    raise SandboxError(f"the input changed while it was read ({sent} of {size} bytes)")
                channel.send({"t": P.CONTEXT_END, "id": ident})
                reply = channel.wait(
                    waiter, self.config.io_timeout + size / 50e6 if size > 0 else self.config.io_timeout
                )
            except SandboxError as exc:
                if channel.error is not None:
                    self._raise_failure(channel.error)
                raise exc
            if not reply:
                self._kill("context load stalled")
                self._raise_failure(
                    ProtocolViolation(
                        f"the kernel did not confirm the context within {self.config.io_timeout:g} s"
                    )
                )
            msg: ContextReply = reply[0]
            if msg.status != "ok":
                raise SandboxError(f"the kernel could not build context: {msg.error}")
            return ContextInfo(type=msg.type or "?", length=msg.length, bytes=sent)

    # ---- cells

    def execute(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run one cell; state persists. A cell over its limit is interrupted, not fatal."""
        with self._lock:
            channel = self._check_usable()
            limit = float(timeout if timeout is not None else self.config.cell_timeout)
            if limit <= 0:
                raise ValueError("timeout must be positive")
            ident = self._new_id()
            waiter = self._expect(channel, ident, ExecReply)
            channel.clock.reset()
            channel.current_cell = ident
            t0 = time.perf_counter()
            try:
                channel.send(
                    {
                        "t": P.EXEC_REQUEST,
                        "id": ident,
                        "timeout": limit,
                        "output_cap": self.config.output_cap,
                        # What this host reads of a frame: the kernel refuses a request past it
                        # up front, with an error the cell can catch.
                        "max_header": self.config.max_frame_header,
                        "max_payload": self.config.max_frame_payload,
                    },
                    code.encode("utf-8", errors="surrogatepass"),
                )
                reply = channel.wait(waiter, limit + self.config.kill_grace, pausable=True)
            except SandboxError:
                self._raise_failure(channel.error or SandboxError("the sandbox failed"))
            except BaseException:
                # KeyboardInterrupt/SystemExit while a cell runs: the kernel's state is unknown.
                self._kill("interrupted")
                self.close()
                raise
            finally:
                channel.current_cell = 0
            if not reply and channel.stalled_in_frame(self.config.kill_grace):
                # The reply is stuck behind bytes that are not a frame (a cell wrote to the
                # protocol descriptor): name the real cause, not a timeout.
                self._kill("protocol violation")
                self._raise_failure(
                    ProtocolViolation(
                        f"the kernel's channel stalled inside a frame ({channel.buffered_bytes} bytes "
                        f"of it arrived, then nothing for {self.config.kill_grace:g} s); the reply "
                        "to the cell never came"
                    )
                )
            if not reply:
                self._kill("cell timeout")
                self._raise_failure(
                    CellTimeout(
                        f"a cell ran past its {limit:g} s limit and ignored the interrupt for "
                        f"{self.config.kill_grace:g} s more; the sandbox was killed"
                    )
                )
            msg: ExecReply = reply[0]
            try:
                return _result(msg, reply[1], self.config.output_cap, time.perf_counter() - t0)
            except ProtocolViolation as exc:  # citations that break the protocol's bounds
                self._kill("protocol violation")
                self._raise_failure(exc)

    def get_variable(self, name: str, timeout: float | None = None) -> str | None:
        """``str()`` of a variable of the namespace, or None when it does not exist (or its
        ``str()`` did not finish within ``timeout``, default the cell timeout)."""
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a variable name")
        result = self.execute(f"FINAL_VAR({name!r})", timeout=timeout)
        return result.final if result.ok else None


def _result(msg: ExecReply, payload: bytes, cap: int, wall: float) -> ExecResult:
    out_b, err_b, final_b, *rest = P.split_sizes(payload, msg.sizes)
    out_total, err_total = msg.totals
    stdout = out_b.decode("utf-8", errors="replace")
    stderr = err_b.decode("utf-8", errors="replace")
    if out_total > len(out_b):
        stdout += f"\n[output truncated: {out_total} bytes written, first {len(out_b)} shown]\n"
    if err_total > len(err_b):
        stderr += f"\n[stderr truncated: {err_total} bytes written, first {len(err_b)} shown]\n"
    error = None
    if msg.ename:
        error = f"{msg.ename}: {msg.evalue}" if msg.evalue else msg.ename
    return ExecResult(
        stdout=stdout,
        stderr=stderr,
        error=error,
        ename=msg.ename,
        evalue=msg.evalue,
        traceback=msg.traceback,
        duration_s=msg.duration_s,
        wall_s=wall,
        timed_out=msg.status == "timeout",
        stdout_truncated=out_total > len(out_b),
        stderr_truncated=err_total > len(err_b),
        final=final_b.decode("utf-8", errors="replace") if msg.has_final else None,
        citations=citations_of(rest[0]) if rest else [],
    )


def _context_source(data: ContextInput, kind: str | None) -> tuple[Callable[[int], Any], int, str]:
    """How to produce the input's bytes in chunks, its size (-1 unknown) and its kind."""
    if kind is not None and kind not in P.CONTEXT_KINDS:
        raise ValueError(f"kind must be one of {P.CONTEXT_KINDS}")
    if isinstance(data, ContextStream):
        return data.pieces, data.context_size, data.context_kind
    if isinstance(data, str):
        raw = data.encode("utf-8", errors="surrogatepass")
        return _chunks_of(raw), len(raw), kind or "str"
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data).cast("B")
        return _chunks_of(view), len(view), kind or "bytes"
    if isinstance(data, list | dict | tuple):
        try:
            raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise TypeError(f"context list/dict must be JSON-serialisable: {exc}") from None
        return _chunks_of(raw), len(raw), "json"
    if isinstance(data, os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        size = path.stat().st_size

        def from_file(chunk: int):
            with open(path, "rb", buffering=0) as f:
                while piece := f.read(chunk):
                    yield piece

        return from_file, size, kind or "str"
    if hasattr(data, "read"):

        def from_stream(chunk: int):
            reader = getattr(data, "buffer", data)
            while piece := reader.read(chunk):
                yield piece if isinstance(piece, bytes) else piece.encode("utf-8")

        return from_stream, -1, kind or "str"
    raise TypeError(f"cannot load a {type(data).__name__} as context (str, bytes, Path, file, list or dict)")


def _chunks_of(view: bytes | memoryview) -> Callable[[int], Any]:
    def gen(chunk: int):
        mv = memoryview(view)
        for pos in range(0, len(mv), chunk):
            yield mv[pos : pos + chunk]

    return gen
