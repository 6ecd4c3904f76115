"""Models per level with exact cost accounting, and the best answer when a budget stops a run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.testing import ScriptedModelServer, answer_leaf, rlm_policy

from ..helpers import never_finishes

pytestmark = pytest.mark.docker
COUNT = 'How many lines contain "ERROR disk"?'
PRICES = {"m-root": 1e-5, "m-mid": 3e-6, "m-leaf": 2e-7}


def register_prices() -> None:
    from rlm_sandbox.rlm.lm import preload_litellm

    preload_litellm().register_model(
        {
            f"openai/{name}": {
                "input_cost_per_token": price,
                "output_cost_per_token": 2 * price,
                "litellm_provider": "openai",
                "mode": "chat",
            }
            for name, price in PRICES.items()
        }
    )


def server_usage(server: ScriptedModelServer) -> dict[str, dict[str, int]]:
    """What the server itself saw and billed, per model name (its usage formula)."""
    out: dict[str, dict[str, int]] = {}
    for body in server.requests.bodies:
        out.setdefault(body["model"], {"calls": 0})["calls"] += 1
    return out


def test_each_level_uses_its_model_and_the_cost_split_is_exact(gen_log, run_id: str, tmp_path: Path) -> None:
    register_prices()
    stats = gen_log(1_000_000)
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer(rlm_policy, keep_bodies=10_000) as server:
        cfg = RLMConfig(api_base=server.url, depth=2, depth_models={1: "openai/m-mid"}, trace=str(trace))
        rlm = RLM(model="openai/m-root", sub_model="openai/m-leaf", config=cfg, api_key=server.api_key)
        result = rlm.run(context=stats.path, task=COUNT, run_id=run_id)
        seen = server_usage(server)
    assert result.status == "ok" and result.answer == str(stats.disk_errors), result
    assert set(result.models) == {"openai/m-root", "openai/m-mid", "openai/m-leaf"}
    for model, usage in result.models.items():
        assert usage["calls"] == seen[model.split("/", 1)[1]]["calls"], model
        price = PRICES[model.split("/", 1)[1]]
        expected = usage["prompt_tokens"] * price + usage["completion_tokens"] * 2 * price
        assert usage["cost_usd"] == pytest.approx(expected, abs=1e-6), model
    assert result.cost_usd == pytest.approx(sum(u["cost_usd"] for u in result.models.values()), abs=1e-6)
    assert result.lm_calls == sum(u["calls"] for u in result.models.values())
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    by_depth = Counter((e["depth"], e["model"], e["purpose"]) for e in events if e["event"] == "lm_call")
    assert {(d, m) for d, m, p in by_depth if p == "step"} == {(0, "openai/m-root"), (1, "openai/m-mid")}
    assert {m for d, m, p in by_depth if p == "sub_call"} == {"openai/m-leaf"}
    assert events[0]["levels"] == {"0": "openai/m-root", "1": "openai/m-mid", "2": "openai/m-leaf"}


def stops_then_answers(request: dict[str, Any]) -> str:
    """Never finishes on its own; answers when told the run has to stop."""
    last = (request.get("messages") or [{}])[-1].get("content") or ""
    if "has to stop now" in last or "no steps left" in last:
        return "From what I saw: FINAL(about 42 disk errors)"
    return never_finishes(request)


@pytest.mark.parametrize(
    ("limits", "budget"),
    [
        ({"max_lm_calls": 3}, "max_lm_calls"),
        ({"max_steps": 2}, "max_steps"),
        # Each call reserves its prompt's bytes + lm_max_tokens: a few steps fit, then the
        # fallback spends what the root kept back for it.
        ({"max_tokens": 12000, "lm_max_tokens": 256}, "max_tokens"),
    ],
)
def test_a_budget_stop_still_returns_the_models_best_answer(
    scripted, run_id: str, limits: dict, budget: str, tmp_path: Path
) -> None:
    server = scripted(stops_then_answers)
    trace = tmp_path / "t.jsonl"
    cfg = RLMConfig(api_base=server.url, trace=str(trace), **limits)
    result = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
        context="x" * 5000, task=COUNT, run_id=run_id
    )
    assert result.status == "budget_exhausted" and result.budget == budget, result
    assert result.answer == "about 42 disk errors" and result.fallback is True
    assert result.to_json()["fallback"] is True and result.exit_code == 3
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert events[-1]["answer"] == "about 42 disk errors"
    # The extra call is counted, never hidden, and fits in the caps: the server's own counts.
    assert result.lm_calls == server.requests.count <= limits.get("max_lm_calls", 500)
    served = server.requests.prompt_tokens + server.requests.completion_tokens
    assert result.tokens == {
        "prompt": server.requests.prompt_tokens,
        "completion": server.requests.completion_tokens,
    }
    assert served <= limits.get("max_tokens", served)


def test_no_fallback_when_turned_off(scripted, run_id: str) -> None:
    server = scripted(stops_then_answers)
    cfg = RLMConfig(api_base=server.url, max_lm_calls=3, fallback_answer=False)
    result = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
        context="x", task=COUNT, run_id=run_id
    )
    assert result.status == "budget_exhausted" and result.answer is None and result.fallback is False
    assert "fallback" not in result.to_json()


def test_a_call_cut_by_the_wall_budget_is_a_budget_stop_not_a_model_error(run_id: str) -> None:
    fan = "```repl\nanswers = llm_query_batched([f'piece {i}' for i in range(4)])\n```"

    def policy(request: dict[str, Any]) -> str:
        msgs = request.get("messages") or []
        if msgs and msgs[0].get("role") == "system":
            return fan
        import time

        time.sleep(4)  # the leaves are slower than what is left of the wall budget
        return answer_leaf(msgs[-1]["content"])

    with ScriptedModelServer(policy, keep_bodies=100) as server:
        cfg = RLMConfig(api_base=server.url, timeout=3, fallback_answer=False, lm_retries=1)
        result = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
            context="abc", task="t", run_id=run_id
        )
    assert result.status == "budget_exhausted" and result.budget == "timeout", result
    assert result.lm_calls == 5 and result.wall_s < 10


def test_a_typed_run_only_falls_back_to_a_typed_answer(scripted, run_id: str) -> None:
    answers = iter(["FINAL(not json at all)"])

    def policy(request: dict[str, Any]) -> str:
        last = (request.get("messages") or [{}])[-1].get("content") or ""
        if "has to stop now" in last:
            return next(answers, 'FINAL({"n": 3})')
        return never_finishes(request)

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    server = scripted(policy)
    cfg = RLMConfig(api_base=server.url, max_lm_calls=2)
    bad = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
        context="x", task=COUNT, run_id=run_id, output=schema
    )
    assert bad.status == "budget_exhausted" and bad.answer is None and bad.fallback is False
    good = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
        context="x", task=COUNT, run_id=run_id, output=schema
    )
    assert good.fallback is True and good.output == {"n": 3} and json.loads(good.answer) == {"n": 3}
