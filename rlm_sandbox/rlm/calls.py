"""Every model call of a run goes through here: reserved against the budget before it is sent,
bounded by the run's wall clock whatever its client does, counted per model, traced with its
whole response and a digest of its request.

One place, so that the rules a call obeys (budgets, timeouts, what is recorded for replay)
cannot differ between a node's step, a leaf ``llm_query``, a compaction or a fallback.

*Reservation.* Before a call is sent its worst case is reserved (:meth:`Budget.reserve`): its
prompt's tokens bounded by :func:`~rlm_sandbox.rlm.budget.prompt_token_bound`, its completion
by the ``max_tokens`` it is sent with (``lm_max_tokens``, at most the model's own output
limit), its cost at the model's highest rate from LiteLLM's price map (a model the map does
not know costs 0: a cost cap cannot bound it). When it returns the real usage replaces the
reservation; when it fails the reservation is released and the call still counts as made.

*Waiting.* The client gets a timeout no longer than the call's own limit (``lm_timeout``, for
the whole call, retries included) or the run's wall time left, but a client may retry past
it, and a server that trickles bytes defeats a read timeout. So the call runs as a task of
its own (a client with ``acompletion`` on the loop, any other in a thread of
:func:`~rlm_sandbox.blocking.blocking_call`) and the caller stops waiting at that limit (plus
:data:`ABANDON_SLACK_S` for the client's own error to arrive), or when its run is cancelled:
the call is *abandoned*. Its task ends when its client gives up (bounded by the client's
timeout and retries; a process holds at most :data:`MAX_ABANDONED` of them, then refuses new
calls), and whatever usage it reports then is still recorded (the tenant's ledger sees it);
until then its worst case stays reserved.

*The first call.* A run says how soon it could call the model: ``lm_ready`` when its first
prompt was built and the call was made, ``lm_sent`` when that request actually went out
(later only when its client had to get ready first: LiteLLM's import). Both land in
``RLMResult.timings`` as ``lm_ready_s`` and ``first_request_s`` (seconds since the run started).

*The response cache.* With ``--lm-cache`` (:mod:`rlm_sandbox.rlm.lm_cache`) every request is
looked up by model and request digest before anything else: a hit is answered from disk
before the budget or the client is touched (nothing reserved, no call counted, no cost),
traced as ``lm_cache_hit``; a miss is stored once its answer arrives.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from rlm_sandbox.blocking import blocking_call
from rlm_sandbox.errors import BudgetExhausted, LMError
from rlm_sandbox.rlm.budget import FALLBACK_GRACE_S, Budget
from rlm_sandbox.rlm.digest import request_digest
from rlm_sandbox.rlm.fallback import FALLBACK_MAX_TOKENS, FALLBACK_TIMEOUT_S
from rlm_sandbox.rlm.lm_cache import LMCache
from rlm_sandbox.rlm.models import ModelRouter
from rlm_sandbox.rlm.prices import Price, price_of
from rlm_sandbox.rlm.worst_case import Reservation, Worst, prompt_token_bound
from rlm_sandbox.trace.writer import Tracer

Messages = list[dict[str, str]]
#: Bytes of a response kept whole in the trace: enough for `replay` to answer the same request.
RESPONSE_IN_TRACE = 65536
#: How long past a call's limit the caller waits for the client's own timeout error.
ABANDON_SLACK_S = 2.0
#: Abandoned calls still running in this process, at most; past it new calls are refused.
MAX_ABANDONED = 64

_abandoned_lock = threading.Lock()
_abandoned = 0


def abandoned_calls() -> int:
    """Calls this process stopped waiting for whose thread still runs."""
    with _abandoned_lock:
        return _abandoned


def _count_abandoned(delta: int) -> None:
    global _abandoned
    with _abandoned_lock:
        _abandoned += delta


class _Flight:
    """One call in flight as a task; the caller either gets its outcome or abandons it."""

    def __init__(self) -> None:
        self.sent_at: float | None = None  # when the request went out (after the client prepared)
        self.task: asyncio.Future[Any] | None = None

    async def wait(self, limit: float, end: float | None, slack: float) -> bool:
        """Wait for the outcome: ``limit`` seconds from when the request went out, never
        past ``end``, each plus ``slack``. False when that passed without one."""
        task = self.task
        assert task is not None
        while True:
            now = time.monotonic()
            until = None if end is None else end + slack
            if self.sent_at is not None:
                own = self.sent_at + limit + slack
                until = own if until is None else min(until, own)
            if until is not None and now >= until:
                return task.done()
            step = None if until is None else until - now
            if self.sent_at is None:  # the client is still preparing: look again once it sent
                step = 0.1 if step is None else min(step, 0.1)
            done, _ = await asyncio.wait({task}, timeout=step)
            if done:
                return True

    def abandon(self, settle_late: Callable[[asyncio.Future[Any]], None]) -> bool:
        """Stop waiting; False when the call finished just now (then its outcome stands).
        ``settle_late`` gets the task when it ends."""
        task = self.task
        assert task is not None
        if task.done():
            return False
        _count_abandoned(+1)

        def ended(t: asyncio.Future[Any]) -> None:
            try:
                settle_late(t)
            finally:
                _count_abandoned(-1)

        task.add_done_callback(ended)
        return True


class ModelCalls:
    def __init__(
        self,
        models: ModelRouter,
        budget: Budget,
        tracer: Tracer,
        *,
        lm_timeout: float,
        max_tokens: int,
        on_fatal: Callable[[BaseException], None],
        cache: LMCache | None = None,
    ) -> None:
        self.models = models
        self.cache = cache
        self.cache_hits = 0
        self._hits_lock = threading.Lock()
        self.budget = budget
        self.tracer = tracer
        self.lm_timeout = lm_timeout
        self.max_tokens = max_tokens
        self._on_fatal = on_fatal
        self.first_call_s: float | None = None
        self.ready_s: float | None = None  # the first call was made (its prompt built)
        self.first_request_s: float | None = None  # ... and its request went out
        self._first_lock = threading.Lock()
        self._prices: dict[str, Price | None] = {}
        self._ids = itertools.count(1)

    # ---- worst cases

    def _price(self, model: str) -> Price | None:
        """The model's price as the cost of its calls will be computed: LiteLLM's live map
        when LiteLLM is imported (it holds the models a program registered), else its
        bundled map read as data."""
        if model not in self._prices:
            litellm = sys.modules.get("litellm")
            live = getattr(litellm, "model_cost", None) if litellm is not None else None
            price = price_of(model, live) if isinstance(live, dict) else None
            self._prices[model] = price if price is not None else price_of(model)
        return self._prices[model]

    def completion_limit(self, client: Any, *, fallback: bool = False) -> int:
        """The ``max_tokens`` a call to ``client`` is sent with: the setting (for the
        fallback at most ``FALLBACK_MAX_TOKENS``), at most the model's own output limit
        when LiteLLM knows it."""
        limit = min(self.max_tokens, FALLBACK_MAX_TOKENS) if fallback else self.max_tokens
        price = self._price(client.model)
        if price is not None and price.max_output_tokens:
            return min(limit, price.max_output_tokens)
        return limit

    def worst(self, client: Any, messages: Messages, *, fallback: bool = False) -> Worst:
        """What a call of ``messages`` to ``client`` may use at most."""
        prompt = prompt_token_bound(messages)
        completion = self.completion_limit(client, fallback=fallback)
        price = self._price(client.model)
        cost = price.worst_cost(prompt, completion) if price is not None else 0.0
        return Worst(prompt, completion, cost)

    # ---- calls

    async def call(self, client: Any, messages: Messages, node: str, depth: int, purpose: str) -> str:
        """A call the budget admits (its worst case reserved first), waited for no longer
        than its own limit or the run's wall time left."""
        cached = self._from_cache(client, messages, node, depth, purpose)
        if cached is not None:
            return cached
        res = await self.budget.areserve(self.worst(client, messages))
        end = self.budget.deadline()
        return await self._send(client, messages, node, depth, purpose, res, self.lm_timeout, end, fatal=True)

    def hold_fallback(self, client: Any, messages: Messages, fallback_prompt: Messages) -> None:
        """Keep back room for the fallback answer of a root whose history is ``messages``."""
        self.budget.hold_for_fallback(self.worst(client, [*messages, *fallback_prompt], fallback=True))

    async def fallback(self, client: Any, request: Messages, node: str, depth: int) -> str:
        """The root's one call after a stop: it may spend the hold, never a cap. Its history
        is cut (oldest steps first) to fit what is left; it waits at most
        ``FALLBACK_TIMEOUT_S``, and never past the wall budget plus ``FALLBACK_GRACE_S``.
        Raises :class:`BudgetExhausted` (nothing fits) or :class:`LMError`; neither is fatal
        to the run, whose outcome is the stop that came first."""
        cached = self._from_cache(client, request, node, depth, "fallback")
        if cached is not None:
            return cached
        request = self._fit(client, request)
        deadline = self.budget.deadline()
        end = None if deadline is None else deadline + FALLBACK_GRACE_S - ABANDON_SLACK_S
        if end is not None and end - time.monotonic() < 1.0:
            raise BudgetExhausted("timeout", "no time is left for a fallback answer")
        limit = min(FALLBACK_TIMEOUT_S, self.lm_timeout)
        # Calls still in flight may be holding room it needs: it may wait for them a while.
        wait_until = time.monotonic() + limit if end is None else min(end, time.monotonic() + limit)
        res = await self.budget.areserve(
            self.worst(client, request, fallback=True), fallback=True, wait_until=wait_until
        )
        return await self._send(client, request, node, depth, "fallback", res, limit, end, fatal=False)

    def _fit(self, client: Any, request: Messages) -> Messages:
        """``request`` without its oldest steps (assistant + feedback pairs after the system
        prompt and the task) until its worst case fits in what the budget has left."""
        tokens_left, cost_left = self.budget.room()
        candidate = list(request)
        while True:
            worst = self.worst(client, candidate, fallback=True)
            fits = (tokens_left is None or worst.tokens <= tokens_left) and (
                cost_left is None or worst.cost_usd <= cost_left + 1e-12
            )
            if fits:
                return candidate
            if len(candidate) <= 3:  # the system prompt, the task and the request to answer
                room = [f"{tokens_left:,} tokens"] if tokens_left is not None else []
                room += [f"${cost_left:.4f}"] if cost_left is not None else []
                raise BudgetExhausted(
                    "fallback",
                    f"the fallback answer could use {worst.tokens:,} tokens / ${worst.cost_usd:.4f}; "
                    f"only {' and '.join(room)} are left",
                )
            del candidate[2 : min(4, len(candidate) - 1)]

    async def _send(
        self,
        client: Any,
        messages: Messages,
        node: str,
        depth: int,
        purpose: str,
        res: Reservation,
        limit: float,
        end: float | None,
        *,
        fatal: bool,
    ) -> str:
        """One reserved call, counted (per model too) and traced. It is waited for at most
        ``limit`` seconds from when its request goes out (what a client prepares first, such
        as LiteLLM's import, does not count) and never past ``end`` (``time.monotonic()``,
        the run's deadline), each plus ``ABANDON_SLACK_S``; then it is abandoned. A caller
        cancelled meanwhile (its run was) abandons it at once."""
        self._refuse_when_overloaded(client, res)
        call = _Call(client, node, depth, next(self._ids), res, time.perf_counter())
        first = self._ready(node, depth, client.model, call.id)
        timeout = limit if end is None else max(1.0, min(limit, end - time.monotonic()))
        self.tracer.emit(
            "lm_start",
            node=node,
            depth=depth,
            purpose=purpose,
            model=client.model,
            call=call.id,
            timeout_s=round(timeout, 3),
            reserved_tokens=res.worst.tokens,
            reserved_cost_usd=round(res.worst.cost_usd, 6),
        )
        self.models.started()
        flight = _Flight()
        # A copy: the caller may go on with its own list once it stops waiting.
        flight.task = asyncio.ensure_future(self._complete(call, list(messages), flight, first, limit, end))
        try:
            finished = await flight.wait(limit, end, ABANDON_SLACK_S)
        except BaseException:  # the run was cancelled (or the process interrupted) meanwhile
            if flight.abandon(lambda t: self._settle_late(call, t)):
                self.budget.count_call(res)
                self.tracer.emit("lm_abandoned", node=node, depth=depth, model=client.model, call=call.id,
                                 waited_s=round(time.perf_counter() - call.t0, 3))  # fmt: skip
            self.models.finished(None)
            raise
        if not finished and flight.abandon(lambda t: self._settle_late(call, t)):
            self.models.finished(None)
            self.budget.count_call(res)
            self._abandoned(call, time.perf_counter() - call.t0, fatal)
        task = flight.task
        exc = task.exception()
        if exc is not None:
            self.models.finished(None)
            self.budget.release(res, sent=isinstance(exc, LMError))
            self._failed(call, exc, fatal)
        return self._answered(call, purpose, messages, task.result())

    def _refuse_when_overloaded(self, client: Any, res: Reservation) -> None:
        if abandoned_calls() >= MAX_ABANDONED:
            self.budget.release(res, sent=False)
            raise LMError(
                f"{MAX_ABANDONED} model calls this process stopped waiting for are still running: "
                "a model server accepts requests and does not answer",
                hint="check the model server (--api-base) or the provider's status; restart the process",
                kind="timeout",
                model=client.model,
            )

    async def _complete(
        self, call: _Call, sent: Messages, flight: _Flight, first: bool, limit: float, end: float | None
    ) -> Any:
        """The call itself: a client with ``acompletion`` is awaited on the loop; any other
        (LiteLLM, a user's synchronous client) runs in a thread, its ``prepare`` too."""
        client = call.client
        max_tokens = call.res.worst.completion_tokens

        def went_out() -> float:
            flight.sent_at = now = time.monotonic()
            if first:
                self.first_request_s = now - self.budget.started
                self.tracer.emit(
                    "lm_sent", node=call.node, depth=call.depth, model=client.model, call=call.id
                )
            return limit if end is None else max(1.0, min(limit, end - now))

        acompletion = getattr(client, "acompletion", None)
        if acompletion is not None and inspect.iscoroutinefunction(acompletion):
            return await acompletion(sent, timeout_s=went_out(), max_tokens=max_tokens)

        def in_thread() -> Any:
            prepare = getattr(client, "prepare", None)
            if callable(prepare):
                prepare()  # e.g. LiteLLM's import: seconds, not the model's time
            return client.completion(sent, timeout_s=went_out(), max_tokens=max_tokens)

        return await blocking_call(in_thread)

    def _failed(self, call: _Call, exc: BaseException, fatal: bool) -> NoReturn:
        """The call raised: a wall-time cut is the run's timeout; a model error is traced
        (and, for a node's own calls, stops the run)."""
        if isinstance(exc, LMError):
            left = self.budget.wall_left()
            if exc.kind == "timeout" and left is not None and left <= 0.5:
                # The call was cut by the run's wall budget, not by the model: say so. (The
                # client stops at its deadline, so the clock may have a moment left.)
                self.tracer.emit("lm_cut", node=call.node, depth=call.depth, model=call.client.model,
                                 reason="timeout")  # fmt: skip
                raise self.budget.out_of_time() from exc
            self.tracer.emit(
                "lm_error",
                node=call.node,
                depth=call.depth,
                model=call.client.model,
                call=call.id,
                error=str(exc),
            )
            if fatal:
                self._on_fatal(exc)
        raise exc

    def _answered(self, call: _Call, purpose: str, messages: Messages, resp: Any) -> str:
        """The call's answer: its usage committed, traced whole, cached."""
        model, node, depth = call.client.model, call.node, call.depth
        self.models.finished(model, resp.prompt_tokens, resp.completion_tokens, resp.cost_usd)
        over = self.budget.commit(call.res, resp.prompt_tokens, resp.completion_tokens, resp.cost_usd)
        if over:
            self.tracer.emit("lm_overrun", node=node, depth=depth, model=model, call=call.id, over=over)
        if self.first_call_s is None:
            self.first_call_s = time.monotonic() - self.budget.started
        self.tracer.emit(
            "lm_call",
            node=node,
            depth=depth,
            purpose=purpose,
            model=model,  # the name the user configured: per-model accounting uses it
            served_model=resp.model or None,
            call=call.id,
            prompt_tokens=resp.prompt_tokens,
            completion_tokens=resp.completion_tokens,
            cost_usd=resp.cost_usd,
            latency_s=round(time.perf_counter() - call.t0, 4),
            # Whole (up to 64 KB) and keyed by the request, so `replay` can answer the same
            # request with the same text without a model.
            response=resp.text[:RESPONSE_IN_TRACE],
            request_sha256=request_digest(messages),
        )
        if self.cache is not None:
            self.cache.put(
                model,
                request_digest(messages),
                resp.text,
                resp.prompt_tokens,
                resp.completion_tokens,
                resp.model or None,
            )
        return resp.text

    def _ready(self, node: str, depth: int, model: str, call_id: int) -> bool:
        """True for the run's first call, after saying ``lm_ready`` for it."""
        with self._first_lock:
            if self.ready_s is not None:
                return False
            self.ready_s = time.monotonic() - self.budget.started
        self.tracer.emit("lm_ready", node=node, depth=depth, model=model, call=call_id)
        return True

    def _from_cache(self, client: Any, messages: Messages, node: str, depth: int, purpose: str) -> str | None:
        """The cached answer to this request, traced as a hit; None when there is none."""
        if self.cache is None:
            return None
        digest = request_digest(messages)
        hit = self.cache.get(client.model, digest)
        if hit is None:
            return None
        with self._hits_lock:
            self.cache_hits += 1
        self.tracer.emit(
            "lm_cache_hit",
            node=node,
            depth=depth,
            purpose=purpose,
            model=client.model,
            response=hit.text[:RESPONSE_IN_TRACE],
            request_sha256=digest,
        )
        return hit.text

    def _abandoned(self, call: _Call, waited: float, fatal: bool) -> NoReturn:
        """The caller stopped waiting: a budget stop when the wall time is up, else a timeout."""
        client, node, depth, call_id, res = call.client, call.node, call.depth, call.id, call.res
        self.tracer.emit(
            "lm_abandoned",
            node=node,
            depth=depth,
            model=client.model,
            call=call_id,
            waited_s=round(waited, 3),
            reserved_tokens=res.worst.tokens,
            reserved_cost_usd=round(res.worst.cost_usd, 6),
        )
        left = self.budget.wall_left()
        if left is not None and left <= 0:
            self.tracer.emit("lm_cut", node=node, depth=depth, model=client.model, reason="timeout")
            self.budget.check()
        exc = LMError(
            f"model {client.model!r} did not answer within {waited:.0f} s; the call was abandoned "
            "(its client kept waiting past the call's limit)",
            hint="raise --lm-timeout, or check the model server (a server that accepts and never answers)",
            kind="timeout",
            model=client.model,
        )
        self.tracer.emit("lm_error", node=node, depth=depth, model=client.model, call=call_id, error=str(exc))
        if fatal:
            self._on_fatal(exc)
        raise exc

    def _settle_late(self, call: _Call, task: asyncio.Future[Any]) -> None:
        """An abandoned call's task ended: its real usage replaces its reservation (the
        budget and the tenant's ledger see it; the run's result may already be out)."""
        resp = None if task.cancelled() or task.exception() is not None else task.result()
        if resp is None:
            self.budget.release(call.res)
            return
        self.budget.commit(call.res, resp.prompt_tokens, resp.completion_tokens, resp.cost_usd)
        self.tracer.emit(
            "lm_late",
            node=call.node,
            depth=call.depth,
            model=call.client.model,
            call=call.id,
            prompt_tokens=resp.prompt_tokens,
            completion_tokens=resp.completion_tokens,
            cost_usd=resp.cost_usd,
        )


@dataclass(frozen=True)
class _Call:
    """Who made one call and what it reserved: what its outcome is recorded against."""

    client: Any
    node: str
    depth: int
    id: int
    res: Reservation
    t0: float
