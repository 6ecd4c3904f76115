"""`rlm-sandbox trace show|summary|html` on the traces of real runs: a deep tree and a budget stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlm_sandbox.cli.main import main

from ..trace_runs import traced_run

pytestmark = pytest.mark.docker


def trace_nodes(trace: Path) -> dict[str, dict]:
    """node id -> its node_end event plus its parent, read straight from the file."""
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    parents = {e["node"]: e["parent"] for e in events if e["event"] == "node_begin"}
    return {e["node"]: {**e, "parent": parents[e["node"]]} for e in events if e["event"] == "node_end"}


def test_show_summary_html_of_a_depth_3_run(scripted, gen_log, run_id: str, tmp_path: Path) -> None:
    stats = gen_log(1_000_000)
    trace = tmp_path / "deep.jsonl"
    result = traced_run(scripted(), stats.path, trace, run_id, depth=3)
    assert result.ok and result.answer == str(stats.disk_errors), result
    ends = trace_nodes(trace)
    assert len(ends) == result.nodes == 21
    runner = CliRunner()

    shown = runner.invoke(main, ["trace", "show", str(trace)], terminal_width=160)
    assert shown.exit_code == 0, shown.output
    for node, end in ends.items():
        assert f"{node}  done  depth {end['depth']}  {end['steps']} steps" in shown.output
    assert f"final answer: {stats.disk_errors}" in shown.output
    assert f"{result.lm_calls} lm calls" in shown.output and run_id in shown.output

    child = next(n for n, e in ends.items() if e["depth"] == 1)
    focus = runner.invoke(main, ["trace", "show", str(trace), "--node", child], terminal_width=160)
    assert focus.exit_code == 0, focus.output
    inside = {n for n in ends if f"{n}  done" in focus.output}
    assert inside == {child} | {n for n, e in ends.items() if e["parent"] == child}
    first_branch = next(line for line in focus.output.splitlines() if line.startswith(("└──", "├──")))
    assert len(inside) == 1 + 4 and first_branch.startswith(f"└── {child}  done")
    assert f"answer: {ends[child]['answer']}" in focus.output and "root  done" not in focus.output

    summary = runner.invoke(main, ["trace", "summary", str(trace)], terminal_width=160)
    assert summary.exit_code == 0, summary.output
    rows = {
        ln.split()[0]: ln.split()
        for ln in summary.output.splitlines()
        if ln.split()[:1] in (["0"], ["1"], ["2"], ["all"])
    }
    assert [rows[d][1] for d in ("0", "1", "2")] == ["1", "4", "16"]  # nodes per depth
    assert [rows[d][2] for d in ("0", "1", "2")] == ["1", "4", "16"]  # containers per depth
    assert rows["all"][4] == str(result.lm_calls)
    assert "scripted" in summary.output and "slowest cells" in summary.output
    assert "none" in summary.output.split("budget events and errors")[1]

    page = tmp_path / "run.html"
    html = runner.invoke(main, ["trace", "html", str(trace), "-o", str(page)])
    assert html.exit_code == 0 and html.output.strip() == str(page)
    text = page.read_text()
    assert text.count('class="node"') == 21 and text.count('class="bar"') == 21
    assert all(f'data-node="{n}"' in text for n in ends)


def test_budget_stop_shows_in_show_and_summary(scripted, gen_log, run_id: str, tmp_path: Path) -> None:
    stats = gen_log(1_000_000)
    trace = tmp_path / "budget.jsonl"
    result = traced_run(scripted(), stats.path, trace, run_id, depth=2, max_lm_calls=3)
    assert result.status == "budget_exhausted" and result.budget == "max_lm_calls", result
    runner = CliRunner()
    summary = runner.invoke(main, ["trace", "summary", str(trace)], terminal_width=160)
    assert summary.exit_code == 0, summary.output
    problems = summary.output.split("budget events and errors")[1]
    assert "budget: max_lm_calls" in problems and "node error" in problems
    assert f"run {run_id}  budget_exhausted" in summary.output
    shown = runner.invoke(main, ["trace", "show", str(trace)], terminal_width=160)
    assert shown.exit_code == 0, shown.output
    assert "root  error" in shown.output and "run error:" in shown.output
    assert "BudgetExhausted" in shown.output
