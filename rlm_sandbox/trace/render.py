"""Terminal views of a trace: the node tree (``trace show``) and the cost tables (``trace summary``).

Every piece of trace text goes into :class:`rich.text.Text` objects, never into markup
strings: model-written code and output may contain ``[bold]``-like brackets, which would
otherwise be read as styling (or raise on a stray ``[/]``). The trace reaches these views
with every string already made visible (``trace_tree.load(clean=safe_text.visible_data)``),
so no escape sequence in it reaches the terminal either.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from rlm_sandbox.trace.model import Cell, Exchange, Node, RunTrace, Totals

STATUS_STYLE = {"done": "green", "ok": "green", "error": "red", "running": "yellow", "incomplete": "yellow"}


def fmt_tokens(n: int) -> str:
    """A count as a person reads it: 950, 1.6k, 68.9k, 11.8M, 2.1B. The one formatter of
    token counts for every view (trace show/summary, the live tree, the HTML page)."""
    if n < 1000:
        return str(n)
    for scale, unit in ((1e3, "k"), (1e6, "M"), (1e9, "B")):
        value = round(n / scale, 1)
        if value < 1000 or unit == "B":  # 999,960 is 1.0M, never 1000.0k
            return f"{value:.1f}{unit}"
    raise AssertionError("unreachable")


def fmt_bytes(n: float) -> str:
    """A size as a person reads it: 512 B, 4.2 MB, 1.1 GB."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_cost(usd: float) -> str:
    return f"${usd:.4f}"


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s"


def excerpt(text: str | None, lines: int = 3, width: int = 100) -> str:
    """The first lines of ``text``, each cut to ``width``, with a note of what was left out."""
    if not text:
        return ""
    all_lines = text.rstrip("\n").splitlines() or [""]
    shown = [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in all_lines[:lines]]
    if len(all_lines) > lines:
        shown.append(f"… ({len(all_lines) - lines} more lines)")
    return "\n".join(shown)


def one_line(text: str | None, width: int = 80) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "bold"))


def node_label(run: RunTrace, node: Node) -> Text:
    own, total = node.own, node.total
    tokens = fmt_tokens(own.tokens)
    cost = fmt_cost(own.cost_usd)
    if node.children:
        tokens += f" (subtree {fmt_tokens(total.tokens)})"
        cost += f" (subtree {fmt_cost(total.cost_usd)})"
    label = Text.assemble(
        (node.id, "bold cyan"),
        "  ",
        _status(node.status),
        f"  depth {node.depth}  {node.steps} steps  {own.lm_calls} lm calls  {tokens} tok  {cost}  ",
        f"{fmt_s(run.elapsed(node))}",
    )
    if node.status == "running":
        label.append("  (no node_end: the trace stops here)", style="yellow")
    if node.container:
        label.append(f"  container {node.container[:12]}", style="dim")
        if node.pooled:
            label.append(" (pooled)", style="dim")
    return label


def _cell_branch(parent: Tree, cell: Cell, run: RunTrace, seen: set[str]) -> None:
    if not cell.finished:
        state = Text("no result (the trace ends here)", style="yellow")
    elif cell.timed_out:
        state = Text("timed out", style="red")
    elif cell.error:
        state = Text("error", style="red")
    else:
        state = Text("ok", style="green")
    head = Text.assemble(("cell ", "yellow"), cell.label, "  ", state, f"  {fmt_s(cell.duration_s)}")
    branch = parent.add(head)
    if cell.code:
        branch.add(Text(excerpt(cell.code, 4), style="dim"))
    if cell.output:
        branch.add(Text.assemble(("→ ", "bold"), excerpt(cell.output, 3)))
    if cell.error:
        branch.add(Text.assemble(("error: ", "red"), excerpt(cell.error, 4)))
    for child_id in cell.children:
        child = run.find(child_id)
        if child is not None:
            _node_branch(branch, child, run, seen)


def _node_branch(parent: Tree, node: Node, run: RunTrace, seen: set[str]) -> None:
    seen.add(node.id)
    branch = parent.add(node_label(run, node))
    if node.task and node.parent is not None:
        branch.add(Text.assemble(("task: ", "dim"), one_line(node.task, 100)))
    for cell in node.cells:
        if not cell.question:
            _cell_branch(branch, cell, run, seen)
    for q in node.questions:
        _question_branch(branch, node, q, run, seen)
    if node.sub_calls:
        parts = [
            f"{n} → {'child RLM nodes' if k == 'rlm' else 'sub-LM' if k == 'lm' else k}"
            for k, n in sorted(node.sub_calls.items())
        ]
        branch.add(
            Text(
                f"sub-calls: {', '.join(parts)} ({fmt_tokens(node.sub_call_chars)} prompt chars)",
                style="magenta",
            )
        )
    for child in node.children:
        if child.id not in seen:
            _node_branch(branch, child, run, seen)
    for err in node.lm_errors:
        branch.add(Text.assemble(("model error: ", "red"), one_line(err, 160)))
    if node.error:
        branch.add(Text.assemble(("error: ", "bold red"), excerpt(node.error, 4, 160)))
    if node.answer is not None:
        branch.add(Text.assemble(("answer: ", "bold green"), excerpt(node.answer, 4, 160)))


def _question_branch(parent: Tree, node: Node, q: Exchange, run: RunTrace, seen: set[str]) -> None:
    """A session's question, the cells that worked on it, and its answer (or why none)."""
    branch = parent.add(Text.assemble((f"question {q.number}: ", "bold"), excerpt(q.question, 3, 160)))
    for cell in node.cells:
        if cell.question == q.number:
            _cell_branch(branch, cell, run, seen)
    if q.status is None:
        branch.add(Text("no answer (the trace ends here)", style="yellow"))
        return
    if q.answer is not None:
        label = "answer: " if q.status == "ok" else f"answer ({q.status}): "
        branch.add(Text.assemble((label, "bold green"), excerpt(q.answer, 4, 160)))
    if q.status != "ok":
        detail = one_line(q.error, 200) if q.error else ""
        branch.add(Text.assemble((f"{q.status}", "bold red"), f": {detail}" if detail else ""))


def run_header(run: RunTrace) -> Text:
    start = run.start
    total = run.total()
    head = Text.assemble(
        ("run ", "bold"),
        (run.run_id or "?", "bold"),
        "  ",
        _status(run.status),
        f"  model {start.get('model', '?')}",
    )
    if start.get("sub_model") and start.get("sub_model") != start.get("model"):
        head.append(f" (sub {start.get('sub_model')})")
    head.append(
        f"\ndepth {start.get('depth', '?')}  {total.nodes} nodes  {total.lm_calls} lm calls  "
        f"{fmt_tokens(total.tokens)} tok  {fmt_cost(total.cost_usd)}  {fmt_s(run.wall_s)}"
    )
    if run.lm_ready_t is not None or run.first_request_t is not None:
        began = _opt_t(start.get("t"))
        parts = []
        if run.lm_ready_t is not None:
            parts.append(f"ready to call the model at +{run.lm_ready_t - began:.2f} s")
        if run.first_request_t is not None:
            parts.append(f"first request at +{run.first_request_t - began:.2f} s")
        head.append("\n" + ", ".join(parts), style="dim")
    if start.get("task"):
        head.append("\ntask ", style="dim")
        head.append(one_line(str(start["task"]), 120))
    return head


def _opt_t(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def show(run: RunTrace, node_id: str | None = None) -> RenderableType:
    """The whole run, or the subtree under ``node_id`` (the caller checks that it exists)."""
    tree = Tree(run_header(run), guide_style="dim")
    seen: set[str] = set()
    tops = [run.nodes[node_id]] if node_id is not None else run.roots
    for node in tops:
        _node_branch(tree, node, run, seen)
    parts: list[RenderableType] = [tree]
    if node_id is None:
        parts.extend(_footer(run))
    return Group(*parts)


def _footer(run: RunTrace) -> list[Text]:
    lines = []
    if run.answer is not None and run.end is not None:
        lines.append(Text.assemble(("final answer: ", "bold green"), excerpt(run.answer, 6, 160)))
    if run.end is not None and run.end.get("error"):
        lines.append(Text.assemble(("run error: ", "bold red"), one_line(str(run.end["error"]), 200)))
    lines.extend(_citation_lines(run))
    if run.cache_hits:
        lines.append(Text(f"{run.cache_hits} model request(s) answered from the response cache", style="dim"))
    for warning in run.warnings[:10]:
        lines.append(Text.assemble(("warning: ", "yellow"), one_line(warning, 200)))
    lines.extend(_notes(run))
    return lines


CITATIONS_SHOWN = 50


def _citation_lines(run: RunTrace) -> list[Text]:
    """The answer's citations as the host checked them: ``file:line: text``, or the reason."""
    citations = run.citations
    if not citations:
        return []
    ok = sum(c["verified"] for c in citations)
    lines = [Text(f"citations: {ok} verified, {len(citations) - ok} refused", style="bold")]
    for c in citations[:CITATIONS_SHOWN]:
        where = f"{one_line(c['file'], 120)}:{c['line']}: "
        if c["verified"]:
            lines.append(Text.assemble(("  ✓ ", "green"), where, one_line(c["text"] or "", 160)))
        else:
            lines.append(
                Text.assemble(("  ✗ ", "red"), where, (one_line(c["reason"] or "refused", 160), "red"))
            )
    if len(citations) > CITATIONS_SHOWN:
        lines.append(Text(f"  ... and {len(citations) - CITATIONS_SHOWN} more", style="dim"))
    return lines


def _notes(run: RunTrace) -> list[Text]:
    notes = []
    if not run.complete:
        notes.append(Text("the trace has no run_end: the run crashed or is still running", style="yellow"))
    if run.skipped_lines:
        notes.append(Text(f"{run.skipped_lines} unreadable line(s) skipped", style="yellow"))
    if run.unknown_events:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(run.unknown_events.items()))
        notes.append(Text(f"events this reader does not know (ignored): {kinds}", style="dim"))
    return notes


def _secs(seconds: float) -> str:
    """Seconds for narrow table cells."""
    return f"{seconds:.2f}s" if seconds < 100 else f"{seconds:.0f}s"


DEPTH_COLUMNS = ("depth", "nodes", "ctrs", "steps", "calls", "tokens", "cost", "lm s", "cells", "cell s")
MODEL_COLUMNS = ("model", "nodes", "calls", "sub-LM", "prompt", "compl.", "cost", "lm s")


def _depth_row(label: str, t: Totals) -> list[str]:
    return [
        label,
        str(t.nodes),
        str(t.containers),
        str(t.steps),
        str(t.lm_calls),
        fmt_tokens(t.tokens),
        fmt_cost(t.cost_usd),
        _secs(t.lm_s),
        str(t.cells),
        _secs(t.cell_s),
    ]


def _model_row(label: str, t: Totals) -> list[str]:
    return [
        label,
        str(t.nodes),
        str(t.lm_calls),
        str(t.sub_lm_calls),
        fmt_tokens(t.prompt_tokens),
        fmt_tokens(t.completion_tokens),
        fmt_cost(t.cost_usd),
        _secs(t.lm_s),
    ]


def _table(title: str, columns: tuple[str, ...], rows: list[list[str]], footer: list[str] | None) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        show_footer=footer is not None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0, 0, 1),
    )
    for i, name in enumerate(columns):
        # Numbers must never be cut to "$0.0…": size each column to its widest cell.
        widest = max(len(r[i]) for r in [[*columns], *rows, footer or [""] * len(columns)])
        table.add_column(
            name,
            footer=footer[i] if footer else "",
            justify="left" if i == 0 else "right",
            min_width=widest,
            no_wrap=True,
        )
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def summary(run: RunTrace) -> RenderableType:
    total = run.total()
    parts: list[RenderableType] = [run_header(run)]
    if run.answer is not None:
        parts.append(Text.assemble(("answer: ", "bold green"), one_line(run.answer, 160)))
    depth_rows = [_depth_row(str(d), t) for d, t in run.by_depth().items()]
    parts.append(_table("per depth", DEPTH_COLUMNS, depth_rows, _depth_row("all", total)))
    model_rows = [_model_row(m, t) for m, t in run.by_model().items()]
    parts.append(_table("per model (nodes: how many nodes called it)", MODEL_COLUMNS, model_rows, None))
    parts.append(_slowest_table(run))
    parts.append(_problems_table(run))
    parts.extend(_notes(run))
    return Group(*parts)


def _slowest_table(run: RunTrace) -> Table:
    table = Table(title="slowest cells", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    rows = []
    for cell in run.slowest_cells(5):
        status = "timed out" if cell.timed_out else "error" if cell.error else "ok"
        rows.append([cell.node, cell.label, _secs(cell.duration_s or 0.0), status])
    for i, name in enumerate(("node", "step", "duration", "status")):
        widest = max([len(name), *(len(r[i]) for r in rows)])
        table.add_column(name, justify="right" if i == 2 else "left", min_width=widest, no_wrap=True)
    table.add_column("code", overflow="fold")
    for row, cell in zip(rows, run.slowest_cells(5), strict=True):
        table.add_row(*(Text(v) for v in row), Text(one_line(cell.code, 60)))
    if not table.rows:
        table.caption = "no finished cells in this trace"
    return table


def _problems_table(run: RunTrace) -> Table:
    """Budget stops, run errors, model errors, failed nodes and failed cells, in one place."""
    table = Table(
        title="budget events and errors",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        min_width=40,
    )
    for name in ("where", "kind", "detail"):
        table.add_column(name)
    for ev in run.problems:
        kind = str(ev.get("event"))
        if kind == "budget" and ev.get("budget"):
            kind = f"budget: {ev.get('budget')}"
        table.add_row(
            Text(str(ev.get("node") or "run")), Text(kind), Text(one_line(str(ev.get("error")), 120))
        )
    for node in run.walk():
        if node.status == "error":
            table.add_row(Text(node.id), "node error", Text(one_line(node.error, 120)))
        elif node.status == "running":
            table.add_row(Text(node.id), "unfinished", Text("no node_end in the trace"))
        for cell in node.cells:
            if cell.timed_out or cell.error:
                kind = "cell timed out" if cell.timed_out else "cell error"
                table.add_row(Text(f"{node.id} {cell.label}"), kind, Text(one_line(cell.error, 120)))
    if not table.rows:
        table.caption = "none"
    return table
