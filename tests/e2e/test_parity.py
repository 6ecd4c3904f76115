"""Parity features through the real engine: host tools, typed answers, explicit recursion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.testing import ScriptedModelServer

pytestmark = pytest.mark.docker


def msgs_of(request: dict[str, Any]) -> list[dict[str, str]]:
    return request.get("messages") or []


def is_node(request: dict[str, Any], depth: int | None = None) -> bool:
    m = msgs_of(request)
    if not (m and m[0]["role"] == "system" and "```repl" in m[0]["content"]):
        return False
    return depth is None or f"depth {depth} of" in m[0]["content"]


def steps(request: dict[str, Any]) -> int:
    return sum(m["role"] == "assistant" for m in msgs_of(request))


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


def run_with(policy, tmp_path: Path, run_id: str, *, output: Any = None, tools=None, **cfg):
    trace = tmp_path / "t.jsonl"
    with ScriptedModelServer(policy, keep_bodies=1000) as server:
        rlm = RLM(
            model=server.model_name,
            config=RLMConfig(api_base=server.url, trace=str(trace), **cfg),
            api_key=server.api_key,
            tools=tools,
        )
        result = rlm.run(context="some input", task="Do it.", run_id=run_id, output=output)
        bodies = server.requests.bodies
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    return result, events, bodies


# ---- tools


def lookup(key: str, verbose: bool = False) -> dict:
    """Look up a customer record by its key."""
    return {"key": key, "plan": "gold", "verbose": verbose}


def explode(n: int) -> int:
    """Always fails."""
    raise KeyError(f"no record {n}")


def test_host_tools_are_called_traced_and_raise_into_the_cell(tmp_path: Path, run_id: str) -> None:
    code = (
        "r = lookup('acme', verbose=True)\n"
        "try:\n    explode(3)\nexcept KeyError as e:\n    caught = 'KeyError ' + str(e)\n"
        "try:\n    lookup({1, 2})\nexcept TypeError as e:\n    bad = 'TypeError'\n"
        "print(r['plan'], caught, bad)"
    )

    def policy(request: dict[str, Any]) -> str:
        return cell(code) if steps(request) == 0 else "FINAL_VAR(r)"

    result, events, bodies = run_with(policy, tmp_path, run_id, tools={"lookup": lookup, "explode": explode})
    assert result.status == "ok", result
    assert json.loads(result.answer) == {"key": "acme", "plan": "gold", "verbose": True}
    system = bodies[0]["messages"][0]["content"]
    assert (
        "`lookup(key: str, verbose: bool = False) -> dict`: Look up a customer record by its key." in system
    )
    out = next(e for e in events if e["event"] == "cell")["output"]
    assert "gold KeyError 'no record 3' TypeError" in out
    calls = [e for e in events if e["event"] == "tool_call"]
    assert [c["tool"] for c in calls] == ["lookup", "explode"]  # the set never left the sandbox
    assert calls[1]["error"].startswith("KeyError")


def test_tool_calls_count_against_the_budget(tmp_path: Path, run_id: str) -> None:
    def policy(request: dict[str, Any]) -> str:
        return cell("for i in range(10):\n    lookup(str(i))") if steps(request) == 0 else "FINAL(done)"

    result, events, _ = run_with(
        policy, tmp_path, run_id, tools={"lookup": lookup}, max_tool_calls=3, fallback_answer=False
    )
    assert result.status == "budget_exhausted" and result.budget == "max_tool_calls", result
    assert len([e for e in events if e["event"] == "tool_call"]) == 3


def test_bad_tool_names_are_refused() -> None:
    from rlm_sandbox.errors import ConfigError

    with pytest.raises(ConfigError):
        RLM(model="openai/x", tools={"llm_query": lookup})
    with pytest.raises(ConfigError):
        RLM(model="openai/x", tools={"not valid": lookup})


# ---- typed answers


class Report(BaseModel):
    errors: int
    top_host: str


def test_a_typed_answer_is_validated_and_sent_back_once(tmp_path: Path, run_id: str) -> None:
    def policy(request: dict[str, Any]) -> str:
        if steps(request) == 0:
            return cell("FINAL({'errors': 'many'})")
        return cell("FINAL({'errors': 3, 'top_host': 'db1'})")

    result, events, bodies = run_with(policy, tmp_path, run_id, output=Report)
    assert result.status == "ok", result
    assert result.output == Report(errors=3, top_host="db1")
    assert json.loads(result.answer) == {"errors": 3, "top_host": "db1"}
    assert (
        "JSON Schema" in bodies[0]["messages"][0]["content"]
        and '"top_host"' in bodies[0]["messages"][0]["content"]
    )
    assert "does not match the required schema" in bodies[1]["messages"][-1]["content"]
    assert [e for e in events if e["event"] == "schema_mismatch"]


def test_a_schema_that_is_never_met_ends_with_a_clear_error(tmp_path: Path, run_id: str) -> None:
    result, _, _ = run_with(
        lambda r: cell("FINAL('not json')"), tmp_path, run_id, output=Report, schema_retries=2
    )
    assert result.status == "error" and "did not match the schema after 2 retries" in (result.error or "")


def test_typed_answers_from_a_child_and_from_a_leaf(tmp_path: Path, run_id: str) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    root = (
        f"v = llm_query('count them', output={schema!r})\n"
        "w = rlm_query('again', output=dict)\n"
        "print(v['n'] + 1, sorted(w))"
    )
    leaf_tries: list[str] = []

    def policy(request: dict[str, Any]) -> str:
        if is_node(request, 0):
            return cell(root) if steps(request) == 0 else "FINAL_VAR(v)"
        if is_node(request, 1):
            return cell("FINAL({'n': 41})") if steps(request) == 0 else "FINAL({'n': 41})"
        leaf_tries.append(msgs_of(request)[-1]["content"])
        return "forty-one" if len(leaf_tries) == 1 else '{"n": 41}'

    result, events, _ = run_with(policy, tmp_path, run_id, depth=2)
    assert result.status == "ok", result
    out = next(e for e in events if e["event"] == "cell" and e["node"] == "root")["output"]
    assert "42 ['n']" in out


# ---- explicit recursion


def test_explicit_recursion_only_rlm_query_starts_children(tmp_path: Path, run_id: str) -> None:
    def policy(request: dict[str, Any]) -> str:
        if is_node(request, 0):
            code = "a = llm_query('plain question')\nb = rlm_query_batched(['child one', 'child two'])\nprint(a, b)"
            return cell(code) if steps(request) == 0 else "FINAL(ok)"
        if is_node(request, 1):
            return "FINAL(from a child)"
        return "a plain answer"

    result, events, bodies = run_with(policy, tmp_path, run_id, depth=2, recursion="explicit")
    assert result.status == "ok" and result.nodes == 3, result
    kinds = sorted(e["kind"] for e in events if e["event"] == "sub_call" and e["node"] == "root")
    assert kinds == ["lm", "rlm", "rlm"]
    assert "rlm_query(prompt)" in bodies[0]["messages"][0]["content"]
    out = next(e for e in events if e["event"] == "cell" and e["node"] == "root")["output"]
    assert "a plain answer ['from a child', 'from a child']" in out


def test_the_cli_takes_tools_and_a_schema(scripted, tmp_path: Path) -> None:
    from ..helpers import cli, json_out

    (tmp_path / "my_tools.py").write_text(
        "def price(item: str) -> float:\n    '''The price of an item.'''\n    return {'apple': 0.5}[item]\n"
        "TOOLS = {'price': price}\n"
    )
    schema = tmp_path / "answer.json"
    schema.write_text(
        json.dumps({"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]})
    )

    def policy(request: dict[str, Any]) -> str:
        return cell("FINAL({'total': price('apple') * 4})")

    server = scripted(policy)
    src = tmp_path / "in.txt"
    src.write_text("4 apples\n")
    proc = cli(
        "run", "--model", server.model_name, "--api-base", server.url, "--task", "What do they cost?",
        "-i", str(src), "--tools", "my_tools:TOOLS", "--schema", str(schema), "--json",
        env={"OPENAI_API_KEY": server.api_key, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    out = json_out(proc)
    assert out["status"] == "ok" and json.loads(out["answer"]) == {"total": 2.0}, proc.stderr.decode()[-1500:]
    assert "run on this machine" in " ".join(proc.stderr.decode().split())
