"""Where the asyncio engine runs what blocks: Docker's API, a cell waiting on its kernel, a
synchronous model client or tool.

The engine's own waits (model calls over ``httpx``, budgets, children) are coroutines on one
event loop, so many runs share it without a thread per run. What cannot be awaited -- a
socket read in docker-py, a user's synchronous callable -- goes to one of two bounded pools
shared by the whole process: a thread per *blocked operation*, never per run, and a bound
that a fan-out cannot push past. Two pools, so that model calls held by slow synchronous
clients cannot starve the container starts and cells that every run needs to finish.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: Threads for Docker calls and cells waiting on their kernel (one per live cell at most).
WORK_THREADS = 64
#: Threads for synchronous model clients and host tools.
CALL_THREADS = 128

_lock = threading.Lock()
_pools: dict[str, ThreadPoolExecutor] = {}
_pid = os.getpid()


def _pool(name: str, size: int) -> ThreadPoolExecutor:
    global _pid
    with _lock:
        if _pid != os.getpid():  # a forked child has the dict, not the threads
            _pools.clear()
            _pid = os.getpid()
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = ThreadPoolExecutor(size, thread_name_prefix=f"rlm-{name}")
        return pool


def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """``fn(*args, **kwargs)`` in the work pool, awaited. Cancelling the await does not stop
    ``fn``: callers that must undo what it did wait for it with :func:`finish`."""
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(_pool("work", WORK_THREADS), functools.partial(fn, *args, **kwargs))


def blocking_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """As :func:`blocking`, in the pool for synchronous model clients and tools."""
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(_pool("call", CALL_THREADS), functools.partial(fn, *args, **kwargs))


async def finish(awaitable: Awaitable[T]) -> tuple[T, bool]:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile; ``(result,
    whether a cancel came)``. For a ``finally`` whose later steps must run too: it re-raises
    the cancel itself, after them."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise  # the work itself was cancelled: there is nothing to wait for
            if task.done():  # it ended as the cancel came: its outcome stands, the cancel too
                return task.result(), True
            cancelled = True
