"""Regression: two warm pools (one per engine) asking each other's size must never deadlock.

A pool that fills itself asks ``can_grow`` with its own lock held; with several engines that
question reads the other pools' sizes. Those reads must not take the other pool's lock, or
two pools filling at once wait on each other forever (seen in a 256-way fan-out).
"""

from __future__ import annotations

import threading

from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.pool import SandboxPool


def test_sizes_are_read_without_the_pools_lock() -> None:
    pool = SandboxPool(SandboxConfig(), 2)
    got: list[int] = []
    with pool._cond:  # another thread holds the lock, as a filling pool does
        t = threading.Thread(target=lambda: got.extend([pool.held, pool.ready]))
        t.start()
        t.join(2)
        assert not t.is_alive() and got == [0, 0]


def test_two_pools_asking_each_other_while_locked_do_not_deadlock() -> None:
    a, b = SandboxPool(SandboxConfig(), 2), SandboxPool(SandboxConfig(), 2)
    barrier = threading.Barrier(2)
    done: list[str] = []

    def ask(me: SandboxPool, other: SandboxPool, name: str) -> None:
        with me._cond:
            barrier.wait(2)
            _ = other.held + other.ready
            done.append(name)

    threads = [threading.Thread(target=ask, args=(a, b, "a")), threading.Thread(target=ask, args=(b, a, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3)
    assert sorted(done) == ["a", "b"]
