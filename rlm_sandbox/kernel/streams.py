"""The kernel process's streams: the framed channel to the host over private descriptors, the
drained stdout/stderr pipes of cells, and the watchdog that interrupts a cell whose own time
is up (standard library only; imported by ``kernel.py`` inside the container)."""

from __future__ import annotations

import io
import os
import select
import signal
import threading
import time

if __package__:  # imported by the host (the in-memory test backend)
    from . import protocol as P
else:  # the container's script: the kernel's directory is sys.path[0]
    import protocol as P  # type: ignore[no-redef]

MAX_HOST_HEADER = 1 << 20
DEFAULT_OUTPUT_CAP = 64 * 1024


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
