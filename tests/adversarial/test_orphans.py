"""A controller that dies must not leave its containers running, whatever the cell does.

Each test drives a real run in a child process (the API, the scripted model over HTTP, a real
container under the suite's runtime). The first cell blocks the signals the kernel uses,
does its attack, tells the model server it is armed (an ``llm_query`` the test waits for)
and then spins, sleeps or ends. The test SIGKILLs the controller and asserts that the run's
container stops by itself, ended by the sandbox's supervisor (exit 129: the host hung up),
within a generous bound (20 s, as the machine is shared; measured times are about a second
and land in the security report). Then it removes the container itself, as ``gc`` would.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlm_sandbox.sandbox.docker_backend import docker_client
from rlm_sandbox.sandbox.input_file import remove_orphans

from ..conftest import containers_of
from ..helpers import ARMED, kill_controller_when_armed
from .conftest import ROWS, RUNTIME

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

BOUND_S = 20.0  # generous on purpose: no timed assertion may be tight on a shared machine
HOST_GONE_EXIT = 129  # rlm_sandbox/kernel/supervisor.py: the supervisor ended the sandbox

# Every cell starts by blocking what the kernel could be interrupted with.
BLOCK = (
    "import os, signal, time, json\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGALRM, signal.SIGUSR1, signal.SIGTERM])\n"
)
SPIN = "while True:\n    pass\n"


@dataclass
class Orphaned:
    armed: str  # what the cell reported when it was armed
    stop_s: float  # from the controller's SIGKILL to no container of the run running
    exit_code: int | None
    running: bool


def _wait_stopped(run_id: str, killed_at: float) -> tuple[bool, float, int | None]:
    api = docker_client().api
    ids = containers_of(run_id)
    assert ids, "the run never created a container"
    while True:
        states = [api.inspect_container(cid)["State"] for cid in ids]
        running = any(s["Running"] for s in states)
        if not running or time.monotonic() > killed_at + BOUND_S:
            codes = {s.get("ExitCode") for s in states}
            return running, time.monotonic() - killed_at, codes.pop() if len(codes) == 1 else None
        time.sleep(0.1)


def orphan_attack(code: str, run_id: str, runtime: str | None, tmp_path: Path, name: str) -> Orphaned:
    """Kill the controller of a run whose first cell is ``code``; report how its container ended."""
    try:
        armed, killed_at = kill_controller_when_armed(
            code, run_id, tmp_path / "controller.log", runtime=runtime
        )
        running, stop_s, exit_code = _wait_stopped(run_id, killed_at)
    finally:
        ids = containers_of(run_id)
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
        remove_orphans()  # the killed controller's input file, as `rlm-sandbox gc` would
    ROWS.append(
        {
            "attack": name,
            "runtime": RUNTIME,
            "status": "orphan_running" if running else "orphan_ended",
            "outcome": (
                f"container still running {stop_s:.1f} s after its controller was SIGKILLed"
                if running
                else f"container ended itself {stop_s:.1f} s after its controller's SIGKILL (exit {exit_code})"
            ),
            "seconds": round(stop_s, 2),
            "breached": running,
        }
    )
    assert not running, f"the container outlived its controller by {stop_s:.1f} s"
    assert exit_code == HOST_GONE_EXIT, f"ended with exit {exit_code}, not by the supervisor"
    return Orphaned(armed, stop_s, exit_code, running)


# ---------------------------------------------------------------- the cell in the kernel


def test_python_spin_with_signals_blocked(run_id, sandbox_runtime, tmp_path, request) -> None:
    code = BLOCK + f"llm_query('{ARMED}')\n" + SPIN
    orphan_attack(code, run_id, sandbox_runtime, tmp_path, request.node.name)


@pytest.mark.parametrize(
    "stuck",
    ["sum(range(10**13))", "import re\nre.match(r'(a+)+$', 'a' * 64 + '!')"],
    ids=["sum-range", "catastrophic-regex"],
)
def test_c_code_holding_the_gil(run_id, sandbox_runtime, tmp_path, request, stuck: str) -> None:
    """No thread of the kernel runs at all: only a watcher outside the kernel can act."""
    code = BLOCK + f"llm_query('{ARMED}')\n" + stuck + "\n" + SPIN
    orphan_attack(code, run_id, sandbox_runtime, tmp_path, request.node.name)


def test_holding_a_writer_on_the_kernels_input(run_id, sandbox_runtime, tmp_path, request) -> None:
    """A pipe reopened for writing through /proc never hangs up: the kernel's input must not
    be what tells the sandbox that the host is gone."""
    code = (
        BLOCK
        + "fd_in = llm_query.__self__.link.send.__self__.fd_in  # the kernel's channel\n"
        + "held = [os.open(f'/proc/self/fd/{fd}', os.O_WRONLY) for fd in (fd_in, fd_in)]\n"
        + f"llm_query('{ARMED} ' + repr(held))\n"
        + SPIN
    )
    orphan_attack(code, run_id, sandbox_runtime, tmp_path, request.node.name)


# ---------------------------------------------------------------- processes the cell starts

DETACHED_SPINNERS = (
    BLOCK
    + """
spinners = []
go_r, go_w = os.pipe()
for i in range(SPINNERS):
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:  # a daemon: orphaned, in a session of its own, spinning
            os.write(w, str(os.getpid()).encode())
            os.close(go_w)
            os.read(go_r, 1)  # all start together, once all exist
            while True:
                pass
        os._exit(0)
    os.waitpid(first, 0)
    spinners.append(int(os.read(r, 32)))
os.close(go_w)
"""
)


# gVisor (runsc 2022-12-19 here) itself dies (exit 2) with about 48 busy processes, with or
# without the supervisor: its crowd is smaller.
@pytest.mark.parametrize("spinners", [4, 48 if RUNTIME == "runc" else 24], ids=["few", "crowd"])
def test_detached_children_spin_while_the_cell_sleeps(
    run_id, sandbox_runtime, tmp_path, request, spinners: int
) -> None:
    """The crowd also competes with the supervisor for the container's one CPU."""
    code = (
        DETACHED_SPINNERS.replace("SPINNERS", str(spinners))
        + f"llm_query('{ARMED} ' + repr(spinners))\ntime.sleep(3600)\n"
    )
    orphan_attack(code, run_id, sandbox_runtime, tmp_path, request.node.name)


def test_detached_children_spin_after_the_cell_ended(run_id, sandbox_runtime, tmp_path, request) -> None:
    """The kernel sits idle between cells (its own end-of-stream handling would let it exit);
    the daemons it leaves must not outlive the controller either."""
    code = DETACHED_SPINNERS.replace("SPINNERS", "4") + f"llm_query('{ARMED} ' + repr(spinners))\n"
    orphan_attack(code, run_id, sandbox_runtime, tmp_path, request.node.name)


# ---------------------------------------------------------------- the watcher itself

WATCHER_ATTACKS = (
    BLOCK
    + """
import ctypes, fcntl, platform, resource
libc = ctypes.CDLL(None, use_errno=True)
TKILL, TGKILL, CLONE = {'x86_64': (200, 234, 56), 'aarch64': (130, 131, 220)}[platform.machine()]
tried = {}
def attempt(name, fn):
    try:
        fn()
        tried[name] = 'done'
    except OSError as e:
        tried[name] = type(e).__name__
def raw(result):
    if result == -1:
        raise OSError(ctypes.get_errno(), 'failed')
attempt('stop', lambda: os.kill(1, signal.SIGSTOP))
attempt('kill', lambda: os.kill(1, signal.SIGKILL))
attempt('tstp', lambda: os.kill(1, signal.SIGTSTP))
attempt('tgkill-stop', lambda: raw(libc.syscall(TGKILL, 1, 1, signal.SIGSTOP)))
attempt('tgkill-own', lambda: raw(libc.syscall(TGKILL, os.getpid(), 1, signal.SIGSTOP)))
attempt('tkill-stop', lambda: raw(libc.syscall(TKILL, 1, signal.SIGSTOP)))
attempt('stop-all', lambda: os.kill(-1, signal.SIGSTOP))
attempt('renice', lambda: os.setpriority(os.PRIO_PROCESS, 1, 19))
attempt('renice-user', lambda: os.setpriority(os.PRIO_USER, os.getuid(), 19))
attempt('sched-idle', lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0)))
attempt('prlimit-cpu', lambda: resource.prlimit(1, resource.RLIMIT_CPU, (1, 1)))
attempt('ptrace', lambda: raw(libc.ptrace(16, 1, 0, 0)))
attempt('mem', lambda: open('/proc/1/mem', 'r+b'))
attempt('setown', lambda: fcntl.fcntl(os.open('/dev/null', os.O_RDONLY), fcntl.F_SETOWN, 1))
attempt('clone-parent', lambda: raw(libc.syscall(CLONE, 0x8000 | signal.SIGSTOP, 0, 0, 0, 0)))
attempt('stdin-reopen', lambda: os.open('/proc/1/fd/0', os.O_WRONLY))
time.sleep(0.3)
tried['pid1'] = open('/proc/1/stat').read().rsplit(')', 1)[1].split()[0]
llm_query('ARMED ' + json.dumps(tried))
"""
)


def test_cell_attacks_the_watcher_first(run_id, sandbox_runtime, tmp_path, request) -> None:
    """Stop, kill, renice, trace or re-limit PID 1, then spin: none of it keeps the sandbox up."""
    out = orphan_attack(WATCHER_ATTACKS + SPIN, run_id, sandbox_runtime, tmp_path, request.node.name)
    tried = json.loads(out.armed.split(" ", 1)[1])
    assert tried.pop("pid1") in ("S", "R"), tried  # never stopped ("T"), never traced ("t")
    # Everything that could stop, starve, trace or write PID 1 is refused (runc would ignore
    # some signals to PID 1 silently; the seccomp filter refuses them under every runtime).
    refused = {k for k, v in tried.items() if v == "PermissionError"}
    must = {
        "stop",
        "kill",
        "tstp",
        "tgkill-stop",
        "tgkill-own",
        "tkill-stop",
        "renice",
        "renice-user",
        "sched-idle",
    }
    must |= {"prlimit-cpu", "ptrace", "mem", "setown", "clone-parent"}
    assert must <= refused, tried
