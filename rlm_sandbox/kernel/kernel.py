"""The REPL kernel that runs inside each sandbox container (standard library only).

Why it looks like this:

* ``context`` and every variable live in one in-memory namespace for the container's life:
  a cell never pickles state or re-reads the input, so its cost does not grow with the input.
* The protocol channel is moved off fds 0/1/2 to private close-on-exec descriptors before any
  user code runs. fd 0 becomes /dev/null (a cell reading stdin gets end-of-file), fds 1/2
  become pipes drained by a thread (so output of child processes is caught too, up to a cap).
  A cell that writes to, closes or replaces fds 0/1/2 cannot forge or break frames; the fds
  are put back after every cell.
* A per-cell time limit: a watchdog thread signals the main thread when a cell's own time is
  up (time spent waiting on ``llm_query`` is the host's and does not count). The namespace
  survives. A cell that swallows the interrupt is re-signalled; the host kills a kernel that
  still does not yield within its grace period.
* ``llm_query`` may be called from many threads of a cell: every request has its own id and
  the reader thread routes each reply to its waiter.
"""

from __future__ import annotations

import ast
import codecs
import fcntl
import io
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import protocol as P

PRIVATE_FD_MIN = 100
MAX_HOST_HEADER = 1 << 20
DEFAULT_OUTPUT_CAP = 64 * 1024


class CellTimeoutError(BaseException):
    """Raised in the main thread when a cell's time is up.

    A BaseException, so a plain ``except Exception`` in a cell does not swallow it.
    """


class LLMQueryError(RuntimeError):
    """``llm_query`` could not be answered (no handler, a budget, a model error)."""


class ToolError(RuntimeError):
    """A host tool failed with an exception that has no counterpart in the sandbox."""


_MAX_TOOL_JSON = 1 << 20
_SIMPLE_SCHEMAS = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
}


def _schema(output: object) -> dict | None:
    """``output=`` as a JSON Schema: a dict is one already; ``dict``/``list``/... are shorthands."""
    if output is None:
        return None
    if isinstance(output, type) and output in _SIMPLE_SCHEMAS:
        return {"type": _SIMPLE_SCHEMAS[output]}
    if isinstance(output, dict):
        if len(json.dumps(output)) > 32768:
            raise ValueError("output schema is larger than 32 KB")
        return output
    raise TypeError("output= takes a JSON Schema dict, or one of dict, list, str, int, float, bool")


def _tool_exception(ename: str, message: str) -> BaseException:
    """The tool's own exception type when the sandbox has it (ValueError, KeyError, ...)."""
    import builtins

    cls = getattr(builtins, ename, None) if ename.isidentifier() else None
    text = message.split(": ", 1)[1] if message.startswith(ename + ": ") else message
    if ename == "KeyError" and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # str(KeyError) quotes its key; do not quote it twice
    if (
        isinstance(cls, type)
        and issubclass(cls, Exception)
        and not issubclass(cls, (SystemExit, KeyboardInterrupt))
    ):
        try:
            return cls(text)
        except Exception:
            pass
    return ToolError(message)


# --------------------------------------------------------------------------- channel


class Channel:
    """Frames over the two private descriptors; writes from any thread, reads from one."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self._in = io.BufferedReader(io.FileIO(fd_in, "rb", closefd=False), buffer_size=1 << 16)
        self.fd_in = fd_in
        self._fd_out = fd_out
        self._wlock = threading.Lock()

    def read_exact(self, n: int) -> bytes:
        data = self._in.read(n)
        if data is None or len(data) != n:
            got = 0 if data is None else len(data)
            raise EOFError(f"expected {n} bytes, got {got}")
        return data

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` straight from the stream: bulk payloads are never copied twice."""
        pos, n = 0, len(view)
        while pos < n:
            got = self._in.readinto(view[pos:])
            if not got:
                raise EOFError(f"expected {n} bytes, got {pos}")
            pos += got

    def read_frame_header(self) -> dict:
        size = P.parse_prefix(self.read_exact(P.PREFIX_SIZE), MAX_HOST_HEADER)
        return P.parse_header(self.read_exact(size))

    def send(self, header: dict, *payloads: bytes) -> None:
        total = sum(len(p) for p in payloads)
        head = P.encode_header(header, total)
        with self._wlock:
            if total < 1 << 16:
                self._write_all(head + b"".join(payloads))
                return
            self._write_all(head)
            for p in payloads:
                self._write_all(p)

    @property
    def fd_out(self) -> int:
        return self._fd_out

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd_out, view)
            view = view[n:]


# --------------------------------------------------------------------------- output capture


class _Sink:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self) -> None:
        self.cap = DEFAULT_OUTPUT_CAP
        self.buf = bytearray()
        self.total = 0

    def reset(self, cap: int) -> None:
        self.cap, self.buf, self.total = cap, bytearray(), 0

    def feed(self, data: bytes) -> None:
        room = self.cap - len(self.buf)
        if room > 0:
            self.buf += data[:room]
        self.total += len(data)


class OutputCapture:
    """fds 1 and 2 are pipes; one thread drains them so a flood never blocks or fills memory.

    At the end of a cell the main thread asks the drain thread to empty both pipes (everything
    the cell's own process wrote is in them by then) and waits for it: a sync, not a sleep.
    """

    def __init__(self) -> None:
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.ctl_r, self.ctl_w = os.pipe()
        for fd in (self.out_r, self.err_r, self.ctl_r):
            os.set_blocking(fd, False)
        self.sinks = {self.out_r: _Sink(), self.err_r: _Sink()}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        threading.Thread(target=self._drain, name="rlm-drain", daemon=True).start()

    def _read_available(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                return
            with self._lock:
                self.sinks[fd].feed(data)

    def _drain(self) -> None:
        poller = select.poll()
        for fd in (self.out_r, self.err_r, self.ctl_r):
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.ctl_r:
                    try:
                        os.read(self.ctl_r, 64)
                    except BlockingIOError:
                        pass
                    self._read_available(self.out_r)
                    self._read_available(self.err_r)
                    self._synced.set()
                else:
                    self._read_available(fd)

    def begin(self, cap: int) -> None:
        """Output written since the last ``take`` (a background thread) counts for this cell."""
        with self._lock:
            for sink in self.sinks.values():
                sink.cap = cap

    def sync(self) -> None:
        self._synced.clear()
        os.write(self.ctl_w, b"s")
        self._synced.wait(5.0)

    def take(self) -> tuple[bytes, int, bytes, int]:
        self.sync()
        with self._lock:
            out, err = self.sinks[self.out_r], self.sinks[self.err_r]
            taken = bytes(out.buf), out.total, bytes(err.buf), err.total
            out.reset(out.cap)
            err.reset(err.cap)
            return taken


# --------------------------------------------------------------------------- watchdog


class Watchdog:
    """Signals the main thread when a cell's own time is up; host waits do not count."""

    def __init__(self, main_ident: int) -> None:
        self._main = main_ident
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._paused_since: float | None = None
        self._outstanding = 0
        self.fired = False
        self.armed = False
        threading.Thread(target=self._run, name="rlm-watchdog", daemon=True).start()

    def arm(self, timeout: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + timeout
            self._outstanding = 0
            self._paused_since = None
            self.fired = False
            self.armed = True
            self._cond.notify_all()

    def disarm(self) -> None:
        with self._cond:
            self.armed = False
            self._deadline = None
            self._cond.notify_all()

    def host_wait_begin(self) -> None:
        with self._cond:
            self._outstanding += 1
            if self._outstanding == 1:
                self._paused_since = time.monotonic()

    def host_wait_end(self) -> None:
        with self._cond:
            self._outstanding = max(0, self._outstanding - 1)
            if self._outstanding == 0 and self._paused_since is not None:
                if self._deadline is not None:
                    self._deadline += time.monotonic() - self._paused_since
                self._paused_since = None
                self._cond.notify_all()

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None or self._outstanding:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self.fired = True
                try:
                    signal.pthread_kill(self._main, signal.SIGUSR1)
                except (ProcessLookupError, OSError):
                    pass
                # Re-signal a cell that swallows the interrupt until it yields or is killed.
                self._cond.wait(0.25)


# --------------------------------------------------------------------------- the kernel


class Kernel:
    def __init__(self) -> None:
        # Move the protocol off fds 0/1/2 before anything else can touch them.
        fd_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, PRIVATE_FD_MIN)
        fd_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, PRIVATE_FD_MIN)
        self.diag_fd = fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, PRIVATE_FD_MIN)
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.chan = Channel(fd_in, fd_out)
        self.capture = OutputCapture()
        self._restore_std_fds()
        # A cell's os.fork() copies the protocol descriptors: the child must never use them.
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._after_fork_in_child)

        self.main_ident = threading.get_ident()
        self.watchdog = Watchdog(self.main_ident)
        signal.signal(signal.SIGUSR1, self._on_timeout_signal)
        self.in_cell = False

        self.jobs: list = []
        self.jobs_cond = threading.Condition()
        self.pending: dict[int, dict] = {}
        self.pending_lock = threading.Lock()
        self.next_id = 1  # odd ids: requests started by the kernel
        self.id_lock = threading.Lock()
        self.current_cell = 0
        self.host_max_header = P.DEFAULT_MAX_HEADER
        self.host_max_payload = P.DEFAULT_MAX_PAYLOAD
        self.closed = False
        self.final: str | None = None

        self.engine: dict[str, object] = {
            "context": None,
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "rlm_query": self.rlm_query,
            "rlm_query_batched": self.rlm_query_batched,
            "_rlm_register_tools": self.register_tools,
            "FINAL": self.FINAL,
            "FINAL_VAR": self.FINAL_VAR,
            "SHOW_VARS": self.SHOW_VARS,
        }
        self.ns: dict[str, object] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.ns.update(self.engine)
        self.ns["LLMQueryError"] = LLMQueryError
        self.ns["CellTimeoutError"] = CellTimeoutError
        self.ns["ToolError"] = ToolError
        self._ctx_kind = "str"
        self._ctx_buf: bytearray | None = None
        self._ctx_chunks: list[bytes] | None = None
        self._ctx_pos = 0
        self._ctx_error: str | None = None

    # ---- fds and std streams

    def _restore_std_fds(self) -> None:
        os.dup2(self.devnull, 0)
        os.dup2(self.capture.out_w, 1)
        os.dup2(self.capture.err_w, 2)
        mine = getattr(self, "_std", None)
        if (
            mine is not None
            and (sys.stdin, sys.stdout, sys.stderr) == mine
            and not any(f.closed for f in mine)
        ):
            return  # untouched by the cell: no need to build new stream objects (a syscall saver)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "rb", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(1, "wb", closefd=False), 1 << 16),
            encoding="utf-8",
            errors="backslashreplace",
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
        )
        sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin
        self._std = (sys.stdin, sys.stdout, sys.stderr)

    def _flush_std(self) -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass

    # ---- forked children of a cell

    def _after_fork_in_child(self) -> None:
        """In a process forked by a cell: point the protocol descriptors at /dev/null.

        Only the kernel process speaks to the host. A child that wrote frames (or read the
        host's) would corrupt the channel, and the host would kill the sandbox.
        """
        for fd in (self.chan.fd_in, self.chan.fd_out):
            try:
                os.dup2(self.devnull, fd, inheritable=False)
            except OSError:
                pass

    def _exit_forked_child(self, exc: BaseException | None) -> None:
        """A forked child fell out of the cell's code: end it as a script would, never reply."""
        code = 0
        if isinstance(exc, SystemExit):
            if isinstance(exc.code, int):
                code = exc.code
            elif exc.code is not None:
                code = 1
                print(exc.code, file=sys.stderr)
        elif exc is not None:
            code = 1
            try:
                sys.stderr.write(self._format_tb(exc))
            except Exception:
                pass
        self._flush_std()
        os._exit(code & 0xFF)

    # ---- signals

    def _arm_interrupt(self) -> None:
        """Undo what an earlier cell did to the interrupt: its handler and its signal mask."""
        try:
            signal.signal(signal.SIGUSR1, self._on_timeout_signal)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
        except (OSError, ValueError):
            pass

    def _on_timeout_signal(self, signum: int, frame: types.FrameType | None) -> None:
        if self.in_cell and self.watchdog.armed:
            raise CellTimeoutError("cell exceeded its time limit")

    # ---- engine functions offered to cells

    def _new_id(self) -> int:
        with self.id_lock:
            ident = self.next_id
            self.next_id += 2
            return ident

    def _llm(
        self, prompts: list, kind: str = "llm", name: str | None = None, output: object = None
    ) -> list[str]:
        schema = _schema(output)
        encoded = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"llm_query prompts must be str, got {type(p).__name__} at index {i}")
            encoded.append(p.encode("utf-8", errors="surrogatepass"))
        if os.getpid() != self.pid:
            raise LLMQueryError("llm_query is not available in a process forked by the cell")
        if len(encoded) > P.MAX_BATCH:
            raise LLMQueryError(
                f"{kind}_query_batched takes at most {P.MAX_BATCH} prompts per call "
                f"(got {len(encoded)}); split the list"
            )
        total = sum(len(e) for e in encoded)
        if total > self.host_max_payload:
            raise LLMQueryError(
                f"the prompts add up to {total} bytes; the host takes at most {self.host_max_payload} "
                "per call; send less per call"
            )
        ident = self._new_id()
        request = {
            "t": P.LLM_REQUEST,
            "id": ident,
            "cell": self.current_cell,
            "sizes": [len(e) for e in encoded],
            **({"kind": kind} if kind != "llm" else {}),
            **({"name": name} if name is not None else {}),
            **({"output": schema} if schema is not None else {}),
        }
        head = len(P.encode_header(request, total)) - P.PREFIX_SIZE
        if head > self.host_max_header:
            raise LLMQueryError(
                f"this request's header would be {head} bytes; the host reads at most "
                f"{self.host_max_header} (the output= schema and one size per prompt make it up); "
                "send fewer prompts per call or a smaller schema"
            )
        waiter = {"event": threading.Event(), "reply": None}
        with self.pending_lock:
            if self.closed:
                raise LLMQueryError("the host channel is closed")
            self.pending[ident] = waiter
        self.watchdog.host_wait_begin()
        try:
            self.chan.send(request, b"".join(encoded))
            while not waiter["event"].wait(0.5):
                pass
        finally:
            self.watchdog.host_wait_end()
            with self.pending_lock:
                self.pending.pop(ident, None)
        header, payload = waiter["reply"]
        if header.get("status") != "ok":
            message = str(header.get("error") or f"{kind}_query failed")
            if kind == "tool":
                raise _tool_exception(str(header.get("ename") or ""), message)
            raise LLMQueryError(message)
        parts = P.split_sizes(payload, header.get("sizes") or [])
        if len(parts) != len(prompts):
            raise LLMQueryError(f"host answered {len(parts)} of {len(prompts)} prompts")
        return [p.decode("utf-8", errors="replace") for p in parts]

    def llm_query(self, prompt: str, model: str | None = None, output: object = None) -> object:
        """Ask the host's model (or a child RLM) one question; returns its answer (parsed
        JSON, checked against the schema, when ``output=`` is given)."""
        answer = self._llm([prompt], output=output)[0]
        return json.loads(answer) if output is not None else answer

    def llm_query_batched(self, prompts: list[str], model: str | None = None, output: object = None) -> list:
        """Ask many questions in one round trip; the host answers them concurrently."""
        prompts = list(prompts)
        answers = self._llm(prompts, output=output) if prompts else []
        return [json.loads(a) for a in answers] if output is not None else answers

    def rlm_query(self, prompt: str, output: object = None) -> object:
        """Always a child RLM (its own REPL) while depth remains; else a plain model call."""
        answer = self._llm([prompt], kind="rlm", output=output)[0]
        return json.loads(answer) if output is not None else answer

    def rlm_query_batched(self, prompts: list[str], output: object = None) -> list:
        prompts = list(prompts)
        answers = self._llm(prompts, kind="rlm", output=output) if prompts else []
        return [json.loads(a) for a in answers] if output is not None else answers

    def _tool(self, name: str, args: tuple, kwargs: dict) -> object:
        try:
            blob = json.dumps({"args": list(args), "kwargs": kwargs})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"arguments of tool {name} must be JSON values: {exc}") from None
        if len(blob) > _MAX_TOOL_JSON:
            raise ValueError(f"arguments of tool {name} are larger than {_MAX_TOOL_JSON} bytes")
        return json.loads(self._llm([blob], kind="tool", name=name)[0])

    def register_tools(self, names: list) -> None:
        """Called by the host: one proxy per host tool, restored after every cell like the
        other engine names (a cell cannot lose them by rebinding)."""
        for name in names:
            if not (isinstance(name, str) and name.isidentifier() and len(name) <= 64):
                raise ValueError(f"bad tool name {name!r}")

            def proxy(*args: object, _name: str = name, **kwargs: object) -> object:
                return self._tool(_name, args, kwargs)

            proxy.__name__ = proxy.__qualname__ = name
            self.engine[name] = proxy
            self.ns[name] = proxy

    def FINAL(self, value: object) -> None:
        """Mark ``value`` as the final answer of this RLM node."""
        if isinstance(value, dict | list):
            try:  # structured answers travel as JSON (typed answers are checked on the host)
                self.final = json.dumps(value, ensure_ascii=False)
                return
            except (TypeError, ValueError):
                pass
        self.final = value if isinstance(value, str) else str(value)

    def FINAL_VAR(self, name: object) -> None:
        """Mark the variable called ``name`` as the final answer."""
        if isinstance(name, str):
            key = name.strip().strip("'\"")
            if key in self.ns:
                self.FINAL(self.ns[key])
                return
            if key.isidentifier():
                raise NameError(
                    f"FINAL_VAR: no variable named {key!r}; assign it first, pass its name in quotes "
                    f'(FINAL_VAR("{key}")), or use FINAL(value)'
                )
        self.FINAL(name)

    def SHOW_VARS(self) -> dict[str, str]:
        """List the variables a cell has created (name -> type), and print them."""
        hidden = set(self.engine) | {
            "__name__",
            "__builtins__",
            "LLMQueryError",
            "CellTimeoutError",
            "ToolError",
        }
        found = {
            k: type(v).__name__
            for k, v in self.ns.items()
            if k not in hidden and not k.startswith("_") and not isinstance(v, types.ModuleType)
        }
        print("variables:", ", ".join(f"{k}: {t}" for k, t in found.items()) or "(none)")
        return found

    # ---- reader thread

    def reader(self) -> None:
        try:
            while True:
                header = self.chan.read_frame_header()
                t, n = header["t"], header["len"]
                if t == P.CONTEXT_CHUNK:
                    self._read_context_chunk(n)
                    continue
                if t == P.CONTEXT_BEGIN:
                    self._context_begin(header)
                    if n:
                        self.chan.read_exact(n)
                    continue
                payload = self.chan.read_exact(n) if n else b""
                if t == P.LLM_REPLY:
                    with self.pending_lock:
                        waiter = self.pending.get(header["id"])
                    if waiter is not None:
                        waiter["reply"] = (header, payload)
                        waiter["event"].set()
                    continue
                self._post((header, payload))
                if t == P.SHUTDOWN:
                    return
        except (EOFError, OSError, P.FrameError) as exc:
            self._post(({"t": "_eof", "id": 0, "len": 0, "why": str(exc)}, b""))
        finally:
            with self.pending_lock:
                self.closed = True
                for waiter in self.pending.values():
                    waiter["reply"] = ({"status": "error", "error": "the host channel closed"}, b"")
                    waiter["event"].set()

    def _read_context_chunk(self, n: int) -> None:
        if self._ctx_buf is not None:
            if self._ctx_pos + n > len(self._ctx_buf):
                self._ctx_error = "context chunks exceed the announced size"
                self.chan.read_exact(n)
                return
            self.chan.read_into(memoryview(self._ctx_buf)[self._ctx_pos : self._ctx_pos + n])
            self._ctx_pos += n
        elif self._ctx_chunks is not None:
            self._ctx_chunks.append(self.chan.read_exact(n))
        else:
            self.chan.read_exact(n)
            self._ctx_error = "context chunk without context_begin"

    def _post(self, job: tuple) -> None:
        with self.jobs_cond:
            self.jobs.append(job)
            self.jobs_cond.notify()

    def _next_job(self) -> tuple:
        with self.jobs_cond:
            while not self.jobs:
                self.jobs_cond.wait()
            return self.jobs.pop(0)

    # ---- main loop

    def serve(self) -> int:
        threading.Thread(target=self.reader, name="rlm-reader", daemon=True).start()
        self.chan.send(
            {
                "t": P.READY,
                "id": 1,
                "version": P.PROTOCOL_VERSION,
                "pid": os.getpid(),
                "uid": os.getuid(),
                "python": sys.version.split()[0],
            }
        )
        self.next_id = 3
        while True:
            header, payload = self._next_job()
            t = header["t"]
            if t in ("_eof", P.SHUTDOWN):
                return 0
            try:
                if t == P.EXEC_REQUEST:
                    self.run_cell(header, payload)
                elif t == P.CONTEXT_END:
                    self._context_end(header)
            except CellTimeoutError:
                pass  # a late interrupt between cells: nothing to stop

    def _context_begin(self, header: dict) -> None:
        kind, size = header.get("kind"), header.get("size", -1)
        self._ctx_kind = kind if kind in P.CONTEXT_KINDS else "str"
        self._ctx_error = None
        self._ctx_pos = 0
        if type(size) is int and size >= 0:
            self._ctx_buf, self._ctx_chunks = bytearray(size), None
        else:
            self._ctx_buf, self._ctx_chunks = None, []

    def _context_end(self, header: dict) -> None:
        reply = {"t": P.CONTEXT_REPLY, "id": header["id"], "status": "ok"}
        try:
            if self._ctx_error:
                raise ValueError(self._ctx_error)
            if self._ctx_buf is not None:
                if self._ctx_pos != len(self._ctx_buf):
                    raise ValueError(f"context ended after {self._ctx_pos} of {len(self._ctx_buf)} bytes")
                raw: bytes | bytearray = self._ctx_buf
            else:
                raw = b"".join(self._ctx_chunks or [])
            self._ctx_buf = self._ctx_chunks = None
            if self._ctx_kind == "str":
                value: object = codecs.decode(raw, "utf-8", "replace")
            elif self._ctx_kind == "bytes":
                value = bytes(raw)
            else:
                value = json.loads(raw)
            del raw
            self.engine["context"] = value
            self.ns["context"] = value
            reply.update(type=type(value).__name__, length=len(value) if hasattr(value, "__len__") else -1)
        except (ValueError, TypeError, MemoryError, RecursionError) as exc:
            self._ctx_buf = self._ctx_chunks = None
            reply.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
        self.chan.send(reply)

    def _restore_engine_names(self) -> None:
        for name, value in self.engine.items():
            if self.ns.get(name) is not value:
                self.ns[name] = value
        if self.ns.get("__builtins__") is not __builtins__:
            self.ns["__builtins__"] = __builtins__

    def run_cell(self, header: dict, payload: bytes) -> None:
        code = payload.decode("utf-8", errors="replace")
        timeout = header.get("timeout")
        timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 60.0
        cap = header.get("output_cap")
        cap = cap if type(cap) is int and cap >= 0 else DEFAULT_OUTPUT_CAP
        self.current_cell = header["id"]
        for key, attr in (("max_header", "host_max_header"), ("max_payload", "host_max_payload")):
            value = header.get(key)
            if type(value) is int and value > 0:
                setattr(self, attr, value)
        self.final = None
        status, ename, evalue, tb = "ok", None, None, None
        self.capture.begin(cap)
        self._restore_std_fds()
        t0 = time.perf_counter()
        try:
            try:
                tree = ast.parse(code, "<cell>", "exec")
                tail = None
                if tree.body and isinstance(tree.body[-1], ast.Expr):
                    tail = ast.Expression(tree.body.pop().value)
                body = compile(tree, "<cell>", "exec")
                tail_code = compile(tail, "<cell>", "eval") if tail is not None else None
                self._arm_interrupt()
                self.watchdog.arm(timeout)
                self.in_cell = True
                try:
                    exec(body, self.ns)
                    if tail_code is not None:
                        value = eval(tail_code, self.ns)
                        if value is not None:
                            print(repr(value))
                except BaseException as exc:
                    if os.getpid() != self.pid:
                        self._exit_forked_child(exc)
                    raise
                if os.getpid() != self.pid:
                    self._exit_forked_child(None)
            finally:
                self.in_cell = False
                self.watchdog.disarm()
        except CellTimeoutError:
            status, ename = "timeout", "CellTimeoutError"
            evalue = f"cell exceeded its time limit of {timeout:g} s and was interrupted; variables are kept"
            tb = evalue
        except BaseException as exc:  # a cell's SystemExit or KeyboardInterrupt must not end the kernel
            status, ename, evalue = "error", type(exc).__name__, str(exc)
            tb = self._format_tb(exc)
        duration = time.perf_counter() - t0
        self._flush_std()
        self._restore_std_fds()
        self._restore_engine_names()
        out, out_total, err, err_total = self.capture.take()
        final = self.final.encode("utf-8", errors="replace") if self.final is not None else b""
        self.chan.send(
            {
                "t": P.EXEC_REPLY,
                "id": header["id"],
                "status": status,
                "ename": ename,
                "evalue": (evalue or "")[:4000] if ename else None,
                "traceback": (tb or "")[-8000:] if ename else None,
                "duration_s": duration,
                "sizes": [len(out), len(err), len(final)],
                "totals": [out_total, err_total],
                "has_final": self.final is not None,
            },
            out,
            err,
            final,
        )

    @staticmethod
    def _format_tb(exc: BaseException) -> str:
        try:
            frames = traceback.extract_tb(exc.__traceback__)
            # Drop the kernel's own frames: the model only needs its cell's.
            frames = [f for f in frames if f.filename == "<cell>" or not f.filename.endswith("kernel.py")]
            lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
            return "Traceback (most recent call last):\n" + "".join(lines)
        except Exception:
            return f"{type(exc).__name__}: {exc}"


def main() -> int:
    kernel = Kernel()
    try:
        import faulthandler

        faulthandler.enable(file=kernel.diag_fd)
    except Exception:
        pass
    return kernel.serve()


if __name__ == "__main__":
    code = main()
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os._exit(code)
