"""The seccomp filter that keeps the kernel's process tree off the supervisor (standard library only).

Why it is its own module: the supervisor (``supervisor.py``) is a process manager; this is a
small classic-BPF compiler with a syscall table per architecture, a separate concern with its
own tests. The supervisor builds the program for its own pid (:func:`build_filter`) and the
forked kernel loads it (:func:`install_filter`) before any cell runs; everything the kernel
starts inherits it and cannot remove it. It is one of the kernel files copied into the image
(``sandbox/image.py``), and imported by bare name, as the other kernel files are.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct

PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# Syscall numbers per architecture (x86_64 from asm/unistd_64.h; aarch64 from asm-generic).
_SYSCALLS = {
    "x86_64": {
        "kill": 62,
        "tkill": 200,
        "tgkill": 234,
        "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297,
        "pidfd_open": 434,
        "pidfd_send_signal": 424,
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "setpriority": 141,
        "sched_setparam": 142,
        "sched_setscheduler": 144,
        "sched_setaffinity": 203,
        "sched_setattr": 314,
        "prlimit64": 302,
        "ioprio_set": 251,
        "fcntl": 72,
        "ioctl": 16,
        "clone": 56,
        "clone3": 435,
    },
    "aarch64": {
        "kill": 129,
        "tkill": 130,
        "tgkill": 131,
        "rt_sigqueueinfo": 138,
        "rt_tgsigqueueinfo": 240,
        "pidfd_open": 434,
        "pidfd_send_signal": 424,
        "ptrace": 117,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "setpriority": 140,
        "sched_setparam": 118,
        "sched_setscheduler": 119,
        "sched_setaffinity": 122,
        "sched_setattr": 274,
        "prlimit64": 261,
        "ioprio_set": 30,
        "fcntl": 25,
        "ioctl": 29,
        "clone": 220,
        "clone3": 435,
    },
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000

# Classic BPF, as seccomp runs it.
_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_ARG0 = 16  # offsetof(struct seccomp_data, args): nr (4), arch (4), ip (8)

F_SETOWN, F_SETOWN_EX = 8, 15
FIOSETOWN, SIOCSPGRP = 0x8901, 0x8902
PRIO_USER, IOPRIO_WHO_USER = 2, 3
CLONE_PARENT = 0x8000


def _arg(i: int) -> int:
    """Offset of the low 32 bits of argument ``i`` (little-endian): pids, signals, fcntl and
    ioctl commands are 32-bit in the kernel, whatever a caller leaves in the upper half."""
    return _ARG0 + 8 * i


def filter_rules(protected: int) -> dict[str, list[tuple]]:
    """What the kernel's process tree may not do to ``protected`` (the supervisor's pid).

    A rule is a list of checks, tried in order; the first that matches decides, and none
    matching allows the call. A check is ``("eq", arg, value, then)`` (the low 32 bits of
    argument ``arg`` equal ``value``), ``("set", arg, bits, then)`` (any of ``bits`` set),
    ``("masked", arg, mask, checks)`` (``checks`` on ``arg & mask``, with ``arg`` None in
    them) or ``("always", then)``; ``then`` is ``"allow"``, ``"deny"`` (EPERM), ``"nosys"``
    (ENOSYS) or a nested list of checks.
    """
    me = protected & 0xFFFFFFFF
    minus_me = (-protected) & 0xFFFFFFFF  # the process group the supervisor leads
    # As PID 1, -1 means "every process but init" to kill(), which never reaches us.
    group = [] if protected == 1 else [("eq", 0, minus_me, "deny")]
    # kill(me, SIGTERM) asks for a stop and is forwarded, as tini did; kill(me, 0) probes.
    kill_me = [("eq", 1, signal.SIGTERM, "allow"), ("eq", 1, 0, "allow"), ("always", "deny")]
    exit_signal = [("eq", None, 0, "allow"), ("eq", None, signal.SIGCHLD, "allow"), ("always", "deny")]
    return {
        "kill": [("eq", 0, me, kill_me), *group],
        "tkill": [("eq", 0, me, "deny")],
        "tgkill": [("eq", 0, me, "deny"), ("eq", 1, me, "deny")],
        "rt_sigqueueinfo": [("eq", 0, me, "deny"), *group],
        "rt_tgsigqueueinfo": [("eq", 0, me, "deny"), ("eq", 1, me, "deny")],
        "pidfd_open": [("eq", 0, me, "deny")],
        # A pidfd can also come from opening /proc/<pid>; which process it names is not an
        # argument, so the call is refused as unimplemented (gVisor lacks it anyway).
        "pidfd_send_signal": [("always", "nosys")],
        "ptrace": [("eq", 1, me, "deny")],
        "process_vm_readv": [("eq", 0, me, "deny")],
        "process_vm_writev": [("eq", 0, me, "deny")],
        "setpriority": [("eq", 0, PRIO_USER, "deny"), ("eq", 1, me, "deny")],
        "sched_setparam": [("eq", 0, me, "deny")],
        "sched_setscheduler": [("eq", 0, me, "deny")],
        "sched_setaffinity": [("eq", 0, me, "deny")],
        "sched_setattr": [("eq", 0, me, "deny")],
        "prlimit64": [("eq", 0, me, "deny")],
        "ioprio_set": [("eq", 0, IOPRIO_WHO_USER, "deny"), ("eq", 1, me, "deny")],
        "fcntl": [
            ("eq", 1, F_SETOWN, [("eq", 2, me, "deny"), ("eq", 2, minus_me, "deny")]),
            ("eq", 1, F_SETOWN_EX, "deny"),  # the owner is behind a pointer: refuse the call
        ],
        "ioctl": [("eq", 1, FIOSETOWN, "deny"), ("eq", 1, SIOCSPGRP, "deny")],
        # No child whose exit could signal the supervisor: not CLONE_PARENT, and an exit
        # signal of SIGCHLD or none (gVisor keeps a child's exit signal when it is orphaned
        # to PID 1). clone3 passes its flags behind a pointer: unimplemented, so libc falls
        # back to clone.
        "clone": [("set", 0, CLONE_PARENT, "deny"), ("masked", 0, 0xFF, exit_signal)],
        "clone3": [("always", "nosys")],
    }


class _Asm:
    """A tiny classic-BPF assembler with labels (every jump is forward and relative)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def fresh(self) -> str:
        self._n += 1
        return f"L{self._n}"

    def emit(self, op: int, k: int = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((op, jt, jf, k))

    def goto(self, target: str) -> None:
        self.emit(_JEQ_K, 0, target, target)  # taken either way: an unconditional jump

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (op, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                delta = self.labels[target] - pc - 1 if isinstance(target, str) else target
                if not 0 <= delta <= 255:
                    raise ValueError(f"BPF jump out of range ({delta})")
                offsets.append(delta)
            out += struct.pack("<HBBI", op, offsets[0], offsets[1], k & 0xFFFFFFFF)
        return bytes(out)


def _emit_checks(a: _Asm, checks: list[tuple], loaded: object = None) -> None:
    """Code for one list of checks; the accumulator holds argument ``loaded`` on entry.
    Every path through it ends in a jump to a verdict."""
    for check in checks:
        kind = check[0]
        if kind == "always":
            _emit_then(a, check[1], loaded)
            return
        arg, value, then = check[1], check[2], check[3]
        if arg is not None and arg != loaded:
            a.emit(_LD_W_ABS, _arg(arg))
            loaded = arg
        if kind == "masked":
            a.emit(_ALU_AND_K, value)
            _emit_checks(a, then, loaded="masked")
            return
        op = _JSET_K if kind == "set" else _JEQ_K
        if isinstance(then, str):
            a.emit(op, value, then, 0)
            continue
        skip = a.fresh()
        a.emit(op, value, 0, skip)
        _emit_checks(a, then, loaded)
        a.label(skip)
    a.goto("allow")


def _emit_then(a: _Asm, then: str | list, loaded: object) -> None:
    if isinstance(then, str):
        a.goto(then)
    else:
        _emit_checks(a, then, loaded)


def build_filter(protected: int, arch: str | None = None) -> bytes | None:
    """The seccomp program (``struct sock_filter[]``) protecting ``protected``; None when
    this architecture has no syscall table here."""
    arch = arch or os.uname().machine
    numbers = _SYSCALLS.get(arch)
    if numbers is None:
        return None
    rules = filter_rules(protected)
    a = _Asm()
    a.emit(_LD_W_ABS, 4)  # arch
    a.emit(_JEQ_K, _AUDIT_ARCH[arch], 0, "nosys")  # a foreign ABI (int 0x80): nothing at all
    a.emit(_LD_W_ABS, 0)  # syscall number
    if arch == "x86_64":
        a.emit(_JGE_K, _X32_SYSCALL_BIT, "nosys", 0)  # the x32 ABI would dodge every number below
    entry = {name: a.fresh() for name in rules}
    for name in rules:
        a.emit(_JEQ_K, numbers[name], entry[name], 0)
    a.goto("allow")
    for name, checks in rules.items():
        a.label(entry[name])
        _emit_checks(a, checks)
    a.label("allow")
    a.emit(_RET_K, _RET_ALLOW)
    a.label("deny")
    a.emit(_RET_K, _RET_ERRNO | errno.EPERM)
    a.label("nosys")
    a.emit(_RET_K, _RET_ERRNO | errno.ENOSYS)
    return a.assemble()


def install_filter(program: bytes) -> None:
    """Load ``program`` for this process and every process it will start (irremovable)."""
    libc = load_libc()
    buf = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


_LIBC: list = []


def load_libc() -> ctypes.CDLL:
    """The C library, loaded once (``prctl`` and friends)."""
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]
