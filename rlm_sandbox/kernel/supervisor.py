"""The first process of every sandbox: start the kernel, reap, and end the sandbox when the host goes.

Standard library only. In a container it is PID 1 (the image's ENTRYPOINT, in place of
Docker's ``init``); under the local backend it is the subprocess the controller starts.

Why it exists: a controller that dies (SIGKILL, OOM, a crash) must not leave a container
behind burning CPU. The kernel cannot guarantee that itself: a cell owns the kernel's
process and can block its signals, hold the GIL in C code, fork and ``setsid`` children, or
stop whatever watches from inside the kernel. So the watch lives here, in a process no cell
runs in, and it needs no cooperation from the kernel:

* **No cell can keep the host's stream open.** The container's stdin is the attach stream;
  ``StdinOnce`` makes the engine close it when the controller's connection goes. Under runc
  (Linux) a cell could reopen that pipe for writing through ``/proc/self/fd`` and so keep it
  from ever hanging up; there the kernel never holds it: this process relays it by ``splice``
  into a pipe that becomes the kernel's fd 0. Under gVisor such a reopen yields no writer,
  so the kernel reads the stream itself and this process only watches it
  (:func:`stream_can_be_forged` decides, by trying). End of file or a hang-up means the host
  is gone: every process of the sandbox is SIGKILLed (``kill(-1)`` from PID 1; the
  descendants' tree under the local backend) and this process exits, which ends the
  container.
* **It cannot be stopped or killed from inside.** PID 1 of a PID namespace only receives the
  signals it has a handler for, from processes in the namespace (Linux). gVisor does not
  implement that rule (a cell could SIGSTOP PID 1 there), so the kernel and everything it
  starts run under a seccomp filter (inherited, irremovable) that refuses to signal, trace,
  renice or re-limit this process, to make it the owner of a signal-driven fd, or to create
  a child whose exit would signal it with anything but SIGCHLD. The kernel runs in a
  session of its own, so no process group a cell can address contains this process.
  ``PR_SET_DUMPABLE 0`` keeps same-uid code from ptrace-ing it or writing its memory.
* **It preserves what the host relies on**: the kernel's exit becomes the container's
  (a code as is; death by signal N as 128+N, so 137 for SIGKILL and an OOM kill); stdout and
  stderr are the container's own; SIGTERM (``docker stop``, or a cell asking PID 1) is
  forwarded to the kernel as tini did. Nothing else is forwarded.

Exit codes of its own: 129 when the host hung up (as if by SIGHUP), 127 when the kernel
could not be started.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import struct
import sys
import termios

# The kernel's files import one another by bare name (they are copied alone into the image).
if __package__:  # imported as rlm_sandbox.kernel.supervisor (the unit tests)
    from .seccomp_filter import build_filter, install_filter, load_libc
else:  # run as a script (the image's entrypoint under ``python -I``, the local backend's runpy)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from seccomp_filter import build_filter, install_filter, load_libc

HOST_GONE_EXIT = 128 + signal.SIGHUP
START_FAILED_EXIT = 127
CHUNK = 1 << 20
_RDHUP = getattr(select, "POLLRDHUP", 0)
BACKSTOP_MS = 1000  # reap and re-check at least this often, whatever the wake-up pipe says

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36

# --------------------------------------------------------------------------- the process


def _prctl(option: int, value: int) -> bool:
    try:
        return load_libc().prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _say(text: str) -> None:
    """One line on stderr (the host shows it as the kernel's diagnostics); never blocks long."""
    try:
        os.write(2, f"rlm-supervisor: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def stream_can_be_forged() -> bool:
    """Could code in the sandbox hold a write end of the host's stream (fd 0)?

    On Linux a pipe reopened through ``/proc/self/fd`` is a new writer: it never hangs up
    while that is open, so the kernel must not hold the stream, and we relay it. gVisor hands
    out the same read-only file instead (writes fail, poll shows no room), so the kernel can
    read the stream itself, saving the relay's copy. Anything unclear means relay.
    """
    try:
        if struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\0\0\0\0"))[0]:
            return True  # not empty: "no room" would prove nothing
        w = os.open("/proc/self/fd/0", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        probe = select.poll()
        probe.register(w, select.POLLOUT)
        return bool(probe.poll(0))
    finally:
        os.close(w)


def _exit_code(status: int) -> int:
    """A wait status as a container reports it: the code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Supervisor:
    """Relays the host's stream to the kernel and ends everything when either side ends."""

    def __init__(self, kernel_path: str) -> None:
        self.kernel_path = kernel_path
        self.pid1 = os.getpid() == 1
        self.kernel_pid = 0
        self.kernel_status: int | None = None
        self.relay_out = -1  # our end of the kernel's stdin pipe; -1 once the kernel closed it
        self.full = False  # the kernel's pipe was full: wait for room before reading the host
        self.use_splice = True
        self.pending = memoryview(b"")  # what a copy (no splice) could not write yet

    # ---- start

    def protect_self(self) -> None:
        """Before any untrusted code exists: no ptrace or /proc/PID/mem for same-uid code,
        signals that could stop us ignored, the ones we act on handled."""
        _prctl(PR_SET_DUMPABLE, 0)
        try:
            os.setsid()  # our own session and process group: no cell can address the group
        except OSError:
            pass  # already a session leader (a container's init usually is)
        if not self.pid1:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)  # the cell's orphans become ours, not init's
        for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._forward_term)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # just wake the poll (wakeup fd)
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def _forward_term(self, _signum: int, _frame: object) -> None:
        if self.kernel_pid and self.kernel_status is None:
            try:
                os.kill(self.kernel_pid, signal.SIGTERM)
            except OSError:
                pass

    def start_kernel(self) -> None:
        # Only as PID 1: under the local backend nothing is a boundary, and no-new-privs
        # would take sudo and friends from a cell the user trusts.
        program = None
        if self.pid1:
            try:
                program = build_filter(os.getpid())
            except (ValueError, struct.error) as exc:
                _say(f"no seccomp filter ({exc})")
            if program is None:
                _say(f"no seccomp filter for {os.uname().machine}: PID 1 is less protected")
        relay = stream_can_be_forged()
        r, w = os.pipe() if relay else (-1, -1)
        for fd in (w, 0) if relay else (0,):  # fewer, larger moves (gVisor refuses it on fd 0)
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)
            except OSError:
                pass  # the default pipe size only costs more wake-ups
        pid = os.fork()
        if pid == 0:  # the kernel-to-be: nothing here may return
            code = START_FAILED_EXIT
            try:
                self._become_kernel(r if relay else None, program)
                code = 0  # the kernel ends with os._exit; falling off its end is a clean exit
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:  # report anything, then leave
                _say(f"the kernel failed to start: {exc!r}")
            os._exit(code & 0xFF)
        self.kernel_pid = pid
        if relay:
            os.close(r)
            self.relay_out = w
            os.set_blocking(w, False)
            os.set_blocking(0, False)  # (never when the kernel shares our file description)
        # else relay_out stays -1: fd 0 is only watched for the hang-up, never read

    def _become_kernel(self, relay_in: int | None, program: bytes | None) -> None:
        """In the forked child: drop everything of the supervisor, then run the kernel in this
        same interpreter (no second interpreter start: a fork is far cheaper, under gVisor most)."""
        if self.pid1:
            os.setsid()  # no process group of the kernel's tree contains PID 1
        if relay_in is not None:
            os.dup2(relay_in, 0)  # the host's stream through us, never the container's stdin
        for name in os.listdir("/proc/self/fd"):  # our end of the relay, the wake-up pipe: none stays
            if int(name) > 2:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        sys.argv = [self.kernel_path]
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python program
        _prctl(PR_SET_DUMPABLE, 1)  # a fork inherits ours; the kernel is an ordinary process
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if program is not None:
            try:
                install_filter(program)
            except OSError as exc:
                _say(f"the seccomp filter could not be loaded ({exc}); PID 1 is less protected")
        import runpy

        runpy.run_path(self.kernel_path, run_name="__main__")

    # ---- run

    def run(self) -> int:
        reap_due = True
        while True:
            if reap_due:
                reap_due = False
                self._reap()
                if self.kernel_status is not None:
                    return self._finish(_exit_code(self.kernel_status))
            poller = select.poll()
            # (POLLRDHUP: should the host's stream ever be a socket, its half-close counts too)
            waiting = self.full or self.relay_out < 0
            poller.register(0, _RDHUP if waiting else select.POLLIN | _RDHUP)
            poller.register(self.wake_r, select.POLLIN)
            if self.full:
                poller.register(self.relay_out, select.POLLOUT)
            ready = poller.poll(BACKSTOP_MS)
            reap_due = not ready  # the back-stop: reap even if no wake-up came
            for fd, events in ready:
                if fd == self.wake_r:
                    self._drain_wakeups()
                    reap_due = True
                elif fd == self.relay_out:
                    if events & (select.POLLERR | select.POLLHUP):
                        self._kernel_closed_its_input()
                    elif self._flush_pending():
                        self.full = False
                elif events & select.POLLNVAL:
                    return self._host_gone()
                elif events & select.POLLIN:
                    if not self._relay_burst():
                        return self._host_gone()
                elif events & (select.POLLHUP | select.POLLERR | _RDHUP):
                    # Hung up, with nothing (or nothing we can pass on) left to read: whatever
                    # the host wrote last, nobody is left to answer.
                    return self._host_gone()

    def _relay_burst(self) -> bool:
        """Move what the host sent into the kernel's pipe until either side has to wait;
        False at the end of the host's stream. A full kernel pipe sets ``full``."""
        for burst in range(64):
            if self.relay_out < 0:
                return True
            if self.pending and not self._flush_pending():
                self.full = True
                return True
            if self.use_splice:
                try:
                    moved = os.splice(0, self.relay_out, CHUNK, flags=os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    # Our pipe is empty or the kernel's is full. After a move, most likely the
                    # first (and if not, the next round lands here first). Waiting for room
                    # answers at once when there is room, so this never spins.
                    self.full = burst == 0
                    return True
                except BrokenPipeError:
                    self._kernel_closed_its_input()
                    return True
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    self.use_splice = False  # pipes this engine cannot splice: copy instead
                    continue
                if moved == 0:
                    return False
            else:
                try:
                    data = os.read(0, CHUNK)
                except BlockingIOError:
                    return True
                if not data:
                    return False
                self.pending = memoryview(data)
        return True

    def _flush_pending(self) -> bool:
        """Write what a copy left over; False while the kernel's pipe stays full."""
        while self.pending:
            try:
                self.pending = self.pending[os.write(self.relay_out, self.pending) :]
            except BlockingIOError:
                return False
            except BrokenPipeError:
                self._kernel_closed_its_input()
        return True

    def _kernel_closed_its_input(self) -> None:
        """A cell closed the kernel's stdin: stop relaying; the host is still watched."""
        if self.relay_out >= 0:
            os.close(self.relay_out)
            self.relay_out = -1
        self.full = False
        self.pending = memoryview(b"")

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.kernel_pid:
                self.kernel_status = status

    # ---- end

    def _host_gone(self) -> int:
        return self._finish(HOST_GONE_EXIT)

    def _finish(self, code: int) -> int:
        """End every other process of the sandbox, then report ``code``."""
        if self.pid1:
            try:
                os.kill(-1, signal.SIGKILL)  # everyone in the namespace but us
            except OSError:
                pass
        else:
            self._kill_descendants()
        return code

    def _kill_descendants(self) -> None:
        """Local backend: the kernel and every process it started, however it detached
        (a subreaper inherits the orphans of ``setsid`` and double forks)."""
        me = os.getpid()
        for _round in range(200):
            alive = _descendants(me)
            if not alive:
                return
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self._reap()
            select.select([], [], [], 0.005)


def _descendants(root: int) -> list[int]:
    """Living (non-zombie) descendants of ``root``, read from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def main() -> int:
    sup = Supervisor(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.py"))
    sup.protect_self()
    sup.start_kernel()
    try:
        return sup.run()
    except BaseException as exc:  # a bug here must end the sandbox, never leave it unwatched
        _say(f"failed: {exc!r}; ending the sandbox")
        return sup._finish(START_FAILED_EXIT)


if __name__ == "__main__":
    os._exit(main())
