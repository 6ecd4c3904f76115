"""Budgets shared by the whole recursion tree, thread-safe, hard caps, one typed way to run out.

Every node, at every depth, draws on the same counters: LM calls, tokens, cost, wall time,
nodes and containers alive at once. The first budget to run out is recorded, the run is
cancelled (every node stops at its next check) and the outcome is ``budget_exhausted``
naming that budget -- never a hang, never a traceback.

**Model calls are reserved before they are sent.** Counting a call's usage when it returns
lets every call in flight pass the cap at once (a 16-way fan-out of 500 KB prompts spent 4x
``--max-cost``). So a call first reserves its worst case -- one call, its prompt's tokens
counted by :func:`rlm_sandbox.rlm.worst_case.prompt_token_bound`, its completion bounded by the ``max_tokens`` it is
sent with, and the cost of both at the model's highest rate (:mod:`rlm_sandbox.rlm.prices`)
-- against what is used *and* what is reserved by every other call in flight, in this run and
(for cost) in every run of its tenant. A call that would fit once the calls in flight have
settled waits for them (they give most of their reservation back); a call that cannot fit
is not sent: the run ends ``budget_exhausted`` naming the budget. When the call returns, the reservation becomes the
real usage the provider reported, and the unused part is free again. So the real spend never
passes a cap, as long as the provider counts no more than the bound below and honours
``max_tokens`` (a provider that does not is recorded honestly, and the run stops at once).

**The fallback answer** (:mod:`rlm_sandbox.rlm.fallback`) is one call after a stop. The cap
wins: the fallback is sent only when its worst case fits in what is left. To make that
likely, the root keeps a *hold* for it -- one call and the worst case of its current history
plus a short reply -- which other calls may not use; the hold is set after each of the root's
steps, only out of room that is free then (it never stops the work by itself), and the
fallback spends it (its history is cut from the oldest steps when it would not fit).

**Wall time.** A model call waits at most until the run's deadline (``--timeout``), whatever
its client does (see :mod:`rlm_sandbox.rlm.calls`); the fallback may take
:data:`FALLBACK_GRACE_S` more, and stopping (containers removed, children unwinding, calls in
flight drained) :data:`STOP_GRACE_S` more: a run ends by ``--timeout`` +
:data:`TIMEOUT_GRACE_S`.

Containers alive at once are admitted so that recursion cannot deadlock: a node at depth
``d`` may take a slot only if enough slots stay free for one chain of descendants below it
(``free > depth_limit - 1 - d``). Leaves never wait on anything once admitted, so they always
finish and free their slots, and every level above them follows (:mod:`rlm_sandbox.rlm.slots`).
"""

from __future__ import annotations

import asyncio
import threading
import time

from rlm_sandbox.errors import BudgetExhausted, ConfigError
from rlm_sandbox.rlm.limits import COMPLETION_HINT, FLAGS, Limits
from rlm_sandbox.rlm.slots import ContainerSlots
from rlm_sandbox.rlm.tenants import TENANT_LOCK, TenantAccount
from rlm_sandbox.rlm.worst_case import NO_HOLD, Hold, Reservation, Worst

#: How long past the run's wall-time budget the fallback answer may take.
FALLBACK_GRACE_S = 10.0
#: How long past that the stop may take: containers removed, children and calls waited for.
STOP_GRACE_S = 10.0
#: A run ends by its ``--timeout`` plus this, whatever the model or the engine does.
TIMEOUT_GRACE_S = FALLBACK_GRACE_S + STOP_GRACE_S

_EPS = 1e-12  # float sums of costs: a cap reached exactly is not passed


class Budget(ContainerSlots):
    def __init__(self, limits: Limits, tenant: TenantAccount | None = None) -> None:
        limits.check()
        if (
            tenant is not None
            and tenant.limits.max_containers is not None
            and tenant.limits.max_containers < limits.depth
        ):
            raise ConfigError(
                f"tenant {tenant.name!r} may have {tenant.limits.max_containers} containers at once, "
                f"fewer than depth ({limits.depth})",
                hint="raise the tenant's max_containers or lower --depth",
            )
        self.limits = limits
        self.tenant = tenant
        self._tenant_slots = 0
        self.started = time.monotonic()
        self._lock = threading.Condition()
        self.lm_calls = 0  # calls made (sent), failed ones included
        self.tool_calls = 0
        self.prompt_tokens = 0  # as the providers reported them
        self.completion_tokens = 0
        self.cost_usd = 0.0
        # Reserved by calls in flight (and by abandoned calls until their thread ends).
        self.reserved_calls = 0
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self._open_usage = 0
        self._abandoned_open = 0  # of those, calls abandoned at a deadline (not worth waiting for)
        self.hold = NO_HOLD
        self.nodes = 0
        self.containers_started = 0
        self.containers_alive = 0
        self.max_depth_reached = 0
        self.steps = 0
        self.exhausted: BudgetExhausted | None = None
        self.cancel_reason: BaseException | None = None
        self.cancelled = threading.Event()
        # Set only when the run's caller cancelled it (not by a budget running out): calls
        # in flight are then abandoned at once, the fallback answer too.
        self.cancelled_by_caller = threading.Event()

    # ---- stopping

    def _exhaust(self, budget: str, message: str, hint: str | None = None) -> BudgetExhausted:
        exc = BudgetExhausted(budget, message, hint=hint or f"raise {FLAGS.get(budget, budget)}")
        with self._lock:
            if self.exhausted is None:
                self.exhausted = exc
            if self.cancel_reason is None:
                self.cancel_reason = exc
            self._lock.notify_all()
        self.cancelled.set()
        return self.exhausted or exc

    def cancel(self, reason: BaseException) -> None:
        with self._lock:
            if self.cancel_reason is None:
                self.cancel_reason = reason
            self._lock.notify_all()
        self.cancelled.set()

    def check(self) -> None:
        """Raise if the run must stop: a budget ran out, the wall clock is up, or it was cancelled."""
        if self.cancelled.is_set():
            reason = self.cancel_reason
            if isinstance(reason, BudgetExhausted):
                raise reason
            raise BudgetExhausted("cancelled", f"the run was stopped: {reason}")
        left = self.wall_left()
        if left is not None and left <= 0:
            raise self.out_of_time()

    def out_of_time(self) -> BudgetExhausted:
        """The run's wall-time stop (recorded, the run cancelled), for the caller to raise: a
        model call whose deadline was the run's may end a moment before the clock does."""
        return self._exhaust("timeout", f"the run's wall-time budget of {self.limits.timeout_s:g} s ran out")

    def wall_left(self) -> float | None:
        if self.limits.timeout_s is None:
            return None
        return self.limits.timeout_s - (time.monotonic() - self.started)

    def deadline(self) -> float | None:
        """When the wall-time budget runs out (``time.monotonic()``), or None."""
        if self.limits.timeout_s is None:
            return None
        return self.started + self.limits.timeout_s

    def stop_deadline(self) -> float | None:
        """The latest a run may end: its wall-time budget plus :data:`TIMEOUT_GRACE_S`."""
        deadline = self.deadline()
        return None if deadline is None else deadline + TIMEOUT_GRACE_S

    # ---- model calls: reserve, then commit (or release)

    def reserve(
        self, worst: Worst, *, fallback: bool = False, wait_until: float | None = None
    ) -> Reservation:
        """Reserve one call's worst case, or refuse it: a refused call is never sent.

        A call that does not fit only because of what calls in flight have reserved waits
        for them to settle (they give back most of it): refusing it would end the run while
        the budget still has room, and a fan-out of big prompts would stop at its first
        few. It waits until it fits, the calls in flight can no longer make room, the run
        is stopped, or its wall time (``wait_until`` for the fallback) is up.

        An ordinary call must leave the fallback's hold untouched and stops the run when it
        does not fit; the fallback (``fallback=True``) may spend the hold, is allowed after
        the stop, and a refusal only skips it."""
        if not fallback:
            self.check()
            wait_until = self.deadline()
        with self._lock:
            while True:
                res, refusal, poll = self._try_reserve(worst, fallback, wait_until)
                if res is not None:
                    return res
                if poll is None:
                    break
                self._lock.wait(poll)
        raise self._refused(refusal, fallback)

    async def areserve(
        self, worst: Worst, *, fallback: bool = False, wait_until: float | None = None
    ) -> Reservation:
        """:meth:`reserve` for the asyncio engine: it waits by sleeping, not in a thread."""
        if not fallback:
            self.check()
            wait_until = self.deadline()
        while True:
            with self._lock:
                res, refusal, poll = self._try_reserve(worst, fallback, wait_until)
            if res is not None:
                return res
            if poll is None:
                break
            await asyncio.sleep(min(poll, 0.05))
        raise self._refused(refusal, fallback)

    def _try_reserve(
        self, worst: Worst, fallback: bool, wait_until: float | None
    ) -> tuple[Reservation | None, tuple[str, str, str | None], float | None]:
        """Called with the lock held: the reservation, or why not and how long to wait
        before trying again (None: waiting cannot help)."""
        hold = NO_HOLD if fallback else self.hold
        refusal = self._refusal(worst, hold) or self._reserve_tenant(worst.cost_usd)
        if refusal is None:
            self.reserved_calls += 1
            self.reserved_tokens += worst.tokens
            self.reserved_cost += worst.cost_usd
            self._open_usage += 1
            if fallback:
                self.hold = NO_HOLD
            return Reservation(worst), ("", "", None), None
        if not self._may_fit_later(worst, hold, refusal[0]):
            return None, refusal, None
        if not fallback and self.cancelled.is_set():
            return None, refusal, None
        left = None if wait_until is None else wait_until - time.monotonic()
        if left is not None and left <= 0:
            return None, refusal, None
        # Calls of this run notify; another run of the tenant does not: poll briskly.
        poll = 0.1 if refusal[0] == "tenant_max_cost" else 0.5
        return None, refusal, poll if left is None else min(poll, left)

    def _refused(self, refusal: tuple[str, str, str | None], fallback: bool) -> BudgetExhausted:
        if not fallback:
            self.check()  # stopped (or out of time) while waiting: that is the outcome
        budget, message, hint = refusal
        if fallback:
            return BudgetExhausted(budget, message, hint=hint)
        return self._exhaust(budget, message, hint)

    def _may_fit_later(self, worst: Worst, hold: Hold, budget: str) -> bool:
        """Called with the lock held: would the call fit once the live calls in flight
        settle (at no cost at all)? Only then is waiting for them worth it. Calls abandoned
        at a deadline are not waited for: their thread may take long to end."""
        lim, tenant = self.limits, self.tenant
        live = self._open_usage - self._abandoned_open
        if budget == "max_tokens" and lim.max_tokens is not None:
            used = self.prompt_tokens + self.completion_tokens
            return live > 0 and used + hold.tokens + worst.tokens <= lim.max_tokens
        if budget == "max_cost" and lim.max_cost is not None:
            return live > 0 and self.cost_usd + hold.cost_usd + worst.cost_usd <= lim.max_cost + _EPS
        if budget == "tenant_max_cost" and tenant is not None and tenant.limits.max_cost is not None:
            with TENANT_LOCK:
                live = tenant.in_flight - tenant.abandoned
                return live > 0 and tenant.cost_usd + worst.cost_usd <= tenant.limits.max_cost + _EPS
        return False  # a call slot in flight always counts: waiting cannot free one

    def _refusal(self, worst: Worst, hold: Hold) -> tuple[str, str, str] | None:
        """Called with the lock held: which budget the call would pass, and how, or None."""
        lim = self.limits
        if lim.max_lm_calls is not None and (
            self.lm_calls + self.reserved_calls + 1 + hold.calls > lim.max_lm_calls
        ):
            kept = " (one is kept for the fallback answer)" if hold.calls else ""
            return (
                "max_lm_calls",
                f"the run made (or has in flight) its limit of {lim.max_lm_calls} LM calls{kept}",
                "raise --max-lm-calls",
            )
        if lim.max_tokens is not None:
            used = self.prompt_tokens + self.completion_tokens
            left = lim.max_tokens - used - self.reserved_tokens - hold.tokens
            if worst.tokens > left:
                return (
                    "max_tokens",
                    f"the next model call could use up to {worst.tokens:,} tokens ({worst.prompt_tokens:,} "
                    f"of prompt, counted as its bytes, + {worst.completion_tokens:,} of completion); "
                    f"{max(0, left):,} of the limit of {lim.max_tokens:,} are left ({used:,} used, "
                    f"{self.reserved_tokens + hold.tokens:,} reserved)",
                    "raise --max-tokens" + COMPLETION_HINT,
                )
        if lim.max_cost is not None:
            left = lim.max_cost - self.cost_usd - self.reserved_cost - hold.cost_usd
            if worst.cost_usd > left + _EPS:
                return (
                    "max_cost",
                    f"the next model call could cost up to ${worst.cost_usd:.4f}; ${max(0.0, left):.4f} of "
                    f"the ${lim.max_cost:g} limit is left (${self.cost_usd:.4f} spent, "
                    f"${self.reserved_cost + hold.cost_usd:.4f} reserved)",
                    "raise --max-cost" + COMPLETION_HINT,
                )
        return None

    def _reserve_tenant(self, cost: float) -> tuple[str, str, str] | None:
        """Called with the lock held: reserve ``cost`` against the tenant's cap (all its runs)."""
        tenant = self.tenant
        if tenant is None:
            return None
        with TENANT_LOCK:
            cap = tenant.limits.max_cost
            if cap is not None and tenant.cost_usd + tenant.reserved_cost + cost > cap + _EPS:
                return (
                    "tenant_max_cost",
                    f"tenant {tenant.name!r} has spent ${tenant.cost_usd:.4f} (${tenant.reserved_cost:.4f} "
                    f"more reserved by calls in flight); the next model call could cost up to ${cost:.4f}, "
                    f"over its limit of ${cap:g}",
                    f"raise {FLAGS['tenant_max_cost']}",
                )
            tenant.reserved_cost += cost
            tenant.in_flight += 1
        return None

    def _free_usage(self, res: Reservation) -> None:
        """Called with the lock held: give back a reservation's tokens and cost."""
        if not res.usage_open:
            return
        res.usage_open = False
        self.reserved_tokens -= res.worst.tokens
        self.reserved_cost -= res.worst.cost_usd
        self._open_usage -= 1
        self._abandoned_open -= res.abandoned
        if self._open_usage <= 0:  # no float drift survives an idle moment
            self._open_usage, self._abandoned_open, self.reserved_tokens, self.reserved_cost = 0, 0, 0, 0.0
        if self.tenant is not None:
            with TENANT_LOCK:
                self.tenant.reserved_cost -= res.worst.cost_usd
                self.tenant.in_flight -= 1
                self.tenant.abandoned -= res.abandoned
                if self.tenant.in_flight <= 0:
                    self.tenant.in_flight, self.tenant.abandoned, self.tenant.reserved_cost = 0, 0, 0.0

    def _count_call(self, res: Reservation) -> None:
        if res.call_open:
            res.call_open = False
            self.reserved_calls -= 1
            self.lm_calls += 1

    def count_call(self, res: Reservation) -> None:
        """The call was sent and will not be waited for (abandoned at a deadline): it counts
        as a call now; its tokens and cost stay reserved until its thread ends, but no other
        call waits for that."""
        with self._lock:
            self._count_call(res)
            if res.usage_open and not res.abandoned:
                res.abandoned = True
                self._abandoned_open += 1
                if self.tenant is not None:
                    with TENANT_LOCK:
                        self.tenant.abandoned += 1

    def commit(
        self, res: Reservation, prompt_tokens: int, completion_tokens: int, cost_usd: float = 0.0
    ) -> str | None:
        """The call returned: its real usage replaces its reservation. Returns what it used
        beyond its worst case, if anything (a provider that ignored ``max_tokens``, a served
        model priced higher than the one asked for): recorded as it is, and a cap it passed
        stops the run at once."""
        prompt_tokens, completion_tokens = max(0, prompt_tokens), max(0, completion_tokens)
        cost_usd = max(0.0, cost_usd)
        with self._lock:
            self._count_call(res)
            self._free_usage(res)
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost_usd += cost_usd
            if self.tenant is not None:
                with TENANT_LOCK:
                    self.tenant.cost_usd += cost_usd
            self._lock.notify_all()  # calls waiting for room
        over = []
        if prompt_tokens + completion_tokens > res.worst.tokens:
            over.append(f"{prompt_tokens + completion_tokens} tokens for {res.worst.tokens} reserved")
        if cost_usd > res.worst.cost_usd + _EPS:
            over.append(f"${cost_usd:.6f} for ${res.worst.cost_usd:.6f} reserved")
        if over:
            self._check_totals()
        return "; ".join(over) or None

    def release(self, res: Reservation, *, sent: bool = True) -> None:
        """The call failed (or was never sent): its tokens and cost are free again. A call
        that was sent still counts as a call: the server saw it, and a budget that gave
        failed calls back would let a failing loop pass ``--max-lm-calls`` at the server."""
        with self._lock:
            if sent:
                self._count_call(res)
            elif res.call_open:
                res.call_open = False
                self.reserved_calls -= 1
            self._free_usage(res)
            self._lock.notify_all()

    def _check_totals(self) -> None:
        """After an overrun: a cap already passed stops the run (never raises here)."""
        lim, tenant = self.limits, self.tenant
        with self._lock:
            tokens = self.prompt_tokens + self.completion_tokens
            cost = self.cost_usd
        if (
            tenant is not None
            and tenant.limits.max_cost is not None
            and tenant.cost_usd > tenant.limits.max_cost
        ):
            self._exhaust(
                "tenant_max_cost",
                f"tenant {tenant.name!r} has spent ${tenant.cost_usd:.4f}; its limit is ${tenant.limits.max_cost:g}",
            )
        elif lim.max_tokens is not None and tokens > lim.max_tokens:
            self._exhaust("max_tokens", f"the run used {tokens} tokens; the limit is {lim.max_tokens}")
        elif lim.max_cost is not None and cost > lim.max_cost + _EPS:
            self._exhaust("max_cost", f"the run cost ${cost:.4f}; the limit is ${lim.max_cost:g}")

    # ---- the fallback's hold

    def hold_for_fallback(self, worst: Worst) -> Hold:
        """Keep back room for the root's fallback answer, out of what is free now (never
        more): one call, and ``worst``'s tokens and cost, each clamped to what is left."""
        lim = self.limits
        with self._lock:
            calls = 1
            if lim.max_lm_calls is not None:
                calls = min(1, max(0, lim.max_lm_calls - self.lm_calls - self.reserved_calls))
            tokens = worst.tokens
            if lim.max_tokens is not None:
                used = self.prompt_tokens + self.completion_tokens + self.reserved_tokens
                tokens = min(tokens, max(0, lim.max_tokens - used))
            cost = worst.cost_usd
            if lim.max_cost is not None:
                cost = min(cost, max(0.0, lim.max_cost - self.cost_usd - self.reserved_cost))
            self.hold = Hold(calls, tokens, cost)
            return self.hold

    def room(self) -> tuple[int | None, float | None]:
        """(tokens, USD) a call could reserve once the calls in flight have settled, the
        hold included; None = no limit."""
        lim, tenant = self.limits, self.tenant
        with self._lock:
            tokens = None
            if lim.max_tokens is not None:
                tokens = max(0, lim.max_tokens - self.prompt_tokens - self.completion_tokens)
            cost = None
            if lim.max_cost is not None:
                cost = max(0.0, lim.max_cost - self.cost_usd)
        if tenant is not None and tenant.limits.max_cost is not None:
            with TENANT_LOCK:
                left = max(0.0, tenant.limits.max_cost - tenant.cost_usd)
            cost = left if cost is None else min(cost, left)
        return tokens, cost

    # ---- other counters

    def reserve_tool_call(self) -> None:
        self.check()
        with self._lock:
            limit = self.limits.max_tool_calls
            over = limit is not None and self.tool_calls >= limit
            if not over:
                self.tool_calls += 1
        if over:
            raise self._exhaust("max_tool_calls", f"the run made its limit of {limit} tool calls")

    def add_step(self) -> None:
        with self._lock:
            self.steps += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "lm_calls": self.lm_calls,
                "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
                "cost_usd": round(self.cost_usd, 6),
                "nodes": self.nodes,
                "containers": self.containers_started,
                "containers_alive": self.containers_alive,
                "max_depth_reached": self.max_depth_reached,
                "steps": self.steps,
                "wall_s": round(time.monotonic() - self.started, 3),
            }
