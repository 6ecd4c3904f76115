"""The same kernel as a plain subprocess over pipes: NO SANDBOX. For trusted code and fast tests.

It exists to keep the backend interface honest (a second kind of engine in one module) and
because a kernel test without Docker takes milliseconds. It is not a security boundary: the
cell runs as the controller's user, on the controller's machine, with its network and files.
What it still does: an empty environment (no host keys), a private working directory, a new
process group (so a kill reaches every child), address-space, file and core limits. The
engine refuses it for tenants, and every output that could be mistaken for a sandboxed run
says it was not (``unsafe`` in the trace, ``--json`` and the live view).

The kernel runs under the same supervisor as in a container (``kernel/supervisor.py``): when
this process dies, the supervisor sees its stdin end and kills the kernel and everything it
started, ``setsid`` daemons included (it is their subreaper), so a spinning cell does not
outlive its controller here either. Unlike in a container, a cell can kill or stop the
supervisor (same user, no PID namespace); the kernel then dies with it (``PR_SET_PDEATHSIG``),
but what the cell detached may not.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rlm_sandbox.errors import SandboxStartError
from rlm_sandbox.sandbox.config import SandboxConfig

from .attach import send_with_deadline
from .backend import ExitInfo, SandboxInfo, Started

SUPERVISOR = Path(__file__).resolve().parents[1] / "kernel" / "supervisor.py"
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Runs inside the child before the supervisor: limits first (the kernel inherits them), then
# the supervisor as __main__, which starts the kernel.
_BOOT = (
    "import resource, runpy, sys\n"
    "mem, nofile = int(sys.argv[1]), int(sys.argv[2])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (mem, mem))\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))\n"
    "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    "sys.argv = [sys.argv[3]]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def memory_bytes(text: str) -> int:
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in _UNITS else t) * unit)


class PipeStream:
    """A subprocess's stdin/stdout with the attach stream's interface, minus Docker's
    multiplexing (``multiplexed = False``): stdout carries only frames."""

    multiplexed = False

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._out = proc.stdout.fileno()
        self._in = proc.stdin.fileno()
        self._proc = proc
        os.set_blocking(self._in, False)
        self._closed = False

    def recv(self, n: int = 1 << 18) -> bytes:
        try:
            return os.read(self._out, n)
        except OSError:
            return b""

    def send_all(self, data: bytes | memoryview, timeout_s: float) -> None:
        send_with_deadline(
            data, lambda view: os.write(self._in, view), self._in, lambda: self._closed, timeout_s
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


class _Kernel:
    def __init__(self, proc: subprocess.Popen[bytes], workdir: str, labels: dict[str, str]) -> None:
        self.proc = proc
        self.workdir = workdir
        self.labels = labels
        self.stderr: collections.deque[bytes] = collections.deque(maxlen=64)
        threading.Thread(target=self._drain, daemon=True, name="local-kernel-stderr").start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line[:2000])


class LocalBackend:
    """Kernels as subprocesses of this process; ids are ``local-<pid>``."""

    name = "local"
    unsafe = True

    def __init__(self) -> None:
        self._kernels: dict[str, _Kernel] = {}
        self._lock = threading.Lock()

    def ensure_image(self, config: SandboxConfig, progress: object = None) -> str:
        return "local"

    def start(
        self, config: SandboxConfig, image: str, labels: dict[str, str], input_path: str | None = None
    ) -> Started:
        """The kernel as a subprocess; ``input_path`` is not used: its loads stream."""
        t0 = time.perf_counter()
        workdir = tempfile.mkdtemp(prefix="rlm-local-")
        env = {"HOME": workdir, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PATH": os.defpath}
        argv = [
            sys.executable,
            "-I",
            "-c",
            _BOOT,
            str(memory_bytes(config.memory) + (256 << 20)),  # the interpreter's own mappings
            str(config.nofile),
            str(SUPERVISOR),
        ]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                process_group=0,
                close_fds=True,
            )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxStartError(f"could not start the local kernel: {exc}") from None
        sid = f"local-{proc.pid}"
        with self._lock:
            self._kernels[sid] = _Kernel(proc, workdir, dict(labels))
        from .registry import live

        live.add(self, sid)
        return Started(id=sid, stream=PipeStream(proc), start_s=time.perf_counter() - t0)  # type: ignore[arg-type]

    def _get(self, sandbox_id: str) -> _Kernel | None:
        with self._lock:
            return self._kernels.get(sandbox_id)

    def exit_info(self, sandbox_id: str, wait_s: float = 0.0) -> ExitInfo:
        k = self._get(sandbox_id)
        if k is None:
            return ExitInfo(exists=False)
        try:
            code = k.proc.wait(timeout=wait_s) if wait_s > 0 else k.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return ExitInfo(exists=True, running=True)
        tail = b"".join(k.stderr).decode("utf-8", "replace")[-1500:]
        # A negative code is a signal; report it the way Docker does (128 + signal).
        return ExitInfo(exists=True, exit_code=128 - code if code < 0 else code, error=tail)

    def kill(self, sandbox_id: str) -> None:
        k = self._get(sandbox_id)
        if k is not None and k.proc.poll() is None:
            try:
                os.killpg(k.proc.pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self, sandbox_id: str) -> bool:
        from .registry import live

        with self._lock:
            k = self._kernels.pop(sandbox_id, None)
        live.discard(self, sandbox_id)
        if k is None:
            return False
        if k.proc.stdin is not None and k.proc.stdin.closed:
            # The stream is closed: the supervisor is ending the kernel's whole tree, daemons
            # included. Give it a moment, then kill the process group whatever it did.
            try:
                k.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(k.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            k.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (k.proc.stdin, k.proc.stdout, k.proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        shutil.rmtree(k.workdir, ignore_errors=True)
        return True

    def list(self, labels: dict[str, str]) -> list[SandboxInfo]:
        with self._lock:
            items = list(self._kernels.items())
        return [
            SandboxInfo(
                id=sid, name=sid, status="running" if k.proc.poll() is None else "exited", labels=k.labels
            )
            for sid, k in items
            if all(k.labels.get(key) == value for key, value in labels.items())
        ]


_shared: LocalBackend | None = None
_shared_lock = threading.Lock()


def shared_local_backend() -> LocalBackend:
    """One per process: its table of kernels is what ``list`` and the registry see."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LocalBackend()
        return _shared
