"""Whole runs on each model path: the OpenAI-compatible one (no LiteLLM at all) and LiteLLM's,
with the first model call already out while the root's container starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.lm import LiteLLMClient, OpenAICompatClient, preload_litellm
from rlm_sandbox.testing import ScriptedModelServer, rlm_policy

from ..conftest import ROOT

pytestmark = pytest.mark.docker
SEARCH = "What is the secret code?"


def run_through(model: str, context: Path, run_id: str, trace: Path | None = None):
    with ScriptedModelServer(rlm_policy, served_name="gpt-4o-mini", keep_bodies=512) as server:
        # No wall-time budget: the prompts then say nothing that differs from run to run.
        config = RLMConfig(api_base=server.url, timeout=None, trace=str(trace) if trace else None)
        rlm = RLM(model=model, config=config, api_key=server.api_key)
        result = rlm.run(context=context, task=SEARCH, run_id=run_id)
        bodies = sorted(json.dumps(b, sort_keys=True) for b in server.requests.bodies)
        return result, bodies, server.requests.count


def test_a_whole_run_is_the_same_on_both_paths(gen_log, run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = gen_log(300_000)
    litellm = preload_litellm()
    through_litellm: list[str] = []
    real = litellm.completion
    monkeypatch.setattr(
        litellm, "completion", lambda **kw: (through_litellm.append(kw["model"]), real(**kw))[1]
    )
    fast, fast_bodies, fast_count = run_through("openai/gpt-4o-mini", stats.path, run_id)
    assert through_litellm == []  # the OpenAI-compatible path never called LiteLLM
    slow, slow_bodies, slow_count = run_through("litellm_proxy/gpt-4o-mini", stats.path, run_id)
    # A provider string that is not OpenAI-routed went through LiteLLM, every call of it.
    assert len(through_litellm) == slow_count and set(through_litellm) == {"litellm_proxy/gpt-4o-mini"}
    assert fast.status == slow.status == "ok" and fast.answer == slow.answer == stats.needle.split()[-1]
    assert fast_count == slow_count == fast.lm_calls == slow.lm_calls
    assert fast_bodies == slow_bodies  # what the server received, call for call
    assert fast.tokens == slow.tokens
    assert fast.cost_usd == pytest.approx(slow.cost_usd, rel=1e-9) and fast.cost_usd > 0
    assert fast.models["openai/gpt-4o-mini"]["calls"] == slow.models["litellm_proxy/gpt-4o-mini"]["calls"]


def test_the_clients_of_a_run() -> None:
    rlm = RLM(model="openai/gpt-4o-mini", sub_model="litellm_proxy/gpt-4o-mini", config=RLMConfig())
    router = rlm._models()
    assert isinstance(router.root, OpenAICompatClient) and isinstance(router.sub, LiteLLMClient)


def test_the_fast_path_never_imports_litellm(gen_log, run_id: str) -> None:
    """A whole run (root, sub-calls, a real container) in a fresh process: LiteLLM is never
    imported, not even in the background."""
    stats = gen_log(300_000)
    code = f"""
import json, sys
from pathlib import Path
from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.testing import ScriptedModelServer
with ScriptedModelServer(served_name="gpt-4o-mini") as server:
    rlm = RLM(model="openai/gpt-4o-mini", config=RLMConfig(api_base=server.url), api_key=server.api_key)
    result = rlm.run(context=Path({str(stats.path)!r}), task={SEARCH!r}, run_id={run_id!r})
print(json.dumps({{"status": result.status, "answer": result.answer, "lm_calls": result.lm_calls,
                  "cost": result.cost_usd, "litellm": "litellm" in sys.modules,
                  "openai": "openai" in sys.modules}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "ok" and out["answer"] == stats.needle.split()[-1] and out["lm_calls"] >= 2
    assert out["cost"] > 0  # priced from LiteLLM's map, read as data
    assert out["litellm"] is False and out["openai"] is False


def test_the_first_call_overlaps_the_container_start(scripted, gen_log, run_id: str, tmp_path: Path) -> None:
    stats = gen_log(300_000)
    trace = tmp_path / "t.jsonl"
    server = scripted()
    config = RLMConfig(api_base=server.url, trace=str(trace))
    result = RLM(model=server.model_name, config=config, api_key=server.api_key).run(
        context=stats.path, task=SEARCH, run_id=run_id
    )
    assert result.status == "ok"
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = [e["event"] for e in events if e.get("node") in (None, "root")]
    # The run was ready to call the model, and did, before the root's container was up.
    assert (
        kinds.index("lm_ready") < kinds.index("lm_start") < kinds.index("lm_sent") < kinds.index("node_start")
    )
    assert kinds.count("lm_ready") == kinds.count("lm_sent") == 1
    timings = result.timings
    assert {"lm_ready_s", "first_request_s", "first_lm_call_s", "first_cell_s"} <= set(timings)
    assert timings["lm_ready_s"] <= timings["first_request_s"] <= timings["first_lm_call_s"]
    end = next(e for e in events if e["event"] == "run_end")
    assert end["timings"] == timings
