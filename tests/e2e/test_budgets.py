"""Budgets are caps, through the real CLI, checked against what the scripted model server
itself received and answered (its own token counts, priced with LiteLLM's own map), never
against our report; and our report must equal it.

``--model openai/gpt-4o --api-base http://127.0.0.1:PORT/v1``: LiteLLM prices gpt-4o while
the scripted server answers, as a user pointing the engine at a local proxy would see.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.testing import ScriptedModelServer

from ..conftest import tenant_containers
from ..helpers import cli, json_out

pytestmark = pytest.mark.docker
COUNT = 'How many lines contain "ERROR disk"?'
KEY_ENV = {"OPENAI_API_KEY": ScriptedModelServer.api_key}


def gpt4o_price() -> tuple[float, float]:
    """USD per prompt and completion token of gpt-4o, from LiteLLM itself."""
    from rlm_sandbox.rlm.lm import preload_litellm

    entry = preload_litellm().model_cost["gpt-4o"]
    return float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"])


def budget_of(trace: Path) -> str | None:
    """The budget the run's trace says stopped it."""
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    stops = [e for e in events if e["event"] == "budget"]
    return stops[-1]["budget"] if stops else None


@pytest.mark.parametrize(
    ("flag", "cap"),
    [("--max-cost", 0.1), ("--max-tokens", 40_000)],
)
def test_cost_and_token_caps_hold_at_the_server(
    scripted, gen_log, tmp_path: Path, flag: str, cap: float
) -> None:
    """A depth-2 run over a log fans out in parallel until a call no longer fits: what the
    server served, at LiteLLM's price, stays under the cap, and the report is exactly that."""
    server = scripted()
    stats = gen_log(200_000)
    trace = tmp_path / "t.jsonl"
    tenant = f"caps-{uuid.uuid4().hex[:8]}"
    proc = cli(
        "run",
        "--model",
        "openai/gpt-4o",
        "--api-base",
        server.url,
        "-i",
        str(stats.path),
        "--task",
        COUNT,
        "--depth",
        "2",
        "--lm-max-tokens",
        "1024",
        flag,
        str(cap),
        "--tenant",
        tenant,
        "--trace",
        str(trace),
        "--json",
        env=KEY_ENV,
    )
    out = json_out(proc)
    served = server.requests
    prompt, completion = served.prompt_tokens, served.completion_tokens
    price_in, price_out = gpt4o_price()
    spent = prompt * price_in + completion * price_out
    assert proc.returncode == 3 and out["status"] == "budget_exhausted", proc.stderr.decode()[-3000:]
    assert budget_of(trace) == flag[2:].replace("-", "_")
    if flag == "--max-cost":
        assert 0 < spent <= cap
    else:
        assert 0 < prompt + completion <= cap
    # The tree did work (the root and children in parallel) before the cap stopped it.
    assert served.answered >= 4
    assert out["tokens"] == {"prompt": prompt, "completion": completion}
    assert out["cost_usd"] == pytest.approx(spent, abs=1e-6)
    assert out["lm_calls"] == served.count == served.answered
    assert tenant_containers(tenant) == []


def test_lm_call_cap_holds_at_depth(scripted, gen_log, tmp_path: Path) -> None:
    """A deep tree that wants far more calls than allowed never sends more than the cap."""
    server = scripted()
    trace = tmp_path / "t.jsonl"
    tenant = f"calls-{uuid.uuid4().hex[:8]}"
    proc = cli(
        "run",
        "--model",
        server.model_name,
        "--api-base",
        server.url,
        "-i",
        str(gen_log(100_000).path),
        "--task",
        COUNT,
        "--depth",
        "5",
        "--max-lm-calls",
        "20",
        "--tenant",
        tenant,
        "--trace",
        str(trace),
        "--json",
        env=KEY_ENV,
    )
    out: dict[str, Any] = json_out(proc)
    assert proc.returncode == 3 and out["status"] == "budget_exhausted", proc.stderr.decode()[-3000:]
    assert budget_of(trace) == "max_lm_calls"
    assert server.requests.count <= 20 and out["lm_calls"] == server.requests.count
    assert out["max_depth_reached"] >= 3  # it really went deep before the cap
    assert tenant_containers(tenant) == []
