"""The sandbox's supervisor without Docker: its seccomp filter, its relay, its exit codes.

The supervisor (rlm_sandbox/kernel/supervisor.py) is PID 1 of every container; here it runs
as an ordinary process (the local backend's mode) in front of small stand-in kernels, so what
it promises can be checked in milliseconds: the host's bytes reach the kernel intact (with
splice and with the copying fallback), the kernel's exit is reported as a container reports
it, and when the host's end of the stream closes, the kernel and everything it started end.
The filter is loaded into a forked child of the test and tried against the test process.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rlm_sandbox.kernel import seccomp_filter as F
from rlm_sandbox.kernel import supervisor as S

KERNEL_DIR = Path(S.__file__).parent
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the supervisor is Linux-only")

# Runs the supervisor in front of a stand-in kernel, as the container's entrypoint runs it.
RUNNER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import supervisor as S
    if sys.argv[3] == "direct":  # as under gVisor: the kernel reads the stream itself
        S.stream_can_be_forged = lambda: False
    sup = S.Supervisor(sys.argv[2])
    sup.use_splice = sys.argv[3] != "copy"
    sup.protect_self()
    sup.start_kernel()
    os._exit(sup.run())
    """
)


def supervise(tmp_path: Path, kernel: str, mode: str = "splice") -> subprocess.Popen[bytes]:
    path = tmp_path / "stand_in_kernel.py"
    path.write_text(textwrap.dedent(kernel))
    return subprocess.Popen(
        [sys.executable, "-I", "-c", RUNNER, str(KERNEL_DIR), str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- the relay and exit codes

ECHO_KERNEL = """
    import hashlib, os, sys
    want = int(os.read(0, 16).split(b"\\n")[0])
    h, got = hashlib.sha256(), 0
    while got < want:
        chunk = os.read(0, min(1 << 20, want - got))
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    os.write(1, f"{got} {h.hexdigest()}\\n".encode())
    code = int(os.read(0, 16) or b"0")
    os._exit(code)
"""


@pytest.mark.parametrize("mode", ["splice", "copy", "direct"])
def test_the_host_stream_reaches_the_kernel_intact_and_its_exit_code_is_the_sandboxs(
    tmp_path: Path, mode: str
) -> None:
    data = os.urandom(1 << 20) * 24  # 24 MB, more than every pipe on the way holds
    proc = supervise(tmp_path, ECHO_KERNEL, mode)
    assert proc.stdin is not None and proc.stdout is not None
    header = f"{len(data)}\n".encode().ljust(16)
    writer = threading.Thread(target=lambda: (proc.stdin.write(header + data), proc.stdin.flush()))
    writer.start()
    line = proc.stdout.readline().decode()
    writer.join()
    assert line == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"
    proc.stdin.write(b"3")
    proc.stdin.flush()
    assert proc.wait(timeout=20) == 3  # the kernel's own code, as is


@pytest.mark.parametrize(
    ("how", "code"),
    [("SIGKILL", 137), ("SIGSEGV", 139), ("SIGTERM", 143)],
)
def test_a_kernel_killed_by_a_signal_is_reported_as_128_plus_the_signal(
    tmp_path: Path, how: str, code: int
) -> None:
    kernel = f"import os, resource, signal\nresource.setrlimit(resource.RLIMIT_CORE, (0, 0))\nos.kill(os.getpid(), signal.{how})\n"
    proc = supervise(tmp_path, kernel)
    assert proc.wait(timeout=20) == code


def test_sigterm_to_the_supervisor_is_forwarded_to_the_kernel(tmp_path: Path) -> None:
    kernel = """
        import os, time
        os.write(1, b"up\\n")
        time.sleep(60)
    """
    proc = supervise(tmp_path, kernel)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143  # as `docker stop` ended a kernel under tini


SPINNING_KERNEL = """
    import os, signal, subprocess
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
    pids = [os.getpid(), subprocess.Popen(["sleep", "600"]).pid]
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:  # a daemon, in a session of its own
            os.write(w, str(os.getpid()).encode())
            while True:
                pass
        os._exit(0)
    os.waitpid(first, 0)
    pids.append(int(os.read(r, 32)))
    # Keep a writer on our own input, as a cell can through /proc: it must not matter.
    held = os.open(f"/proc/self/fd/0", os.O_WRONLY)
    os.write(1, (" ".join(map(str, pids)) + "\\n").encode())
    while True:
        pass
"""


def test_when_the_host_hangs_up_the_kernel_and_everything_it_started_end(tmp_path: Path) -> None:
    proc = supervise(tmp_path, SPINNING_KERNEL)
    assert proc.stdin is not None and proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    try:
        assert len(pids) == 3 and all(alive(p) for p in pids)
        proc.stdin.close()  # what the engine does when the controller's connection goes
        assert proc.wait(timeout=20) == S.HOST_GONE_EXIT
        deadline = time.monotonic() + 20  # generous: the supervisor kills before it exits
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if alive(p)]
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def test_on_linux_a_pipe_reopened_through_proc_is_a_writer_so_the_stream_is_relayed() -> None:
    """The probe that picks the relay: true for an ordinary pipe (runc's stdin is one)."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import supervisor as S; print(S.stream_can_be_forged())"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(KERNEL_DIR)],
        stdin=subprocess.PIPE,
        capture_output=True,
        check=True,
    )
    assert out.stdout == b"True\n"


@pytest.mark.parametrize("mode", ["splice", "direct"])
def test_a_kernel_that_stops_reading_does_not_blind_the_supervisor(tmp_path: Path, mode: str) -> None:
    """The kernel's pipe fills up (a spinning cell reads nothing): a hang-up still ends it."""
    kernel = """
        import os
        os.write(1, b"up\\n")
        while True:
            pass
    """
    proc = supervise(tmp_path, kernel, mode)
    assert proc.stdin is not None and proc.stdout is not None and proc.stdout.readline() == b"up\n"
    os.set_blocking(proc.stdin.fileno(), False)
    sent = 0
    try:
        while True:
            sent += os.write(proc.stdin.fileno(), b"x" * (1 << 16))
    except BlockingIOError:
        pass
    assert sent > 0
    proc.stdin.close()
    assert proc.wait(timeout=20) == S.HOST_GONE_EXIT


# ---------------------------------------------------------------- the seccomp filter


def in_filtered_child(protected: int, probe: Callable[[], object]) -> str:
    """Run ``probe`` in a forked child under the filter protecting ``protected``; the errno
    name it failed with, or "ok"."""
    program = F.build_filter(protected)
    assert program is not None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        outcome = "ok"
        try:
            F.install_filter(program)
            probe()
        except OSError as exc:
            outcome = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        except BaseException as exc:
            outcome = f"raised {exc!r}"
        os.write(w, outcome.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


def _raw(nr: int, *args: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(nr, *args) == -1:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


NR = F._SYSCALLS.get(os.uname().machine, {})


@pytest.fixture
def victim() -> Iterator[int]:
    """The process the filter protects in these tests: a sleeper leading its own group, so a
    probe that wrongly gets through stops or kills it, never the test run."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.skipif(not NR, reason="no syscall table for this architecture")
def test_the_filter_refuses_what_could_stop_starve_or_trace_the_supervisor(victim: int) -> None:
    me = victim
    refused: dict[str, Callable[[], object]] = {
        "SIGSTOP": lambda: os.kill(me, signal.SIGSTOP),
        "SIGKILL": lambda: os.kill(me, signal.SIGKILL),
        "its group": lambda: os.killpg(me, signal.SIGSTOP),
        "tgkill": lambda: _raw(NR["tgkill"], me, me, signal.SIGSTOP),
        "tkill": lambda: _raw(NR["tkill"], me, signal.SIGSTOP),
        "sigqueue": lambda: _raw(NR["rt_sigqueueinfo"], me, signal.SIGSTOP, 0),
        "pidfd_open": lambda: os.pidfd_open(me),
        "pidfd_send_signal": lambda: _raw(NR["pidfd_send_signal"], 0, signal.SIGSTOP, 0, 0),
        "renice": lambda: os.setpriority(os.PRIO_PROCESS, me, 19),
        "renice its user": lambda: os.setpriority(os.PRIO_USER, os.getuid(), 19),
        "SCHED_IDLE": lambda: os.sched_setscheduler(me, os.SCHED_IDLE, os.sched_param(0)),
        "affinity": lambda: os.sched_setaffinity(me, {0}),
        "prlimit": lambda: resource.prlimit(me, resource.RLIMIT_CPU, (1, 1)),
        "ptrace": lambda: _raw(NR["ptrace"], 16, me, 0, 0),
        "F_SETOWN": lambda: fcntl.fcntl(os.open("/dev/null", os.O_RDONLY), fcntl.F_SETOWN, me),
        "F_SETOWN group": lambda: fcntl.fcntl(os.open("/dev/null", os.O_RDONLY), fcntl.F_SETOWN, -me),
        "FIOSETOWN": lambda: fcntl.ioctl(socket.socket(), 0x8901, me.to_bytes(4, sys.byteorder)),
        "CLONE_PARENT": lambda: _raw(NR["clone"], 0x8000 | signal.SIGCHLD, 0, 0, 0, 0),
        # (SIGUSR2, not SIGSTOP: should it ever get through, the probe dies instead of hanging)
        "exit signal": lambda: _raw(NR["clone"], signal.SIGUSR2, 0, 0, 0, 0),
    }
    outcomes = {name: in_filtered_child(me, probe) for name, probe in refused.items()}
    assert {n: o for n, o in outcomes.items() if o != "EPERM" and n != "pidfd_send_signal"} == {}, outcomes
    assert outcomes["pidfd_send_signal"] == "ENOSYS"
    assert alive(victim)


@pytest.mark.skipif(not NR, reason="no syscall table for this architecture")
def test_the_filter_leaves_ordinary_cells_alone(victim: int) -> None:
    me = victim
    allowed: dict[str, Callable[[], object]] = {
        "probe it": lambda: os.kill(me, 0),
        "signal itself": lambda: os.kill(os.getpid(), 0),
        "fork": _fork_and_reap,
        "a thread": lambda: (lambda t: (t.start(), t.join()))(threading.Thread(target=lambda: None)),
        "a subprocess": lambda: subprocess.run(["true"], check=True),
        "nice itself": lambda: os.setpriority(os.PRIO_PROCESS, 0, 1),
        "own pidfd": lambda: os.close(os.pidfd_open(os.getpid())),
        "own F_SETOWN": lambda: fcntl.fcntl(os.open("/dev/null", os.O_RDONLY), fcntl.F_SETOWN, os.getpid()),
        "ordinary fcntl": lambda: fcntl.fcntl(0, fcntl.F_GETFL),
        "json": lambda: json.dumps({"a": 1}),
    }
    outcomes = {name: in_filtered_child(me, probe) for name, probe in allowed.items()}
    assert set(outcomes.values()) == {"ok"}, outcomes


def test_the_filter_as_pid_1_lets_kill_minus_1_reach_everyone_else() -> None:
    """As PID 1, -1 is not a group of ours but "all but init" (never us): not refused."""
    rules = F.filter_rules(1)
    assert all(check[2] != 0xFFFFFFFF for check in rules["kill"])
    assert any(check[2] == (-4242) & 0xFFFFFFFF for check in F.filter_rules(4242)["kill"])
    for arch in F._SYSCALLS:
        program = F.build_filter(1, arch)
        assert program is not None and len(program) % 8 == 0
