"""Budgets shared by the whole tree (rlm/budget.py, rlm/tenants.py), through the seam and
directly. These pin what must hold whether a cap is checked after a call or reserved before
it: the run stops, the status is ``budget_exhausted`` naming the budget, every call made is
reported, and a counted cap (calls, nodes, containers, tool calls) is never exceeded."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rlm_sandbox.errors import BudgetExhausted, ConfigError
from rlm_sandbox.rlm.budget import Budget
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.limits import Limits
from rlm_sandbox.rlm.tenants import TenantLimits, ledger
from rlm_sandbox.testing import generate_log, rlm_policy

from ..helpers import cells_then_final, never_finishes, root_then_policy
from .seam import check_lifecycle

COUNT_TASK = 'How many lines contain "ERROR disk"?'
PRICED = "openai/gpt-4o"  # LiteLLM's price map knows it: every call costs money


def _stopped(result: Any, budget: str) -> None:
    assert (result.status, result.budget) == ("budget_exhausted", budget), result.error
    assert result.exit_code == 3


# ---- model calls, tokens, cost


def test_max_lm_calls_is_never_exceeded_across_the_tree(seam) -> None:
    stats = generate_log(None, 60_000, seed=11)
    h = seam(rlm_policy, depth=2, pool_size=0, max_lm_calls=4, fallback_answer=False)
    result = h.run(stats.text, COUNT_TASK)
    _stopped(result, "max_lm_calls")
    assert result.lm_calls <= 4
    assert h.client.calls == result.lm_calls == len(h.calls())
    check_lifecycle(h.events)


def test_max_tokens_stops_the_run_and_reports_every_token(seam) -> None:
    h = seam(never_finishes, max_tokens=5_000, max_steps=50, fallback_answer=False)
    result = h.run("abc")
    _stopped(result, "max_tokens")
    calls = h.calls()
    total = result.tokens["prompt"] + result.tokens["completion"]
    assert total == sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls)
    assert h.client.calls == result.lm_calls == len(calls) < 50
    # Past the cap by at most the call that crossed it (none, where calls are reserved).
    last = calls[-1]["prompt_tokens"] + calls[-1]["completion_tokens"] if calls else 0
    assert total <= 5_000 + last
    assert "--max-tokens" in (result.hint or "")


def test_max_cost_stops_a_priced_run(seam) -> None:
    h = seam(
        never_finishes, model=PRICED, max_cost=0.05, lm_max_tokens=256, max_steps=50, fallback_answer=False
    )
    result = h.run("abc")
    _stopped(result, "max_cost")
    costs = [c["cost_usd"] for c in h.calls()]
    assert len(costs) >= 2
    assert result.cost_usd == pytest.approx(sum(costs), abs=1e-6)  # the report rounds to 6 places
    assert h.client.calls == result.lm_calls == len(costs)
    assert result.cost_usd <= 0.05  # a hard cap: each call's worst case is reserved before it is sent
    assert result.models[PRICED]["cost_usd"] == pytest.approx(result.cost_usd)


def test_a_priced_model_costs_what_the_price_map_says(seam) -> None:
    from rlm_sandbox.rlm.prices import price_of

    h = seam(cells_then_final("print(1)"), model=PRICED)
    result = h.run("abc")
    price = price_of(PRICED)
    assert price is not None
    expected = sum(price.cost(c["prompt_tokens"], c["completion_tokens"]) for c in h.calls())
    assert result.cost_usd == pytest.approx(expected, abs=1e-6) and result.cost_usd > 0


# ---- steps


def test_max_steps_ends_with_a_last_word_and_names_the_budget(seam) -> None:
    h = seam(never_finishes, max_steps=2, fallback_answer=False)
    result = h.run("abc")
    _stopped(result, "max_steps")
    assert result.steps == 2
    assert [c["purpose"] for c in h.calls()] == ["step", "step", "last_answer"]
    assert "--max-steps" in (result.hint or "")
    assert "used all 2 steps" in (result.error or "")


def test_a_childs_last_word_is_still_its_answer(seam) -> None:
    """Out of steps, a child answers its parent with its last word: the root goes on."""

    def child(request: dict[str, Any]) -> str:
        if "You have no steps left" in request["messages"][-1]["content"]:
            return "FINAL(child's best)"
        return never_finishes(request)

    root = cells_then_final("a = llm_query('sub')", final="FINAL_VAR(a)")
    h = seam(root_then_policy(root, child), depth=2, max_steps=2, pool_size=0)
    result = h.run("abc")
    assert (result.status, result.answer) == ("ok", "child's best")
    assert [c["purpose"] for c in h.calls() if c["node"] != "root"] == ["step", "step", "last_answer"]


# ---- nodes and containers


def test_max_nodes_stops_the_tree_and_ends_every_node_begun(seam) -> None:
    stats = generate_log(None, 100_000, seed=12)
    h = seam(rlm_policy, depth=2, pool_size=0, max_nodes=2)
    result = h.run(stats.text, COUNT_TASK)
    _stopped(result, "max_nodes")
    assert result.nodes <= 2
    nodes = check_lifecycle(h.events)
    refused = [n for n, seen in nodes.items() if seen == ["node_begin", "node_end"]]
    assert refused, "a node past the limit is begun and ended, never started"
    assert len(h.backend.started) == result.containers <= 2


def test_max_containers_bounds_a_deep_tree_without_deadlock(seam) -> None:
    stats = generate_log(None, 6_000, seed=13)  # 4 children with one grandchild each
    h = seam(rlm_policy, depth=3, pool_size=0, max_containers=3, timeout=60)
    result = h.run(stats.text, COUNT_TASK)
    assert result.status == "ok", result.error
    assert result.answer == str(stats.disk_errors)
    assert result.max_depth_reached == 3
    assert h.backend.peak <= 3 < result.containers


def test_the_warm_pool_stays_inside_max_containers(seam) -> None:
    stats = generate_log(None, 60_000, seed=14)
    h = seam(rlm_policy, depth=2, pool_size=4, max_containers=3, timeout=60)
    result = h.run(stats.text, COUNT_TASK)
    assert result.status == "ok", result.error
    assert h.backend.peak <= 3


def test_fewer_containers_than_levels_is_refused_before_anything_starts(seam) -> None:
    h = seam(never_finishes, depth=3, max_containers=2)
    with pytest.raises(ConfigError, match="at least depth"):
        h.run("abc")
    assert h.backend.started == [] and h.client.calls == 0


# ---- wall time


def test_the_wall_time_budget_stops_a_slow_run(seam) -> None:
    h = seam(never_finishes, latency_s=0.1, timeout=0.35, max_steps=100, fallback_answer=False)
    result = h.run("abc")
    _stopped(result, "timeout")
    assert "--timeout" in (result.hint or "")
    assert h.client.calls == result.lm_calls < 100
    assert result.wall_s < 10  # generous: the stop comes at the next check, not after 100 steps


# ---- tool calls


def test_max_tool_calls_stops_the_run(seam) -> None:
    called: list[int] = []

    def ping(n: int) -> int:
        called.append(n)
        return n

    code = "for i in range(5):\n    try:\n        ping(i)\n    except Exception as e:\n        print(type(e).__name__)"
    h = seam(cells_then_final(code, final="FINAL(x)"), tools={"ping": ping}, max_tool_calls=2)
    result = h.run("abc")
    _stopped(result, "max_tool_calls")
    assert called == [0, 1]
    assert len(h.named("tool_call")) == 2


# ---- tenants


def test_a_tenants_cost_cap_spans_its_runs(seam) -> None:
    tenants = {"acme": TenantLimits(max_cost=0.002)}
    first = seam(never_finishes, model=PRICED, tenant="acme", tenants=tenants, max_steps=50)
    r1 = first.run("abc")
    _stopped(r1, "tenant_max_cost")
    assert first.calls("fallback") == []  # a tenant's cap allows no fallback call
    second = seam(cells_then_final(), model=PRICED, tenant="acme", tenants=tenants)
    r2 = second.run("abc")
    _stopped(r2, "tenant_max_cost")
    assert second.client.calls == 0
    other = seam(cells_then_final(), model=PRICED, tenant="other", tenants=tenants)
    assert other.run("abc").status == "ok"
    assert ledger.account("acme", None).cost_usd == pytest.approx(r1.cost_usd, abs=1e-6)


def test_a_tenant_with_fewer_containers_than_levels_is_refused(seam) -> None:
    h = seam(never_finishes, depth=2, tenant="acme", tenants={"acme": TenantLimits(max_containers=1)})
    with pytest.raises(ConfigError, match="fewer than depth"):
        h.run("abc")
    assert h.backend.started == []


def test_a_tenant_container_cap_turns_the_warm_pool_off() -> None:
    capped = RLMConfig(depth=2, pool_size=4, tenant="t", tenants={"t": TenantLimits(max_containers=3)})
    assert capped.effective_pool_size() == 0
    assert RLMConfig(depth=2, pool_size=4, max_containers=3).effective_pool_size() == 2
    assert RLMConfig(depth=1).effective_pool_size() == 0
    assert RLMConfig(depth=2).effective_pool_size() == 4


# ---- the Budget object itself


def test_admission_keeps_a_slot_free_for_every_level_below() -> None:
    """depth 3, 3 slots: a second child of the root must wait, a grandchild may go."""
    budget = Budget(Limits(depth=3, max_containers=3, timeout_s=0.3))
    budget.admit_node(0)
    budget.admit_node(1)
    with pytest.raises(BudgetExhausted) as info:
        budget.admit_node(1)  # would leave no slot for its own child: waits, then times out
    assert info.value.budget == "timeout" and budget.snapshot()["containers_alive"] == 2
    chain = Budget(Limits(depth=3, max_containers=3, timeout_s=0.3))
    for depth in (0, 1, 2):  # one chain down to the deepest level never waits
        chain.admit_node(depth)
    assert chain.snapshot()["containers_alive"] == 3


def test_a_released_slot_admits_the_waiting_node() -> None:
    budget = Budget(Limits(depth=2, max_containers=2, timeout_s=30))
    budget.admit_node(0)
    budget.admit_node(1)
    admitted = threading.Event()

    def second_child() -> None:
        budget.admit_node(1)
        admitted.set()

    waiter = threading.Thread(target=second_child, daemon=True)
    waiter.start()
    budget.release_container()
    assert admitted.wait(10)  # generous: it is woken at once
    snap = budget.snapshot()
    assert (snap["nodes"], snap["containers"], snap["containers_alive"]) == (3, 3, 2)


def test_max_nodes_counts_every_node_of_the_run() -> None:
    budget = Budget(Limits(depth=1, max_nodes=2))
    budget.admit_node(0)
    budget.release_container()
    budget.admit_node(0)
    budget.release_container()
    with pytest.raises(BudgetExhausted) as info:
        budget.admit_node(0)
    assert info.value.budget == "max_nodes"
    assert budget.snapshot()["nodes"] == 2
    with pytest.raises(BudgetExhausted):  # the run is stopped: every later check says so
        budget.check()


def test_a_cancelled_budget_stops_every_check() -> None:
    budget = Budget(Limits())
    budget.cancel(RuntimeError("the model is unreachable"))
    with pytest.raises(BudgetExhausted) as info:
        budget.check()
    assert info.value.budget == "cancelled" and "unreachable" in info.value.message
    with pytest.raises(BudgetExhausted):
        budget.admit_node(0)


def test_the_first_budget_to_run_out_is_the_one_reported() -> None:
    budget = Budget(Limits(max_tool_calls=1))
    budget.reserve_tool_call()
    with pytest.raises(BudgetExhausted) as first:
        budget.reserve_tool_call()
    budget.cancel(RuntimeError("later"))
    with pytest.raises(BudgetExhausted) as again:
        budget.check()
    assert first.value.budget == again.value.budget == "max_tool_calls"
    assert budget.tool_calls == 1


def test_wall_time_runs_out_at_the_next_check() -> None:
    budget = Budget(Limits(timeout_s=0.05))
    assert 0 < (budget.wall_left() or 0) <= 0.05
    time.sleep(0.06)
    with pytest.raises(BudgetExhausted) as info:
        budget.check()
    assert info.value.budget == "timeout"
    assert Budget(Limits(timeout_s=None)).wall_left() is None


def test_limits_need_a_container_per_level() -> None:
    with pytest.raises(ConfigError, match="at least depth"):
        Limits(depth=4, max_containers=3).check()
    Limits(depth=3, max_containers=3).check()


def test_tenant_slots_are_shared_by_the_tenants_budgets() -> None:
    account = ledger.account("acme", TenantLimits(max_containers=2))
    first = Budget(Limits(depth=1, timeout_s=0.3), account)
    second = Budget(Limits(depth=1, timeout_s=0.3), account)
    first.admit_node(0)
    second.admit_node(0)
    assert account.containers_alive == 2
    with pytest.raises(BudgetExhausted) as info:
        first.admit_node(0)  # the tenant's third container: waits, then times out
    assert info.value.budget == "timeout" and account.containers_alive == 2
    first = Budget(Limits(depth=1, timeout_s=30), account)
    second.release_container()
    assert account.containers_alive == 1
    first.admit_node(0)
    assert account.containers_alive == 2


def test_the_ledger_keeps_one_account_per_tenant_with_the_newest_limits() -> None:
    a = ledger.account("acme", TenantLimits(max_cost=1.0))
    assert ledger.account("acme", None) is a
    b = ledger.account("acme", TenantLimits(max_cost=2.0))
    assert b is a and a.limits.max_cost == 2.0
    assert ledger.account("other", None).limits == TenantLimits()
    ledger.reset()
    assert ledger.account("acme", None) is not a
