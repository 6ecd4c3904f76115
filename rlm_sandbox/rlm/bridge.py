"""The synchronous API over the asyncio engine: ``RLM.run`` and sessions' ``ask`` run their
coroutine on one engine loop, in a daemon thread shared by the whole process.

One loop, not ``asyncio.run`` per call: a sync session's questions must run on the loop its
sandbox and model clients were made on, and many threads calling ``RLM.run`` at once share
one loop instead of each starting its own. The caller's thread only waits; Ctrl-C (or the
SIGTERM our registry turns into ``SystemExit``) arrives there, and ``on_interrupt`` stops
the run on the loop before the signal goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from rlm_sandbox.sandbox.registry import live

T = TypeVar("T")

#: How long an interrupted caller waits for the run to remove its containers and close its trace.
INTERRUPT_GRACE_S = 15.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid = os.getpid()


def engine_loop() -> asyncio.AbstractEventLoop:
    """The process's engine loop, started on first use (again in a forked child)."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_serve, args=(loop,), name="rlm-engine-loop", daemon=True)
            thread.start()
            _loop, _thread, _pid = loop, thread, os.getpid()
        return _loop


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    while True:
        try:
            loop.run_forever()
            return
        except (KeyboardInterrupt, SystemExit):
            # Raised by code on the loop (a listener, a tool): asyncio hands it to the task
            # that raised it, then out of the loop; every other run goes on.
            continue


def run_sync(
    coro: Coroutine[Any, Any, T], *, on_interrupt: Callable[[BaseException], Any] | None = None
) -> T:
    """Run ``coro`` on the engine loop and wait for it. A ``KeyboardInterrupt`` or
    ``SystemExit`` while waiting calls ``on_interrupt(exc)`` (thread-safe: it stops the
    run), waits up to :data:`INTERRUPT_GRACE_S` for the coroutine to wind down, and
    re-raises. Refused on the engine loop itself (it would wait on itself forever)."""
    loop = engine_loop()
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError(
            "a synchronous rlm_sandbox call was made from inside the engine (a listener or a "
            "tool calling RLM.run): use AsyncRLM there"
        )
    live.hook_signals()  # SIGTERM -> SystemExit here, in the waiting thread (if it is the main one)
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except (KeyboardInterrupt, SystemExit) as exc:
        if on_interrupt is not None:
            on_interrupt(exc)
        try:
            future.result(INTERRUPT_GRACE_S)
        except BaseException:
            pass
        raise
    except concurrent.futures.CancelledError:
        raise asyncio.CancelledError from None
