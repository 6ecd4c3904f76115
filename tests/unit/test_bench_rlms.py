"""scripts/bench.py's scripted model for the official ``rlms`` engine, checked without rlms.

The bench drives rlms with the same scripted model as our engine; these tests replay rlms'
protocol by hand (its system prompt's submission rule, its ```repl block pattern, its
``answer`` dict that a cell must set ``ready``, and the reset of a non-dict ``answer`` between
cells) to prove that the scripted turns reach the known truth at depth 1 and 2, that the
depth-2 root recurses with ``rlm_query_batched`` while children stay plain, and that our own
engine's requests are answered exactly as before.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rlm_sandbox.testing import answer_leaf, generate_log, grep_first_policy, rlm_policy

ROOT = Path(__file__).resolve().parents[2]
RLMS_SYSTEM = (  # the parts of rlms' system prompt that matter to the scripted model
    "You are a Recursive Language Model (RLM) ... write code in ```repl``` blocks ...\n"
    '- `answer`: dict initialized to {"content": "", "ready": False}. To submit, set '
    '`answer["content"]` to the final answer and `answer["ready"] = True` inside a ```repl``` block.'
)
RLMS_BLOCK = re.compile(r"```repl\s*\n(.*?)\n```", re.DOTALL)  # rlms' find_code_blocks


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_script"] = module
    spec.loader.exec_module(module)
    return module


def rlms_request(root_prompt: str | None, context: str, assistant_turns: list[str]) -> dict[str, Any]:
    """The messages rlms sends a node's model (rlm/utils/prompts.py: metadata, then turns)."""
    meta = f"Your context is a str of {len(context)} total characters."
    user = f"Answer the following: {root_prompt}\n\n{meta}" if root_prompt else meta
    messages = [{"role": "system", "content": RLMS_SYSTEM}, {"role": "user", "content": user}]
    for i, turn in enumerate(assistant_turns):
        messages += [{"role": "user", "content": f"Turn {i + 1}/30:"}, {"role": "assistant", "content": turn}]
        messages.append({"role": "user", "content": "REPL output:\n..."})
    messages.append({"role": "user", "content": f"Turn {len(assistant_turns) + 1}/30:"})
    return {"model": "scripted", "messages": messages}


def run_rlms_node(
    policy: Any, root_prompt: str | None, context: str, depth_left: int, seen: list[str]
) -> str:
    """One rlms node, the way rlms runs it: turns until a cell sets answer["ready"]."""
    state: dict[str, Any] = {"context": context, "context_0": context}

    def rlm_query_batched(prompts: list[str]) -> list[str]:
        assert depth_left > 1, "rlm_query_batched used where rlms would not recurse"
        return [run_rlms_node(policy, None, p, depth_left - 1, seen) for p in prompts]

    turns: list[str] = []
    for _ in range(5):
        reply = policy(rlms_request(root_prompt, context, turns))
        assert isinstance(reply, str)
        turns.append(reply)
        if not isinstance(state.get("answer"), dict):  # rlms' cell prelude resets it
            state["answer"] = {"content": "", "ready": False}
        for code in RLMS_BLOCK.findall(reply):
            seen.append(code)
            glb = {
                **state,
                "llm_query_batched": lambda ps: [answer_leaf(p) for p in ps],
                "rlm_query_batched": rlm_query_batched,
            }
            exec(code, glb)
            state.update({k: v for k, v in glb.items() if not k.startswith("_") and k != "__builtins__"})
        ans = state.get("answer")
        if isinstance(ans, dict) and ans.get("ready"):
            return str(ans["content"])
    raise AssertionError(f"no answer after {len(turns)} turns")


@pytest.mark.parametrize("policy_name", ["grep", "chunk"])
@pytest.mark.parametrize("task", ["What is the secret code?", 'How many lines contain "ERROR disk"?'])
def test_rlms_turns_reach_the_truth_at_depth_1(bench: ModuleType, policy_name: str, task: str) -> None:
    log = generate_log(None, 300_000, seed=3)
    assert log.text is not None and log.needle is not None
    truth = log.needle.rsplit(" ", 1)[-1] if "secret" in task else str(log.disk_errors)
    policy, rlms_can = bench.row_policy({"policy": policy_name, "depth": 1})
    assert rlms_can
    seen: list[str] = []
    assert run_rlms_node(policy, task, log.text, depth_left=1, seen=seen) == truth
    assert len(seen) == 2  # one working cell, one submitting cell: two model turns, as ours
    assert "rlm_query_batched" not in seen[0] and "llm_query_batched(prompts)" in seen[0]


def test_rlms_depth_2_root_recurses_and_children_stay_plain(bench: ModuleType) -> None:
    log = generate_log(None, 300_000, seed=5)
    assert log.text is not None and log.needle is not None
    policy, rlms_can = bench.row_policy({"policy": "chunk", "depth": 2})
    assert rlms_can
    seen: list[str] = []
    answer = run_rlms_node(policy, "What is the secret code?", log.text, depth_left=2, seen=seen)
    assert answer == log.needle.rsplit(" ", 1)[-1]
    working = [c for c in seen if "split_pieces" in c]
    assert "rlm_query_batched(prompts)" in working[0]
    children = working[1:]
    assert len(children) == 4  # the root cut 300 kB into 4 pieces: 4 child RLMs
    assert all("llm_query_batched(prompts)" in c and "rlm_query_batched" not in c for c in children)


def test_our_engine_requests_get_the_same_replies(bench: ModuleType) -> None:
    system = (resources.files("rlm_sandbox.rlm.prompts") / "system.md").read_text(encoding="utf-8")
    request = {
        "model": "scripted",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "Task: What is the secret code?"},
        ],
    }
    for name, ours in (("grep", grep_first_policy), ("chunk", rlm_policy)):
        policy, _ = bench.row_policy({"policy": name, "depth": 2})
        assert bench.rlms_node_reply(request, grep_first=name == "grep", depth=2) is None
        assert policy(request) == ours(request)
    leaf = {
        "model": "scripted",
        "messages": [{"role": "user", "content": "TASK: x\n\nTEXT:\nsecret code: Z-1"}],
    }
    assert bench.row_policy({"policy": "grep", "depth": 1})[0](leaf) == "Z-1"


def test_fanout_rows_are_ours_only(bench: ModuleType) -> None:
    _, rlms_can = bench.row_policy({"policy": "fanout", "depth": 2, "n": 4, "leaf_latency": 0.0})
    assert not rlms_can
