"""A long node history is compacted to fit a small context window; the namespace survives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.compaction import estimate_tokens
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.testing import ScriptedModelServer

pytestmark = pytest.mark.docker


def long_winded(request: dict[str, Any]) -> str:
    msgs = request.get("messages") or []
    last = msgs[-1]["content"] if msgs else ""
    if "summarise it for yourself" in last:
        return "Found so far: `secret` holds the answer; steps printed filler."
    steps = sum(m["role"] == "assistant" for m in msgs)
    if any("Summary of my earlier steps" in m["content"] for m in msgs) and steps >= 3:
        return "FINAL_VAR(secret)"
    if steps == 0:
        return "```repl\nsecret = 'kept-' + str(6 * 7)\nprint('x' * 1500)\n```"
    return f"```repl\nprint('step {steps} ' + 'y' * 1500)\n```"


def test_history_is_compacted_and_variables_survive(run_id: str, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer(long_winded, keep_bodies=1000) as server:
        cfg = RLMConfig(api_base=server.url, context_window=3000, max_steps=12, trace=str(trace))
        result = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
            context="abc", task="Find the secret.", run_id=run_id
        )
        bodies = server.requests.bodies
    assert result.status == "ok" and result.answer == "kept-42", result
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    compactions = [e for e in events if e["event"] == "compaction"]
    assert compactions and all(c["tokens_after"] < c["tokens_before"] for c in compactions)
    assert any(e["event"] == "lm_call" and e["purpose"] == "compaction" for e in events)
    # Every step request after a compaction fits the window again.
    steps = [b["messages"] for b in bodies if "summarise it for yourself" not in b["messages"][-1]["content"]]
    after = [m for m in steps if any("Summary of my earlier steps" in x["content"] for x in m)]
    assert after and all(estimate_tokens(m) < 3000 for m in after)


def test_no_window_known_means_no_compaction(scripted, run_id: str, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    server = scripted(long_winded)
    cfg = RLMConfig(api_base=server.url, max_steps=4, trace=str(trace), fallback_answer=False)
    RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
        context="abc", task="t", run_id=run_id
    )
    assert not [line for line in trace.read_text().splitlines() if '"compaction"' in line]
