"""``Sandbox``: one hardened container whose kernel keeps ``context`` and every variable in memory.

Lifecycle: ``new`` -> ``running`` -> ``closed``. ``close()`` (or leaving the ``with`` block)
removes the container whatever happened; a sandbox that failed (timeout past the grace
period, protocol violation, crash) is killed and removed at once and raises the typed error
on every later use. Cells run one at a time; ``llm_query`` calls from a cell are answered
concurrently by the handler from a bounded pool.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from rlm_sandbox.errors import (
    CellTimeout,
    HostMemoryExceeded,
    ProtocolViolation,
    SandboxClosed,
    SandboxError,
    SandboxStartError,
)
from rlm_sandbox.kernel import protocol as P
from rlm_sandbox.sandbox.config import SandboxConfig

from .backend import Backend, Started, sandbox_labels
from .cell_result import ExecResult, exec_result
from .channel import KernelChannel, LLMHandler
from .context_load import ContextLoads
from .crash import crash_error
from .frames import FrameLimits
from .input_file import InputFile
from .messages import ContextReply, ExecReply

if TYPE_CHECKING:
    from .prestart import Handover, Preload


#: How long ``close`` waits for a thread busy with the sandbox once its container is killed.
CLOSE_WAIT_S = 30.0


class Sandbox(ContextLoads):
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
        self.killed_for: str | None = None
        self._input_file: InputFile | None = None  # large loads go through it (a local engine)
        self._preloaded: Preload | None = None  # the context a prestart child loaded

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
        return sandbox_labels(self.config)

    def start(self) -> Sandbox:
        with self._lock:
            if self.state == "closed":
                raise SandboxClosed("this sandbox was closed")
            if self.state == "running":
                return self
            t0 = time.perf_counter()
            backend = self.backend
            image = backend.ensure_image(self.config, progress=self._progress)
            inp = self._new_input_file()
            try:
                started = backend.start(self.config, image, self.labels(), input_path=inp and inp.path)
            except BaseException:
                if inp is not None:
                    inp.close()
                raise
            if started.input_file:
                self._input_file = inp
            elif inp is not None:
                inp.close()
            return self._open(started, t0)

    @classmethod
    def adopt(
        cls,
        config: SandboxConfig,
        handover: Handover,
        *,
        llm_handler: LLMHandler | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Sandbox:
        """The sandbox of a container a prestart child started for ``config`` and keeps for
        it (kills, removes; :mod:`rlm_sandbox.sandbox.prestart`), ready frame read here."""
        from .prestart import ChildBackend
        from .registry import live

        backend = ChildBackend(handover.keeper, config.docker_url)
        live.add(backend, handover.id)
        sandbox = cls(config, llm_handler=llm_handler, backend=backend, progress=progress)  # type: ignore[arg-type]
        if handover.input is not None:
            sandbox._input_file = InputFile.adopt(*handover.input)
        pre = handover.preload
        with sandbox._lock, sandbox._closed_on_error():
            first = (pre.ident, ContextReply) if pre is not None else None
            sandbox._open(handover.started(), time.perf_counter() - handover.start_s, expect_first=first)
            if pre is not None:  # the child's load (request 2): its reply is on its way
                sandbox._next_id = pre.ident + 2
                channel = sandbox._channel
                assert channel is not None and channel.first_waiter is not None
                pre.info = sandbox._load(
                    channel, pre.size, lambda _id: pre.size, via_file=True, waiter=channel.first_waiter
                )
                sandbox._preloaded = pre
                if sandbox._input_file is not None:
                    sandbox._input_file.clear()  # the kernel has built ``context`` from it
        return sandbox

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _open(self, started: Started, t0: float, expect_first: tuple[int, type] | None = None) -> Sandbox:
        """Talk to a started container's kernel: the channel, then its ready frame."""
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
            expect_first=expect_first,
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
            self.kill_for("start timeout")
            self.close()
            raise SandboxStartError(
                f"the kernel did not report ready within {self.config.start_timeout:g} s",
                hint="the engine may be overloaded; raise start_timeout",
            )
        self.kernel_pid = ready.pid
        self.start_s = time.perf_counter() - t0
        return self

    def _new_input_file(self) -> InputFile | None:
        """The file large loads will go through, when the config allows it; None when it
        cannot be made (no writable tmpfs or temp directory): loads then stream."""
        if not self.config.input_file:
            return None
        try:
            return InputFile()
        except OSError:
            return None

    @property
    def input_file(self) -> bool:
        """Do large loads reach this sandbox's kernel through its input file (else the stream)?"""
        return self._input_file is not None

    def close(self) -> None:
        """Stop and remove the container; safe to call any number of times, from any path.

        Called from another thread while a cell (or a load) holds the sandbox, it kills the
        container first, so that the busy thread's wait ends at once instead of at the
        cell's end, then takes the sandbox from it (at most :data:`CLOSE_WAIT_S`) and removes
        it: when ``close`` returns, the container is gone."""
        if not self._lock.acquire(blocking=False):
            if self.state != "closed":
                self.kill_for("closed by another thread")
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
        inp, self._input_file = self._input_file, None
        if inp is not None:
            inp.close()

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
            self.kill_for("protocol violation")
        elif isinstance(exc, HostMemoryExceeded):
            self.kill_for("host memory bound")

    def diagnostics(self) -> str:
        """What the kernel wrote to its diagnostic stream (the cell's to choose: untrusted)."""
        return self._channel.diagnostics() if self._channel is not None else ""

    def kill_for(self, why: str) -> None:
        """Kill the container now (``why`` is kept for the error that explains it later)."""
        self.killed_for = why
        if self.id is not None:
            self.backend.kill(self.id)

    def _raise_failure(self, exc: BaseException) -> NoReturn:
        """Turn what the channel saw into the most precise typed error, then clean up."""
        err = exc
        if not isinstance(exc, ProtocolViolation | CellTimeout | HostMemoryExceeded) and self.id is not None:
            err = crash_error(self, exc)
        self._error = err
        self.close()
        raise err from None

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
                self.kill_for("interrupted")
                self.close()
                raise
            finally:
                channel.current_cell = 0
            if not reply and channel.stalled_in_frame(self.config.kill_grace):
                # The reply is stuck behind bytes that are not a frame (a cell wrote to the
                # protocol descriptor): name the real cause, not a timeout.
                self.kill_for("protocol violation")
                self._raise_failure(
                    ProtocolViolation(
                        f"the kernel's channel stalled inside a frame ({channel.buffered_bytes} bytes "
                        f"of it arrived, then nothing for {self.config.kill_grace:g} s); the reply "
                        "to the cell never came"
                    )
                )
            if not reply:
                self.kill_for("cell timeout")
                self._raise_failure(
                    CellTimeout(
                        f"a cell ran past its {limit:g} s limit and ignored the interrupt for "
                        f"{self.config.kill_grace:g} s more; the sandbox was killed"
                    )
                )
            msg: ExecReply = reply[0]
            try:
                return exec_result(msg, reply[1], self.config.output_cap, time.perf_counter() - t0)
            except ProtocolViolation as exc:  # citations that break the protocol's bounds
                self.kill_for("protocol violation")
                self._raise_failure(exc)

    def get_variable(self, name: str, timeout: float | None = None) -> str | None:
        """``str()`` of a variable of the namespace, or None when it does not exist (or its
        ``str()`` did not finish within ``timeout``, default the cell timeout)."""
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a variable name")
        result = self.execute(f"FINAL_VAR({name!r})", timeout=timeout)
        return result.final if result.ok else None
