"""The warm pool over the in-memory backend: a node takes the container the pool is starting
rather than cold-starting a second one beside it (the two together could pass the run's
container cap), and starts its own only when the pool has nothing ready or starting."""

from __future__ import annotations

import time
from collections.abc import Callable

from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.sandbox.pool import SandboxPool


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s  # generous: the fake starts in milliseconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_node_takes_the_container_the_pool_is_starting() -> None:
    backend = FakeBackend()
    pool = SandboxPool(SandboxConfig(), 1, backend=backend).start()
    try:
        assert _wait_for(lambda: pool.held == 1)  # starting, or ready already
        sandbox, pooled = pool.acquire()
        assert pooled and (pool.hits, pool.misses) == (1, 0)
        assert sandbox.execute("print(6 * 7)").stdout == "42\n"
        sandbox.close()
    finally:
        pool.close()
    assert backend.alive() == []


def test_a_node_starts_its_own_when_the_pool_holds_nothing() -> None:
    backend = FakeBackend()
    pool = SandboxPool(SandboxConfig(), 1, backend=backend)  # never started: never fills
    try:
        sandbox, pooled = pool.acquire()
        assert not pooled and (pool.hits, pool.misses) == (0, 1)
        sandbox.close()
    finally:
        pool.close()
    assert backend.alive() == [] and len(backend.started) == 1
