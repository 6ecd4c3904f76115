"""An in-memory backend: the real REPL and protocol loop in a thread, no process, no container.

The seam for testing everything above the sandbox layer without an engine (httpx's
``MockTransport`` in spirit): ``RLM(..., backend=FakeBackend())`` runs the whole controller
— lifecycle, nodes, budgets, sessions, typed answers, tools, compaction, fallback — with
each node's "container" a thread that speaks the real wire protocol over a socket pair.
The host side is the production code (channel, frame decoder, message validation); the
kernel side is ``kernel/loop.py`` and ``kernel/repl.py``, the same code the container runs.

It is NOT a sandbox and is never chosen by a setting: cells run in the test process. What a
fake kernel does not do: capture output written other than through ``print`` (no
file-descriptor capture), interrupt a cell that overruns its time limit (no signals: keep
fake cells short), or isolate anything; and cells are parsed one at a time (a lock shared by
all fake kernels; see ``Repl.compile_guard``). ``FakeBackend`` records what it started, so a test
can check that every "container" was removed.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from rlm_sandbox.errors import SandboxStartError
from rlm_sandbox.kernel.loop import CellRun, KernelLoop
from rlm_sandbox.kernel.repl import HostLink, Repl
from rlm_sandbox.kernel.streams import Channel
from rlm_sandbox.sandbox.config import SandboxConfig

from .attach import AttachStream
from .backend import LABEL_NODE, ExitInfo, SandboxInfo, Started

FAKE_IMAGE = "rlm-sandbox-fake:in-memory"
#: The fake kernels are threads of one process: they parse and compile cells one at a time
#: (CPython 3.11's AST conversion is not safe in several threads at once).
_COMPILE_LOCK = threading.Lock()


class _Stream(AttachStream):
    """The host's end of the socket pair: frames only, no Docker multiplexing."""

    multiplexed = False


class _Capture:
    """A cell's ``print`` output, capped like the kernel's (the first ``cap`` bytes kept)."""

    def __init__(self) -> None:
        self.buf = io.StringIO()
        self.cap = 64 * 1024

    def print(self, *args: object, sep: str | None = " ", end: str | None = "\n", **_kw: object) -> None:
        self.write(
            (sep if sep is not None else " ").join(map(str, args)) + (end if end is not None else "\n")
        )

    def write(self, text: str) -> None:
        self.buf.write(text)

    def take(self) -> tuple[bytes, int]:
        data = self.buf.getvalue().encode("utf-8", errors="backslashreplace")
        self.buf = io.StringIO()
        return data[: self.cap], len(data)


@dataclass
class FakeKernel:
    """One fake container: a kernel loop in a thread over its end of a socket pair."""

    id: str
    labels: dict[str, str]
    sock: socket.socket
    thread: threading.Thread | None = None
    exit_code: int | None = None
    killed: bool = False
    cells: list[str] = field(default_factory=list)
    input_path: str = "/nonexistent/rlm-input"  # the host's input file, read where it is

    def serve(self) -> None:
        fd = self.sock.fileno()
        chan = Channel(fd, fd)
        link = HostLink(chan.send)
        capture = _Capture()
        repl = Repl(link, echo=lambda text: capture.write(text + "\n"), compile_guard=_COMPILE_LOCK)
        repl.engine["print"] = repl.ns["print"] = capture.print

        def run_cell(code: str, cell_id: int, timeout: float, cap: int) -> CellRun:
            self.cells.append(code)
            capture.cap = cap
            outcome = repl.run(code, cell_id, limit_s=timeout)
            out, total = capture.take()
            return outcome, out, total, b"", 0

        try:
            self.exit_code = KernelLoop(chan, link, repl, run_cell, self.input_path).serve()
        except Exception:
            self.exit_code = 1
        finally:
            try:
                self.sock.close()
            except OSError:
                pass


class FakeBackend:
    """Implements :class:`~rlm_sandbox.sandbox.backend.Backend` with in-memory kernels.

    ``fail_starts`` makes that many next starts fail (a broken engine); ``refuse(labels)``
    refuses the starts it returns True for (one node's container, by its labels);
    ``started`` lists every kernel ever started, ``alive()`` those not yet removed, and
    ``peak`` the most that were alive at once (what a container budget must bound).
    ``input_files``: "mount" (the kernel reads the host's input file where it is, as a
    mount would show it), "refuse" (an engine that cannot mount: loads stream) or
    "unreadable" (reported mounted, yet the kernel cannot open it: loads fall back)."""

    name = "fake"

    def __init__(
        self,
        *,
        fail_starts: int = 0,
        refuse: Callable[[dict[str, str]], bool] | None = None,
        input_files: str = "mount",
    ) -> None:
        self.input_files = input_files
        self._lock = threading.Lock()
        self._kernels: dict[str, FakeKernel] = {}
        self.started: list[FakeKernel] = []
        self.removed: list[str] = []
        self.fail_starts = fail_starts
        self.refuse = refuse
        self.peak = 0

    def ensure_image(self, config: SandboxConfig, progress: object = None) -> str:
        return FAKE_IMAGE

    def start(
        self, config: SandboxConfig, image: str, labels: dict[str, str], input_path: str | None = None
    ) -> Started:
        t0 = time.perf_counter()
        with self._lock:
            if self.fail_starts > 0:
                self.fail_starts -= 1
                raise SandboxStartError("the fake engine was told to refuse this start")
        if self.refuse is not None and self.refuse(labels):
            raise SandboxStartError(f"the fake engine refused to start {labels.get(LABEL_NODE)}")
        host, kernel_end = socket.socketpair()
        kernel = FakeKernel(id=f"fake-{uuid.uuid4().hex[:12]}", labels=dict(labels), sock=kernel_end)
        mounted = input_path is not None and self.input_files != "refuse"
        if mounted and self.input_files == "mount":
            kernel.input_path = input_path  # type: ignore[assignment]
        kernel.thread = threading.Thread(target=kernel.serve, name=f"fake-kernel-{kernel.id}", daemon=True)
        with self._lock:
            self._kernels[kernel.id] = kernel
            self.started.append(kernel)
            self.peak = max(self.peak, len(self._kernels))
        kernel.thread.start()
        return Started(kernel.id, _Stream(host), time.perf_counter() - t0, input_file=mounted)

    def exit_info(self, sandbox_id: str, wait_s: float = 0.0) -> ExitInfo:
        kernel = self._kernels.get(sandbox_id)
        if kernel is None:
            return ExitInfo(exists=False)
        if kernel.thread is not None and wait_s > 0:
            kernel.thread.join(wait_s)
        running = kernel.thread is not None and kernel.thread.is_alive()
        code = 137 if kernel.killed else kernel.exit_code
        return ExitInfo(exists=True, running=running, exit_code=None if running else code)

    def kill(self, sandbox_id: str) -> None:
        kernel = self._kernels.get(sandbox_id)
        if kernel is not None:
            kernel.killed = True
            try:
                kernel.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def remove(self, sandbox_id: str) -> bool:
        self.kill(sandbox_id)
        with self._lock:
            kernel = self._kernels.pop(sandbox_id, None)
            if kernel is not None:
                self.removed.append(sandbox_id)
        return kernel is not None

    def list(self, labels: dict[str, str]) -> list[SandboxInfo]:
        with self._lock:
            kernels = list(self._kernels.values())
        return [
            SandboxInfo(
                k.id, k.id, "running" if k.thread and k.thread.is_alive() else "exited", dict(k.labels)
            )
            for k in kernels
            if all(k.labels.get(key) == value for key, value in labels.items())
        ]

    def alive(self) -> list[str]:
        """Kernels started and not removed: a test's "no container left" check."""
        with self._lock:
            return list(self._kernels)
