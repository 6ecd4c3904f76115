"""The whole engine: real containers, the real model HTTP path, a scripted model on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlm_sandbox import RLMResult  # noqa: F401  (public name)
from rlm_sandbox.rlm.api import RLM, RecursiveLanguageModel
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.testing import always_status, fail_then, rlm_policy

from ..conftest import containers_of
from ..helpers import cells_then_final, never_finishes

pytestmark = pytest.mark.docker
SEARCH = "What is the secret code?"
COUNT = 'How many lines contain "ERROR disk"?'


def make_rlm(server, run_cfg: dict | None = None, **kw) -> RLM:
    cfg = RLMConfig(api_base=server.url, lm_retries=3, **(run_cfg or {}))
    return RLM(model=server.model_name, config=cfg, api_key=server.api_key, **kw)


def test_needle_and_count_at_depth_1(scripted, gen_log, run_id: str) -> None:
    stats = gen_log(3_000_000)
    server = scripted()
    rlm = make_rlm(server)
    found = rlm.run(context=stats.path, task=SEARCH, run_id=run_id)
    assert found.status == "ok" and found.answer == "QX-4417", found
    assert found.nodes == 1 and found.containers == 1 and found.max_depth_reached == 1
    assert found.lm_calls == 2 + 4  # two root steps, four sub-calls
    counted = rlm.run(context=stats.path.read_text(), task=COUNT, run_id=run_id)
    assert counted.status == "ok" and counted.answer == str(stats.disk_errors)
    assert counted.tokens["prompt"] > 0 and counted.tokens["completion"] > 0
    assert containers_of(run_id) == []


def test_depth_3_creates_21_nodes_and_containers_and_leaves_none(
    scripted, gen_log, run_id: str, tmp_path: Path
) -> None:
    stats = gen_log(1_000_000)
    server = scripted()
    trace = tmp_path / "t.jsonl"
    rlm = make_rlm(server, {"depth": 3, "max_containers": 32, "trace": str(trace)})
    result = rlm.run(context=stats.path, task=COUNT, run_id=run_id)
    assert result.status == "ok" and result.answer == str(stats.disk_errors), result
    assert result.nodes == 21 and result.containers == 21 and result.max_depth_reached == 3
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    starts = [e for e in events if e["event"] == "node_start"]
    assert len({e["container"] for e in starts}) == 21
    assert sorted(e["depth"] for e in starts) == [0] + [1] * 4 + [2] * 16
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "ok"
    assert containers_of(run_id) == []


def test_container_budget_bounds_alive_containers(scripted, gen_log, run_id: str, tmp_path: Path) -> None:
    stats = gen_log(400_000)
    server = scripted()
    trace = tmp_path / "t.jsonl"
    rlm = make_rlm(server, {"depth": 2, "max_containers": 2, "trace": str(trace)})
    result = rlm.run(context=stats.path, task=COUNT, run_id=run_id)
    assert result.status == "ok" and result.answer == str(stats.disk_errors)
    alive = peak = 0
    for line in trace.read_text().splitlines():
        ev = json.loads(line)["event"]
        alive += ev == "node_start"
        alive -= ev == "node_end"
        peak = max(peak, alive)
    assert result.nodes == 5 and peak <= 2


def test_depth_must_fit_the_container_budget(scripted) -> None:
    from rlm_sandbox.errors import ConfigError

    with pytest.raises(ConfigError, match="max_containers"):
        make_rlm(scripted(), {"depth": 3, "max_containers": 2}).run(context="x", task="t")


@pytest.mark.parametrize(
    "limits,budget",
    [
        ({"max_lm_calls": 3}, "max_lm_calls"),
        ({"max_tokens": 1500}, "max_tokens"),
        ({"max_steps": 2}, "max_steps"),
        ({"max_nodes": 3, "depth": 2}, "max_nodes"),
    ],
)
def test_budgets_run_out_with_a_typed_status(
    scripted, gen_log, run_id: str, limits: dict, budget: str
) -> None:
    policy = never_finishes if budget == "max_steps" else rlm_policy
    server = scripted(policy)
    result = make_rlm(server, limits).run(context=gen_log(200_000).path, task=COUNT, run_id=run_id)
    assert result.status == "budget_exhausted" and result.exit_code == 3, result
    assert result.budget == budget and result.error
    assert containers_of(run_id) == []


def test_wall_time_budget(scripted, run_id: str) -> None:
    server = scripted(never_finishes, latency_s=0.4)
    result = make_rlm(server, {"timeout": 1.5}).run(context="abc", task="t", run_id=run_id)
    assert result.status == "budget_exhausted" and result.budget == "timeout" and result.wall_s < 10


def test_cost_budget(scripted, run_id: str) -> None:
    from rlm_sandbox.rlm.lm import preload_litellm

    litellm = preload_litellm()
    litellm.register_model(
        {
            "openai/priced-scripted": {
                "input_cost_per_token": 0.001,
                "output_cost_per_token": 0.002,
                "litellm_provider": "openai",
                "mode": "chat",
                "max_tokens": 8192,
            }
        }
    )
    from rlm_sandbox.testing import ScriptedModelServer

    with ScriptedModelServer(never_finishes, served_name="priced-scripted") as server:
        cfg = RLMConfig(api_base=server.url, max_cost=10, lm_max_tokens=256)
        result = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
            context="abc", task="t", run_id=run_id
        )
        served = (server.requests.prompt_tokens, server.requests.completion_tokens)
    assert result.status == "budget_exhausted" and result.budget == "max_cost", result
    # A hard cap, at the server's own count and the registered price; our report is that.
    spent = served[0] * 0.001 + served[1] * 0.002
    assert 0 < spent <= 10 and result.cost_usd == pytest.approx(spent, abs=1e-6)


def test_retries_then_success_and_lm_errors(scripted, run_id: str) -> None:
    final_only = cells_then_final(final="FINAL(42)")
    flaky = scripted(fail_then(final_only, 429, 2))
    ok = make_rlm(flaky).run(context="abc", task="t", run_id=run_id)
    assert ok.status == "ok" and ok.answer == "42" and flaky.requests.count == 3
    dead = scripted(always_status(500))
    bad = make_rlm(dead).run(context="abc", task="t", run_id=run_id)
    assert bad.status == "lm_error" and bad.exit_code == 5 and dead.requests.count == 3
    assert "server error" in (bad.error or "")
    auth = scripted(always_status(401))
    denied = make_rlm(auth).run(context="abc", task="t", run_id=run_id)
    assert denied.status == "lm_error" and auth.requests.count == 1 and "API key" in (denied.error or "")


def test_bad_model_name(run_id: str) -> None:
    result = RLM(model="no-such-provider/foo", config=RLMConfig(lm_retries=1)).run(
        context="x", task="t", run_id=run_id
    )
    assert result.status == "lm_error" and "provider/model" in (result.error or "")


def test_empty_input_and_list_input(scripted, run_id: str) -> None:
    server = scripted()
    empty = make_rlm(server).run(context="", task=COUNT, run_id=run_id)
    assert empty.status == "ok" and empty.answer == "0"
    docs = [f"2026 INFO line {i}" if i % 5 else f"2026 ERROR disk fail {i}" for i in range(4000)]
    listed = make_rlm(server).run(context=docs, task=COUNT, run_id=run_id)
    assert listed.status == "ok" and listed.answer == "800", listed


def test_final_var_of_a_missing_variable_is_told_to_the_model(scripted, run_id: str) -> None:
    seen: list[str] = []

    def policy(request: dict) -> str:
        msgs = request["messages"]
        steps = sum(m["role"] == "assistant" for m in msgs)
        if steps == 0:
            return "Done already.\nFINAL_VAR(nothing_here)"
        seen.append(msgs[-1]["content"])
        return "```repl\nresult = 'fixed'\n```\nFINAL_VAR(result)"

    result = make_rlm(scripted(policy)).run(context="abc", task="t", run_id=run_id)
    assert result.status == "ok" and result.answer == "fixed"
    assert "no variable named 'nothing_here'" in seen[0]


def test_reference_names(scripted, run_id: str) -> None:
    from rlm_sandbox.rlm.lm import LiteLLMClient

    server = scripted()
    client = LiteLLMClient(model=server.model_name, api_base=server.url, api_key=server.api_key)
    rlm = RecursiveLanguageModel(root_lm=client, config=RLMConfig(max_steps=10))
    text = "\n".join(["noise line"] * 50 + ["The secret code is ZZ-9"] + ["noise"] * 50)
    result = rlm.run(prompt=text, task=SEARCH, run_id=run_id)
    assert result.ok and result.answer == "ZZ-9"
    assert rlm.completion(context=text, query=SEARCH) == "ZZ-9"


def test_a_sleeping_cell_cannot_outlive_the_wall_budget(scripted, run_id: str) -> None:
    server = scripted(cells_then_final("import time\ntime.sleep(60)", "import time\ntime.sleep(60)"))
    result = make_rlm(server, {"timeout": 3}).run(context="abc", task="t", run_id=run_id)
    assert result.status == "budget_exhausted" and result.budget == "timeout", result
    assert result.wall_s < 8


def test_listeners_see_load_progress_and_every_node_state(scripted, gen_log, run_id: str) -> None:
    stats = gen_log(20_000_000)
    server = scripted()
    rlm = make_rlm(server, {"depth": 2})
    seen: list[dict] = []
    rlm.listeners.append(seen.append)
    result = rlm.run(context=stats.path, task=COUNT, run_id=run_id)
    assert result.status == "ok" and result.answer == str(stats.disk_errors)
    loads = [e for e in seen if e["event"] == "load_progress" and e["node"] == "root"]
    assert loads and loads[-1]["sent"] == loads[-1]["size"] == stats.size_bytes
    assert [e["sent"] for e in loads] == sorted(e["sent"] for e in loads)
    kinds = [e["event"] for e in seen]
    for kind in ("node_begin", "node_start", "lm_start", "lm_call", "cell_start", "cell", "node_end"):
        assert kinds.count(kind) >= 1, kind
    assert kinds.count("node_begin") == kinds.count("node_end") == result.nodes
    assert kinds.count("lm_start") == kinds.count("lm_call") == result.lm_calls
