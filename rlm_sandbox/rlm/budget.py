"""Budgets shared by the whole recursion tree, thread-safe, with one typed way to run out.

Every node, at every depth, draws on the same counters: LM calls, tokens, cost, wall time,
nodes and containers alive at once. The first budget to run out is recorded, the run is
cancelled (every node stops at its next check) and the outcome is ``budget_exhausted``
naming that budget -- never a hang, never a traceback.

Containers alive at once are admitted so that recursion cannot deadlock: a node at depth
``d`` may take a slot only if enough slots stay free for one chain of descendants below it
(``free > depth_limit - 1 - d``). Leaves never wait on anything once admitted, so they always
finish and free their slots, and every level above them follows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rlm_sandbox.errors import BudgetExhausted, ConfigError
from rlm_sandbox.rlm.tenants import TenantAccount

FLAGS = {
    "max_steps": "--max-steps",
    "max_lm_calls": "--max-lm-calls",
    "max_tokens": "--max-tokens",
    "max_cost": "--max-cost",
    "timeout": "--timeout",
    "max_containers": "--max-containers",
    "max_nodes": "--max-nodes",
    "max_tool_calls": "max_tool_calls (RLMConfig)",
    "tenant_max_cost": "the tenant's max_cost setting",
    "tenant_max_containers": "the tenant's max_containers setting",
}


@dataclass(frozen=True, slots=True)
class Limits:
    depth: int = 1
    max_lm_calls: int | None = 500
    max_tokens: int | None = None
    max_cost: float | None = None
    timeout_s: float | None = 1800.0
    max_containers: int = 16
    max_nodes: int | None = 1000
    max_tool_calls: int | None = 1000

    def check(self) -> None:
        if self.max_containers < self.depth:
            raise ConfigError(
                f"max_containers ({self.max_containers}) must be at least depth ({self.depth}): "
                "every level of the recursion needs a container of its own",
                hint="raise --max-containers or lower --depth",
            )


_TENANT_LOCK = threading.Lock()


class Budget:
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
        self.lm_calls = 0
        self.tool_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.nodes = 0
        self.containers_started = 0
        self.containers_alive = 0
        self.max_depth_reached = 0
        self.steps = 0
        self.exhausted: BudgetExhausted | None = None
        self.cancel_reason: BaseException | None = None
        self.cancelled = threading.Event()

    # ---- stopping

    def _exhaust(self, budget: str, message: str) -> BudgetExhausted:
        exc = BudgetExhausted(budget, message, hint=f"raise {FLAGS.get(budget, budget)}")
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
            raise self._exhaust(
                "timeout", f"the run's wall-time budget of {self.limits.timeout_s:g} s ran out"
            )

    def wall_left(self) -> float | None:
        if self.limits.timeout_s is None:
            return None
        return self.limits.timeout_s - (time.monotonic() - self.started)

    # ---- LM calls

    def reserve_lm_call(self) -> None:
        self.check()
        with self._lock:
            limit = self.limits.max_lm_calls
            if limit is not None and self.lm_calls >= limit:
                over = True
            else:
                self.lm_calls += 1
                over = False
        if over:
            raise self._exhaust("max_lm_calls", f"the run made its limit of {limit} LM calls")
        self._check_totals()

    def reserve_tool_call(self) -> None:
        self.check()
        with self._lock:
            limit = self.limits.max_tool_calls
            over = limit is not None and self.tool_calls >= limit
            if not over:
                self.tool_calls += 1
        if over:
            raise self._exhaust("max_tool_calls", f"the run made its limit of {limit} tool calls")

    def count_unchecked_call(self) -> None:
        """A call made past the limits on purpose (the fallback answer): counted, not refused."""
        with self._lock:
            self.lm_calls += 1

    def record_usage(self, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        with self._lock:
            self.prompt_tokens += max(0, prompt_tokens)
            self.completion_tokens += max(0, completion_tokens)
            self.cost_usd += max(0.0, cost_usd)
            if self.tenant is not None:
                self.tenant.cost_usd += max(0.0, cost_usd)
        self._check_totals(raise_now=False)

    def _check_totals(self, raise_now: bool = True) -> None:
        lim = self.limits
        exc = None
        with self._lock:
            tokens = self.prompt_tokens + self.completion_tokens
            cost = self.cost_usd
        tenant = self.tenant
        if (
            tenant is not None
            and tenant.limits.max_cost is not None
            and tenant.cost_usd >= tenant.limits.max_cost
        ):
            exc = self._exhaust(
                "tenant_max_cost",
                f"tenant {tenant.name!r} has spent ${tenant.cost_usd:.4f}; its limit is ${tenant.limits.max_cost:g}",
            )
        elif lim.max_tokens is not None and tokens >= lim.max_tokens:
            exc = self._exhaust("max_tokens", f"the run used {tokens} tokens; the limit is {lim.max_tokens}")
        elif lim.max_cost is not None and cost >= lim.max_cost:
            exc = self._exhaust("max_cost", f"the run cost ${cost:.4f}; the limit is ${lim.max_cost:g}")
        if exc is not None and raise_now:
            raise exc

    def add_step(self) -> None:
        with self._lock:
            self.steps += 1

    # ---- nodes and containers

    def admit_node(self, depth: int) -> None:
        """Count a new RLM node and take a container slot for it (waiting if needed)."""
        self.check()
        with self._lock:
            lim = self.limits
            if lim.max_nodes is not None and self.nodes >= lim.max_nodes:
                over = True
            else:
                over = False
                self.nodes += 1
                self.max_depth_reached = max(self.max_depth_reached, depth + 1)
        if over:
            raise self._exhaust("max_nodes", f"the run created its limit of {lim.max_nodes} RLM nodes")
        reserve = max(0, lim.depth - 1 - depth)
        with self._lock:
            while True:
                if self.cancelled.is_set():
                    break
                free = lim.max_containers - self.containers_alive
                if free > reserve and self._tenant_admits(reserve):
                    self.containers_alive += 1
                    self.containers_started += 1
                    return
                left = self.wall_left()
                # Another run of the tenant frees its slots without notifying us: poll briskly then.
                poll = 0.1 if self.tenant is not None and self.tenant.limits.max_containers else 0.5
                self._lock.wait(poll if left is None else max(0.01, min(poll, left)))
                if left is not None and left <= 0:
                    break
        self.check()
        raise self._exhaust("timeout", "the wall-time budget ran out while waiting for a container slot")

    def _tenant_admits(self, reserve: int) -> bool:
        """Called with the lock held: take a tenant slot too, under the same reserve rule."""
        tenant = self.tenant
        if tenant is None:
            return True
        with _TENANT_LOCK:
            cap = tenant.limits.max_containers
            if cap is not None and cap - tenant.containers_alive <= reserve:
                return False
            tenant.containers_alive += 1
            self._tenant_slots += 1
            return True

    def release_container(self) -> None:
        with self._lock:
            self.containers_alive = max(0, self.containers_alive - 1)
            if self.tenant is not None and self._tenant_slots > 0:
                with _TENANT_LOCK:
                    self.tenant.containers_alive = max(0, self.tenant.containers_alive - 1)
                    self._tenant_slots -= 1
            self._lock.notify_all()

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
