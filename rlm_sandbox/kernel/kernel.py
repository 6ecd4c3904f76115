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

The namespace and the functions cells call live in ``repl.py`` (no process concerns, so the
host's in-memory test backend runs the same REPL); this file is the process around it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loop import CellRun, KernelLoop
from repl import CellTimeoutError, HostLink, Repl, format_tb
from streams import Channel, OutputCapture, Watchdog

PRIVATE_FD_MIN = 100


# --------------------------------------------------------------------------- the kernel


class Kernel:
    """The container's process: the REPL behind private descriptors, a drained stdout/stderr,
    a watchdog for each cell's time, and a reader thread that routes the host's frames."""

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
        os.register_at_fork(after_in_child=self._after_fork_in_child)

        self.main_ident = threading.get_ident()
        self.watchdog = Watchdog(self.main_ident)
        signal.signal(signal.SIGUSR1, self._on_timeout_signal)
        self.in_cell = False

        self.link = HostLink(
            self.chan.send, wait_begin=self.watchdog.host_wait_begin, wait_end=self.watchdog.host_wait_end
        )
        self.repl = Repl(self.link)
        self.loop = KernelLoop(self.chan, self.link, self.repl, self.run_cell)

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
                sys.stderr.write(format_tb(exc))
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

    @contextlib.contextmanager
    def _timed(self, timeout: float) -> Iterator[None]:
        """The cell's own code runs under the watchdog; host waits do not count."""
        self._arm_interrupt()
        self.watchdog.arm(timeout)
        self.in_cell = True
        try:
            yield
        finally:
            self.in_cell = False
            self.watchdog.disarm()

    def run_cell(self, code: str, cell_id: int, timeout: float, cap: int) -> CellRun:
        """One cell in this process: output captured at the descriptors, under the watchdog."""
        self.capture.begin(cap)
        self._restore_std_fds()
        outcome = self.repl.run(
            code,
            cell_id,
            limit_s=timeout,
            guard=lambda: self._timed(timeout),
            on_escape=self._exit_forked_child,
        )
        self._flush_std()
        self._restore_std_fds()
        out, out_total, err, err_total = self.capture.take()
        return outcome, out, out_total, err, err_total


def main() -> int:
    kernel = Kernel()
    try:
        import faulthandler

        faulthandler.enable(file=kernel.diag_fd)
    except Exception:
        pass
    return kernel.loop.serve()


if __name__ == "__main__":
    code = main()
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os._exit(code)
