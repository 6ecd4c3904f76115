"""The asyncio API: ``await AsyncRLM(...).run(context, task=...)`` and async sessions.

``AsyncRLM`` takes exactly the arguments of :class:`~rlm_sandbox.rlm.api.RLM` and returns
the same :class:`~rlm_sandbox.rlm.result.RLMResult`. A run is a coroutine on the caller's
loop (the engine is asyncio throughout: :meth:`RLM.arun`), so many runs share one loop and
no thread waits on a model call; only what blocks (Docker's API, a cell waiting on its
kernel) borrows a thread of :mod:`rlm_sandbox.blocking`'s bounded pools.

Cancelling the task that awaits a run stops the run: its cells are interrupted (their
containers removed), its model calls abandoned, its trace closed with ``status:
cancelled``; the task then sees :class:`asyncio.CancelledError`, as asyncio code expects,
once the run's containers are gone.

A listener may be a plain callable or an ``async`` one; an async listener gets the run's
events in order, each awaited before the next.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.outcome import Cancellation
from rlm_sandbox.rlm.result import RLMResult
from rlm_sandbox.rlm.session import Session

AnyListener = Callable[[dict[str, Any]], Any]


class _Ordered:
    """Delivers one run's events to an ``async`` listener in order, on the caller's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: Callable[[dict[str, Any]], Awaitable[Any]]):
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task = loop.create_task(self._drain(listener))

    def __call__(self, event: dict[str, Any]) -> None:  # any thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, dict(event))

    async def _drain(self, listener: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
        while (event := await self.queue.get()) is not None:
            try:
                await listener(event)
            except Exception:
                pass  # a broken view never breaks the run (the same rule as sync listeners)

    async def close(self) -> None:
        # Through the same queue of callbacks as the events: none emitted before is overtaken.
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
        await self.task


def _split(
    listeners: Sequence[AnyListener], loop: asyncio.AbstractEventLoop
) -> tuple[list[Any], list[_Ordered]]:
    plain: list[Any] = []
    ordered: list[_Ordered] = []
    for listener in listeners:
        if inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
            getattr(listener, "__call__", None)  # noqa: B004 - an object with an async __call__
        ):
            ordered.append(_Ordered(loop, listener))
        else:
            plain.append(listener)
    return plain, ordered


async def _finish(ordered: list[_Ordered]) -> None:
    for o in ordered:
        await o.close()


class AsyncRLM:
    """``AsyncRLM(model=..., config=RLMConfig(...))``; ``await arlm.run(context, task=...)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rlm = RLM(*args, **kwargs)
        self.listeners: list[AnyListener] = []

    @property
    def config(self) -> Any:
        return self._rlm.config

    @property
    def model(self) -> str | None:
        return self._rlm.model

    async def run(
        self,
        context: Any = None,
        task: str = "",
        *,
        run_id: str | None = None,
        output: Any = None,
        cancel: Cancellation | None = None,
        listeners: Sequence[AnyListener] = (),
    ) -> RLMResult:
        """Answer ``task`` over ``context``; see :meth:`RLM.run`. Cancel the awaiting task
        to stop the run (``status: cancelled``, every container removed, then
        :class:`asyncio.CancelledError`); ``cancel.cancel()`` stops it and returns its result."""
        plain, ordered = _split([*self.listeners, *listeners], asyncio.get_running_loop())
        try:
            return await self._rlm.arun(
                context, task, run_id=run_id, output=output, cancel=cancel, listeners=[*plain, *ordered]
            )
        finally:
            await _finish(ordered)

    def session(self, context: Any = None, *, run_id: str | None = None) -> AsyncSession:
        """``async with arlm.session(context=...) as s: await s.ask(...)``."""
        return AsyncSession(self, context, run_id=run_id)


class AsyncSession:
    """One container, one REPL and one conversation across questions (see
    :mod:`rlm_sandbox.rlm.session`), awaited on the caller's loop."""

    def __init__(self, owner: AsyncRLM, context: Any, *, run_id: str | None = None) -> None:
        self._owner = owner
        self._context = context
        self._run_id = run_id
        self._session: Session | None = None
        self._ordered: list[_Ordered] = []

    async def open(self) -> AsyncSession:
        if self._session is None:
            plain, self._ordered = _split(self._owner.listeners, asyncio.get_running_loop())
            self._session = self._owner._rlm.session(
                self._context, run_id=self._run_id, listeners=[*plain, *self._ordered]
            )
        await self._session.aopen()
        return self

    async def ask(self, question: str, *, output: Any = None) -> RLMResult:
        await self.open()
        assert self._session is not None
        return await self._session.aask(question, output=output)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.aclose()
        await _finish(self._ordered)
        self._ordered = []

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def totals(self) -> dict[str, Any]:
        assert self._session is not None
        return self._session.totals()
