"""The trace model and its terminal views, on synthetic traces: whole, cut short, corrupt."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from rlm_sandbox.cli.main import main
from rlm_sandbox.trace.html import render_html
from rlm_sandbox.trace.render import show, summary
from rlm_sandbox.trace.tree import TraceFileError, build, load


def ev(event: str, t: float, **fields: Any) -> dict[str, Any]:
    return {"event": event, "run": "run-x", "t": t, "ts": 1000.0 + t, **fields}


def lm(
    node: str, depth: int, t: float, purpose: str = "step", model: str = "m-root", **kw: Any
) -> list[dict]:
    call = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "cost_usd": 0.01,
        "latency_s": 0.5,
        "response": "r",
        **kw,
    }
    return [
        ev("lm_start", t, node=node, depth=depth, purpose=purpose, model=f"openai/{model}"),
        ev("lm_call", t + 0.5, node=node, depth=depth, purpose=purpose, model=model, **call),
    ]


def node_events(node: str, parent: str | None, depth: int, t0: float, t1: float, **end: Any) -> tuple:
    begin = [
        ev("node_begin", t0, node=node, parent=parent, depth=depth),
        ev(
            "node_start",
            t0 + 0.1,
            node=node,
            parent=parent,
            depth=depth,
            container=f"c-{node}" * 4,
            start_s=0.1,
            pooled=parent is not None,
            task=f"task of {node}",
        ),
    ]
    fields = {"status": "done", "steps": 2, "answer": f"answer of {node}", "error": None, "wall_s": t1 - t0}
    fields.update(end)
    return begin, [ev("node_end", t1, node=node, depth=depth, **fields)]


def cell(node: str, depth: int, t0: float, t1: float, step: int = 1, index: int = 0, **kw: Any) -> list[dict]:
    code = kw.pop("code", f"print('{node}')")
    fields = {"output": f"out of {node}", "error": None, "duration_s": t1 - t0, "wall_s": t1 - t0}
    fields.update(kw)
    return [
        ev("cell_start", t0, node=node, depth=depth, step=step, index=index, code=code),
        ev("cell", t1, node=node, depth=depth, step=step, index=index, code=code, timed_out=False, **fields),
    ]


def full_run() -> list[dict[str, Any]]:
    """root (depth 0) spawns n1 and n2 from its first cell; n1 spawns n3; n2's cell fails."""
    r_begin, r_end = node_events("root", None, 0, 0.0, 10.0, answer="42")
    a_begin, a_end = node_events("n1", "root", 1, 2.0, 6.0)
    b_begin, b_end = node_events("n2", "root", 1, 2.1, 5.0, status="error", error="BudgetExhausted: out")
    c_begin, c_end = node_events("n3", "n1", 2, 3.0, 4.0)
    events = [
        ev(
            "run_start",
            0.0,
            model="openai/m-root",
            sub_model="openai/m-sub",
            task="count",
            depth=3,
            max_steps=5,
        ),
        *r_begin,
        *lm("root", 0, 0.5),
        ev("cell_start", 1.5, node="root", depth=0, step=1, index=0, code="llm_query_batched(parts)"),
        ev("sub_call", 1.9, node="root", depth=0, kind="rlm", prompt_chars=1000),
        ev("sub_call", 1.9, node="root", depth=0, kind="rlm", prompt_chars=500),
        *a_begin,
        *b_begin,
        *lm("n1", 1, 2.2, model="m-sub"),
        *lm("n2", 1, 2.3, model="m-sub"),
        *cell("n1", 1, 2.8, 4.5, code="llm_query(x)"),
        *c_begin,
        *lm("n3", 2, 3.1, model="m-sub"),
        *lm("n3", 2, 3.2, purpose="sub_call", model="m-sub", prompt_tokens=1000, completion_tokens=1),
        ev("sub_call", 3.15, node="n3", depth=2, kind="lm", prompt_chars=4000),
        *c_end,
        *cell("n2", 1, 2.9, 4.9, error="ZeroDivisionError: division by zero"),
        *b_end,
        *a_end,
        ev(
            "cell",
            7.0,
            node="root",
            depth=0,
            step=1,
            index=0,
            code="llm_query_batched(parts)",
            output="ok",
            error=None,
            duration_s=5.5,
            wall_s=5.5,
            timed_out=False,
        ),
        *lm("root", 0, 7.5),
        *r_end,
        ev("budget", 10.1, status="budget_exhausted", budget="max_cost", error="cost limit"),
        ev("run_end", 10.2, answer="42", status="ok", error=None, wall_s=10.2),
    ]
    return events


def write(path: Path, events: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + tail, encoding="utf-8")
    return path


def text_of(renderable: Any) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_tree_shape_and_cells_that_spawned_children() -> None:
    run = build(full_run())
    assert [n.id for n in run.roots] == ["root"]
    root = run.nodes["root"]
    assert [c.id for c in root.children] == ["n1", "n2"]
    assert [c.id for c in run.nodes["n1"].children] == ["n3"]
    assert [n.id for n in run.walk()] == ["root", "n1", "n3", "n2"]
    assert root.cells[0].children == ["n1", "n2"]  # begun while root's cell 1.1 ran
    assert run.nodes["n1"].cells[0].children == ["n3"]
    assert run.nodes["n2"].cells[0].children == []
    assert run.nodes["n2"].status == "error" and "BudgetExhausted" in (run.nodes["n2"].error or "")
    assert root.sub_calls == {"rlm": 2} and root.sub_call_chars == 1500
    assert run.complete and run.status == "ok" and run.answer == "42"
    assert run.nodes["n3"].container == "c-n3" * 4 and run.nodes["n3"].pooled is True


def test_aggregates_per_node_subtree_depth_and_model() -> None:
    run = build(full_run())
    root, n1 = run.nodes["root"], run.nodes["n1"]
    assert (root.own.lm_calls, root.own.tokens) == (2, 220)
    assert n1.total.lm_calls == 1 + 2 and n1.total.tokens == 110 + 110 + 1001
    assert root.total.lm_calls == 6 and root.total.cost_usd == pytest.approx(0.06)
    assert run.total().tokens == root.total.tokens
    depth = run.by_depth()
    assert list(depth) == [0, 1, 2]
    assert (depth[1].nodes, depth[1].containers, depth[1].lm_calls, depth[1].errors) == (2, 2, 2, 1)
    assert depth[2].sub_lm_calls == 1 and depth[2].steps == 2
    assert depth[0].cell_s == pytest.approx(5.5)
    models = run.by_model()
    assert list(models) == ["m-sub", "m-root"]  # most calls first; the server's name, not lm_start's
    assert (models["m-sub"].lm_calls, models["m-sub"].nodes, models["m-root"].nodes) == (4, 3, 1)
    assert models["m-root"].lm_s == pytest.approx(1.0)
    slow = run.slowest_cells(2)
    assert [(c.node, c.duration_s) for c in slow] == [("root", 5.5), ("n2", pytest.approx(2.0))]
    assert run.elapsed(n1) == pytest.approx(4.0)
    assert [p["event"] for p in run.problems] == ["budget"]


def test_truncated_trace_keeps_open_nodes_cells_and_calls(tmp_path: Path) -> None:
    events = full_run()
    cut = next(i for i, e in enumerate(events) if e["event"] == "cell" and e["node"] == "n1")
    path = write(tmp_path / "cut.jsonl", events[:cut], tail='{"event": "lm_call", "node": "n')
    run = load(path)
    assert not run.complete and run.status == "incomplete" and run.skipped_lines == 1
    assert {n.id for n in run.open_nodes()} == {"root", "n1", "n2"}
    n1 = run.nodes["n1"]
    assert n1.status == "running" and n1.steps == 1  # counted from its step calls
    assert not n1.cells[0].finished and n1.cells[0].output is None
    assert run.elapsed(n1) == pytest.approx(run.last_t - 2.0)
    assert run.answer is None
    out = text_of(show(run))
    assert "no node_end" in out and "the trace ends here" in out and "no run_end" in out
    assert "1 unreadable line(s) skipped" in text_of(summary(run))


def test_lost_starts_unknown_events_orphans_and_cycles() -> None:
    events = [
        ev("lm_call", 1.0, node="n7", depth=1, purpose="step", model="x", prompt_tokens=5),
        ev("node_end", 2.0, node="n7", depth=1, status="done", steps=1, answer="a", wall_s=1.5),
        ev("node_begin", 0.0, node="n8", parent="n9", depth=2),
        ev("node_begin", 0.0, node="n9", parent="n8", depth=2),
        ev("future_event", 3.0, node="root", shiny=True),
        ev("lm_error", 3.5, node="n7", depth=1, model="x", error="401 bad key"),
        {"no": "event"},
        ev("cell", 2.5, node="n7", depth=1, step="1", index=None, duration_s="slow"),
    ]
    run = build(events)
    assert {n.id for n in run.roots} == {"n7", "n8"}
    assert [n.id for n in run.walk()].count("n9") == 1  # the cycle is cut, nothing is lost
    n7 = run.nodes["n7"]
    assert n7.own.tokens == 5 and n7.t_begin == pytest.approx(0.5)
    assert n7.lm_errors == ["401 bad key"] and run.problems[0]["event"] == "lm_error"
    assert n7.cells == []  # a cell whose step is text is malformed: counted, not used
    assert run.unknown_events == {"future_event": 1, "cell (malformed)": 1}
    out = text_of(show(run))
    assert "future_event" in out and "401 bad key" in out


def test_show_focus_and_markup_in_trace_text_is_literal(tmp_path: Path) -> None:
    events = full_run()
    events.insert(
        -3,
        ev(
            "cell",
            9.0,
            node="root",
            depth=0,
            step=2,
            index=0,
            code="print('[bold]x[/]')",
            output="[red]not red[/red] [/]",
            error=None,
            duration_s=0.1,
            wall_s=0.1,
        ),
    )
    path = write(tmp_path / "t.jsonl", events)
    runner = CliRunner()
    whole = runner.invoke(main, ["trace", "show", str(path)])
    assert whole.exit_code == 0, whole.output
    for node in ("root", "n1", "n2", "n3"):
        assert f"{node}  " in whole.output
    assert "answer: 42" in whole.output and "final answer: 42" in whole.output
    assert "[red]not red[/red] [/]" in whole.output and "print('[bold]x[/]')" in whole.output
    assert "ZeroDivisionError" in whole.output and "sub-calls: 2 → child RLM nodes" in whole.output
    focus = runner.invoke(main, ["trace", "show", str(path), "--node", "n1"])
    assert focus.exit_code == 0, focus.output
    assert "n1  done" in focus.output and "n3  done" in focus.output
    assert "root  done" not in focus.output and "n2  " not in focus.output
    assert "final answer" not in focus.output
    missing = runner.invoke(main, ["trace", "show", str(path), "--node", "n99"])
    assert missing.exit_code == 2
    assert "error: no node 'n99'" in missing.output and "root, n1, n3, n2" in missing.output


def test_summary_tables(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", full_run())
    result = CliRunner().invoke(main, ["trace", "summary", str(path)], terminal_width=120)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "per depth" in out and "per model" in out and "slowest cells" in out
    assert "m-sub" in out and "m-root" in out and "$0.0600" in out
    lines = out.splitlines()
    depth_rows = [ln.split() for ln in lines if ln.split()[:1] in (["0"], ["1"], ["2"], ["all"])]
    assert depth_rows[1][:5] == ["1", "2", "2", "4", "2"]  # depth 1: nodes, containers, steps, calls
    assert depth_rows[-1][:2] == ["all", "4"]
    slow = lines[lines.index(next(ln for ln in lines if "slowest cells" in ln)) + 3]
    assert slow.split()[:3] == ["root", "1.1", "5.50s"] and "llm_query_batched" in slow
    assert "budget: max_cost" in out and "cost limit" in out
    assert "cell error" in out and "ZeroDivisionError" in out and "node error" in out


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p, "trace file not found"),
        (lambda p: (p.write_text(""), p)[1], "is empty"),
        (lambda p: (p.write_text("hello\nworld\n"), p)[1], "no trace events"),
        (lambda p: (p.write_text('[1, 2]\n{"x": 1}\n'), p)[1], "no trace events"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
    ],
)
def test_unreadable_files_one_line_error_exit_2(tmp_path: Path, setup: Any, message: str) -> None:
    path = setup(tmp_path / "trace.jsonl")
    with pytest.raises(TraceFileError, match=message):
        load(path)
    for command in (["show"], ["summary"], ["html", "-o", str(tmp_path / "x.html")]):
        result = CliRunner().invoke(main, ["trace", *command, str(path)])
        assert result.exit_code == 2, result.output
        lines = result.output.splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and message in lines[0]
        assert lines[1].startswith("hint: ") and "Traceback" not in result.output
    assert not (tmp_path / "x.html").exists()


class Tags(HTMLParser):
    """Every real tag of a page with its attributes, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append((tag, attrs))


def test_html_escapes_untrusted_text_and_loads_nothing() -> None:
    evil = '</script><script>alert(1)</script><img src=x onerror="alert(2)">&amp;'
    events = full_run()
    events.append(
        ev(
            "cell",
            9.5,
            node="root",
            depth=0,
            step=3,
            index=0,
            code=evil,
            output=evil,
            error=evil,
            duration_s=0.1,
            wall_s=0.1,
        )
    )
    events.append(ev("node_begin", 9.6, node=evil, parent="root", depth=1))
    events[0]["task"] = evil
    page = render_html(build(events))
    assert "<img" not in page and "alert(1)</script>" not in page and 'onerror="' not in page
    assert page.count("<script") == 1 and "&lt;/script&gt;&lt;script&gt;alert(1)" in page
    assert "&amp;amp;" in page
    assert "http://" not in page and "https://" not in page
    tags = Tags()
    tags.feed(page)
    loads = [
        (tag, name, value) for tag, attrs in tags.seen for name, value in attrs if name in ("src", "href")
    ]
    assert loads == [("link", "href", "data:,")]
    assert not [name for _, attrs in tags.seen for name, _ in attrs if name.startswith("on")]
    assert [tag for tag, _ in tags.seen].count("script") == 1 and "img" not in [t for t, _ in tags.seen]
    csp = next(
        dict(a)["content"] for t, a in tags.seen if dict(a).get("http-equiv") == "Content-Security-Policy"
    )
    assert csp is not None and csp.startswith("default-src 'none'; style-src 'sha256-")
    assert "script-src 'sha256-" in csp and "unsafe" not in csp


def test_newer_events_are_known_and_tool_calls_are_counted() -> None:
    from rlm_sandbox.trace.tree import build

    events = [
        {"event": "run_start", "run": "r", "t": 0.0, "model": "m", "depth": 1},
        {"event": "node_begin", "run": "r", "t": 0.1, "node": "root", "parent": None, "depth": 0},
        {"event": "tool_call", "run": "r", "t": 0.2, "node": "root", "depth": 0, "tool": "lookup"},
        {"event": "tool_call", "run": "r", "t": 0.3, "node": "root", "depth": 0, "tool": "lookup"},
        {"event": "compaction", "run": "r", "t": 0.4, "node": "root", "depth": 0},
        {"event": "fallback", "run": "r", "t": 0.5, "node": "root", "budget": "max_steps"},
        {"event": "node_end", "run": "r", "t": 0.6, "node": "root", "depth": 0, "status": "done"},
        {"event": "run_end", "run": "r", "t": 0.7, "status": "ok"},
    ]
    run = build(events)
    assert run.unknown_events == {}
    assert run.nodes["root"].sub_calls == {"tool:lookup": 2}


def test_the_first_model_call_is_shown_and_unknown_events_do_not_break_the_tools(tmp_path: Path) -> None:
    """``lm_ready`` (the run could call the model) and ``lm_sent`` (its first request went
    out) appear in the header; an event from a newer version is counted and named, and no view
    crashes on it."""
    events = full_run()
    events.insert(1, ev("lm_ready", 0.05, node="root", depth=0, model="openai/m-root"))
    events.insert(2, ev("lm_sent", 0.25, node="root", depth=0, model="openai/m-root"))
    events.insert(2, ev("lm_from_the_future", 0.06, node="root", depth=0, payload={"x": [1, 2]}))
    events.insert(3, ev("another_new_one", 0.07))
    run = build(events)
    assert run.unknown_events == {"another_new_one": 1, "lm_from_the_future": 1}
    assert run.lm_ready_t == 0.05 and run.first_request_t == 0.25
    shown = text_of(show(run))
    assert "ready to call the model at +0.05 s" in shown and "first request at +0.25 s" in shown
    assert "lm_from_the_future x1" in shown
    assert "calls" in text_of(summary(run))
    assert "<html" in render_html(run)
    path = write(tmp_path / "t.jsonl", events)
    for args in (
        ["trace", "show", str(path)],
        ["trace", "summary", str(path)],
        ["trace", "html", str(path), "-o", str(tmp_path / "t.html")],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
