"""Host tools (rlm/tools.py): names checked, JSON in and out, the tool's exception type back in
the cell, every call traced and counted; ``load_tools`` forms; and the same through a cell in
the fake kernel, whose proxies are the real REPL's."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.errors import BudgetExhausted, ConfigError
from rlm_sandbox.rlm.tools import MAX_JSON, ToolSet, load_tools
from rlm_sandbox.trace.tree import build

from ..helpers import cells_then_final, root_then_policy
from .seam import is_node


def _sync_call(tools: ToolSet, *args: Any, **kwargs: Any) -> str:
    return asyncio.run(tools.acall(*args, **kwargs))


async def alookup(table: str, key: str) -> dict[str, Any]:
    """An async tool is awaited."""
    return lookup(table, key)


def test_async_tools_are_awaited() -> None:
    out = _sync_call(
        ToolSet({"alookup": alookup}),
        "alookup",
        '{"args": ["users", "ada"], "kwargs": {}}',
        reserve=lambda: None,
        trace=lambda fields: None,
    )
    assert json.loads(out) == {"id": 1, "tags": ["x", "y"]}


def lookup(table: str, key: str) -> dict[str, Any]:
    """Look ``key`` up in ``table``."""
    data = {"users": {"ada": {"id": 1, "tags": ["x", "y"]}}}
    return data[table][key]


def _call(tools: ToolSet, name: str, *args: Any, **kwargs: Any) -> tuple[str, list[dict[str, Any]]]:
    traced: list[dict[str, Any]] = []
    out = _sync_call(
        tools,
        name,
        json.dumps({"args": list(args), "kwargs": kwargs}),
        reserve=lambda: None,
        trace=traced.append,
    )
    return out, traced


# ---- ToolSet on its own


def test_tool_names_must_be_public_identifiers_that_hide_nothing() -> None:
    for bad in ("1x", "a-b", "_private", "x" * 65, 3):
        with pytest.raises(ConfigError, match="not a public Python identifier"):
            ToolSet({bad: lookup})  # type: ignore[dict-item]
    for reserved in ("context", "llm_query", "FINAL_VAR", "rlm_query_batched"):
        with pytest.raises(ConfigError, match="would hide the REPL's own"):
            ToolSet({reserved: lookup})
    with pytest.raises(ConfigError, match="not callable"):
        ToolSet({"value": 42})  # type: ignore[dict-item]
    assert not ToolSet(None) and ToolSet({"lookup": lookup})


def test_the_prompt_lists_each_tool_with_its_signature_and_doc() -> None:
    def bare(x):  # type: ignore[no-untyped-def]
        return x

    text = ToolSet({"lookup": lookup, "bare": bare}).describe()
    assert text.splitlines() == [
        "  - `bare(x)`",
        "  - `lookup(table: str, key: str) -> dict[str, typing.Any]`: Look ``key`` up in ``table``.",
    ]


def test_a_call_passes_json_arguments_and_returns_json() -> None:
    out, traced = _call(ToolSet({"lookup": lookup}), "lookup", "users", key="ada")
    assert json.loads(out) == {"id": 1, "tags": ["x", "y"]}
    (record,) = traced
    assert (record["tool"], record["error"]) == ("lookup", None)
    assert json.loads(record["args"]) == {"args": ["users"], "kwargs": {"key": "ada"}}


def test_an_unknown_tool_is_refused_before_the_budget_is_touched() -> None:
    reserved: list[bool] = []
    tools = ToolSet({"lookup": lookup, "other": lookup})
    with pytest.raises(NameError, match=r"no tool named 'nope' \(tools: lookup, other\)"):
        _sync_call(
            tools, "nope", '{"args": [], "kwargs": {}}', reserve=lambda: reserved.append(True), trace=print
        )
    assert reserved == []


def test_arguments_that_are_not_the_expected_json_are_refused() -> None:
    tools = ToolSet({"lookup": lookup})
    for blob in ("not json", '{"args": []}', '{"args": 1, "kwargs": {}}'):
        with pytest.raises(ValueError, match="not valid JSON"):
            _sync_call(tools, "lookup", blob, reserve=lambda: None, trace=print)
    with pytest.raises(ValueError, match="larger than"):
        _sync_call(tools, "lookup", "x" * (MAX_JSON + 1), reserve=lambda: None, trace=print)


def test_the_tools_exception_is_raised_and_traced() -> None:
    tools = ToolSet({"lookup": lookup})
    traced: list[dict[str, Any]] = []
    with pytest.raises(KeyError):
        _sync_call(
            tools,
            "lookup",
            '{"args": ["users", "bob"], "kwargs": {}}',
            reserve=lambda: None,
            trace=traced.append,
        )
    assert traced[0]["error"] == "KeyError: 'bob'" and traced[0]["duration_s"] >= 0


def test_a_result_that_is_not_json_is_a_type_error() -> None:
    tools = ToolSet({"make": lambda: {1, 2}})
    traced: list[dict[str, Any]] = []
    with pytest.raises(TypeError, match="tool make returned a value that is not JSON"):
        _sync_call(tools, "make", '{"args": [], "kwargs": {}}', reserve=lambda: None, trace=traced.append)
    assert traced[0]["error"].startswith("TypeError: tool make returned")


def test_a_refused_reservation_runs_nothing_and_traces_nothing() -> None:
    ran: list[bool] = []
    traced: list[dict[str, Any]] = []

    def spent() -> None:
        raise BudgetExhausted("max_tool_calls", "spent")

    with pytest.raises(BudgetExhausted):
        _sync_call(
            ToolSet({"go": lambda: ran.append(True)}),
            "go",
            '{"args": [], "kwargs": {}}',
            reserve=spent,
            trace=traced.append,
        )
    assert ran == [] and traced == []


# ---- load_tools


@pytest.fixture
def tools_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"unit_tools_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        "def add(a, b):\n    return a + b\n\n"
        "def neg(a):\n    return -a\n\n"
        "TOOLS = {'plus': add}\nLIST = [add, neg]\nNUMBER = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_tools_takes_a_dict_a_list_or_one_function(tools_module: str) -> None:
    assert list(load_tools(f"{tools_module}:TOOLS")) == ["plus"]
    assert list(load_tools(f"{tools_module}:LIST")) == ["add", "neg"]
    assert list(load_tools(f"{tools_module}:neg")) == ["neg"]


def test_load_tools_refuses_what_it_cannot_use(tools_module: str) -> None:
    with pytest.raises(ConfigError, match="is not module:attr") as info:
        load_tools(tools_module)
    assert "--tools mytools:TOOLS" in info.value.hint
    with pytest.raises(ConfigError, match="cannot load tools"):
        load_tools("no_such_module_anywhere:TOOLS")
    with pytest.raises(ConfigError, match="cannot load tools"):
        load_tools(f"{tools_module}:MISSING")
    with pytest.raises(ConfigError, match="not a dict of callables"):
        load_tools(f"{tools_module}:NUMBER")


# ---- from a cell, through the seam


def test_a_tool_called_from_a_cell_returns_its_json_value(seam) -> None:
    code = "row = lookup('users', key='ada')\nprint(type(row).__name__, row['tags'])"
    h = seam(cells_then_final(code), tools={"lookup": lookup})
    assert h.run("abc").status == "ok"
    assert h.named("cell")[0]["output"] == "dict ['x', 'y']"
    (call,) = h.named("tool_call")
    assert (call["node"], call["depth"], call["tool"], call["error"]) == ("root", 0, "lookup", None)


def test_the_tools_exception_type_comes_back_into_the_cell(seam) -> None:
    class Unreachable(Exception):
        pass

    def fails(kind: str) -> None:
        if kind == "value":
            raise ValueError("bad value")
        if kind == "key":
            raise KeyError("missing")
        raise Unreachable("service down")

    code = (
        "for kind in ('value', 'key', 'other'):\n"
        "    try:\n"
        "        fails(kind)\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, str(e))"
    )
    h = seam(cells_then_final(code), tools={"fails": fails})
    h.run("abc")
    assert h.named("cell")[0]["output"].splitlines() == [
        "ValueError bad value",
        "KeyError 'missing'",
        "ToolError Unreachable: service down",
    ]
    assert [e["error"] for e in h.named("tool_call")] == [
        "ValueError: bad value",
        "KeyError: 'missing'",
        "Unreachable: service down",
    ]


def test_tool_calls_are_traced_and_counted_as_sub_calls(seam) -> None:
    h = seam(cells_then_final("for i in range(3):\n    lookup('users', 'ada')"), tools={"lookup": lookup})
    h.run("abc")
    assert len(h.named("tool_call")) == 3
    assert build(h.events).nodes["root"].sub_calls == {"tool:lookup": 3}


def test_a_tool_not_offered_is_refused_at_the_boundary(seam) -> None:
    """A cell that forges a request for a host function it was not given gets a NameError."""
    forged = (
        "try:\n"
        "    llm_query.__self__.link.ask(['{\"args\": [], \"kwargs\": {}}'], kind='tool', name='system')\n"
        "except NameError as e:\n"
        "    print('refused:', e)"
    )
    h = seam(cells_then_final(forged), tools={"lookup": lookup})
    h.run("abc")
    assert h.named("cell")[0]["output"] == "refused: no tool named 'system' (tools: lookup)"
    assert h.named("tool_call") == []


def test_arguments_that_are_not_json_fail_in_the_cell_before_the_host(seam) -> None:
    code = "try:\n    lookup({1, 2}, 'k')\nexcept TypeError as e:\n    print('type error:', 'JSON' in str(e))"
    h = seam(cells_then_final(code), tools={"lookup": lookup})
    h.run("abc")
    assert h.named("cell")[0]["output"] == "type error: True"
    assert h.named("tool_call") == []


def test_tools_survive_a_cell_that_rebinds_or_deletes_them(seam) -> None:
    h = seam(
        cells_then_final("lookup = None", "del lookup", "print(lookup('users', 'ada')['id'])"),
        tools={"lookup": lookup},
    )
    h.run("abc")
    assert [e["output"] for e in h.named("cell")] == ["(no output)", "(no output)", "1"]


def test_the_system_prompt_lists_the_tools(seam) -> None:
    h = seam(cells_then_final(), tools={"lookup": lookup})
    h.run("abc")
    system = h.client.requests[0]["messages"][0]["content"]
    assert "Tools (they run outside the REPL" in system and "`lookup(table: str, key: str)" in system


def test_a_child_node_gets_the_tools_too(seam) -> None:
    def child(request: dict[str, Any]) -> str:
        if not is_node(request):
            return "leaf"
        if any(m["role"] == "assistant" for m in request["messages"]):
            return "FINAL_VAR(found)"
        return "```repl\nfound = lookup('users', 'ada')['id']\n```"

    root = cells_then_final("print(llm_query('find ada'))")
    h = seam(root_then_policy(root, child), tools={"lookup": lookup}, depth=2, pool_size=0)
    assert h.run("abc").status == "ok"
    assert [e["node"] for e in h.named("tool_call")] == ["n2"]
    assert [e["output"] for e in h.named("cell") if e["node"] == "root"] == ["1"]
