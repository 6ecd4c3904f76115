"""``trace html``: the run as one self-contained page, a collapsible node tree and a timeline.

The page is meant to be mailed around and opened from disk, so it loads nothing (inline CSS
and JS, no fonts, no CDN). Trace text is model-written and untrusted: every byte of it goes
through :func:`html.escape` and lands in text or attribute positions only, element ids are
made from counters rather than node names, and a Content-Security-Policy allows only this
page's own script and style (by hash), so even a missed escape could not run a script or
fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

from rlm_sandbox.trace.model import Cell, Node, RunTrace
from rlm_sandbox.trace.render import excerpt, fmt_cost, fmt_s, fmt_tokens, one_line

CSS = """
:root { --ok: #2e7d32; --err: #c62828; --open: #ef6c00; --muted: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .5rem 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; white-space: pre-wrap; word-break: break-word; }
.status-done, .status-ok { color: var(--ok); font-weight: 600; }
.status-error, .status-budget_exhausted, .status-lm_error, .status-sandbox_error { color: var(--err); font-weight: 600; }
.status-running, .status-incomplete { color: var(--open); font-weight: 600; }
ul.tree { list-style: none; margin: 0; padding-left: 1.2rem; border-left: 1px dashed var(--line); }
ul.tree.top { padding-left: 0; border-left: 0; }
details > summary { cursor: pointer; padding: .15rem 0; }
details.node > summary .id { font-weight: 700; color: #1565c0; }
details.node > summary .meta { color: var(--muted); }
details.node.flash > summary { background: #fff59d; }
.body { padding-left: 1.2rem; }
pre { margin: .2rem 0 .4rem; padding: .4rem .6rem; background: #f6f8fa; border-radius: 4px;
      white-space: pre-wrap; word-break: break-word; max-height: 24rem; overflow: auto; font-size: 12.5px; }
pre.output { background: #eef6ee; } pre.error { background: #fdecea; } .answer { color: var(--ok); }
.note { color: var(--open); } .dim { color: var(--muted); }
.toolbar button { margin-right: .5rem; }
svg.timeline { width: 100%; height: auto; border: 1px solid var(--line); background: #fcfcfc; }
svg .axis { stroke: #ccc; } svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg .bar { cursor: pointer; } svg .bar:focus { outline: none; } svg .bar:focus rect.span, svg .bar:hover rect.span { stroke: #000; }
svg rect.span.status-done { fill: #81c784; } svg rect.span.status-error { fill: #e57373; }
svg rect.span.status-running { fill: #ffb74d; } svg rect.cellmark { fill: #33691e; opacity: .55; }
"""

JS = """
(function () {
  "use strict";
  function openTo(el) {
    for (var p = el; p; p = p.parentElement) { if (p.tagName === "DETAILS") { p.open = true; } }
  }
  function setAll(open) {
    document.querySelectorAll("#tree details").forEach(function (d) { d.open = open; });
  }
  document.querySelectorAll("svg .bar").forEach(function (bar) {
    function go() {
      var el = document.getElementById(bar.getAttribute("data-target"));
      if (!el) { return; }
      openTo(el);
      el.scrollIntoView({block: "center"});
      el.classList.add("flash");
      setTimeout(function () { el.classList.remove("flash"); }, 1500);
    }
    bar.addEventListener("click", go);
    bar.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); }
    });
  });
  document.getElementById("expand-all").addEventListener("click", function () { setAll(true); });
  document.getElementById("collapse-all").addEventListener("click", function () { setAll(false); });
  document.body.setAttribute("data-ready", "1");
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _status_class(status: str) -> str:
    """Only known statuses become class names: a trace could carry any string there."""
    known = {"done", "ok", "error", "running", "incomplete", "budget_exhausted", "lm_error", "sandbox_error"}
    return f"status-{status}" if status in known else "status-other"


class _Page:
    def __init__(self, run: RunTrace) -> None:
        self.run = run
        self.ids = {node.id: f"node-{i}" for i, node in enumerate(run.walk())}
        self.placed: set[str] = set()

    # ---- the tree

    def node(self, node: Node) -> str:
        self.placed.add(node.id)
        run = self.run
        own, total = node.own, node.total
        meta = (
            f"depth {node.depth} · {node.steps} steps · {own.lm_calls} lm calls · "
            f"{fmt_tokens(own.tokens)} tok · {fmt_cost(own.cost_usd)} · {fmt_s(run.elapsed(node))}"
        )
        if node.children:
            meta += f" · subtree {fmt_tokens(total.tokens)} tok, {fmt_cost(total.cost_usd)}"
        parts = [
            f'<li><details class="node" id="{self.ids[node.id]}" data-node="{_e(node.id)}"'
            f"{' open' if node.parent is None else ''}>",
            f'<summary><span class="id">{_e(node.id)}</span> '
            f'<span class="{_status_class(node.status)}">{_e(node.status)}</span> '
            f'<span class="meta">{_e(meta)}</span>',
        ]
        if node.answer is not None:
            parts.append(f' <span class="answer">→ {_e(one_line(node.answer, 60))}</span>')
        parts.append('</summary><div class="body">')
        facts = []
        if node.task:
            facts.append(("task", node.task))
        if node.container:
            facts.append(("container", node.container[:12] + (" (pooled)" if node.pooled else "")))
        if node.sub_calls:
            facts.append(("sub-calls", ", ".join(f"{n} {k}" for k, n in sorted(node.sub_calls.items()))))
        if node.status == "running":
            facts.append(("note", "no node_end in the trace: the run stopped while this node ran"))
        if facts:
            parts.append(
                '<dl class="facts">'
                + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
                + "</dl>"
            )
        for cell in node.cells:
            parts.append(self.cell(cell))
        rest = [c for c in node.children if c.id not in self.placed]
        if rest:
            parts.append('<ul class="tree">' + "".join(self.node(c) for c in rest) + "</ul>")
        for err in node.lm_errors:
            parts.append(f'<pre class="error">model error: {_e(err)}</pre>')
        if node.error:
            parts.append(f'<pre class="error">{_e(node.error)}</pre>')
        if node.answer is not None:
            parts.append(f'<div>answer:</div><pre class="output answer">{_e(node.answer)}</pre>')
        parts.append("</div></details></li>")
        return "".join(parts)

    def cell(self, cell: Cell) -> str:
        if not cell.finished:
            state, cls = "no result (the trace ends here)", "status-running"
        elif cell.timed_out:
            state, cls = "timed out", "status-error"
        elif cell.error:
            state, cls = "error", "status-error"
        else:
            state, cls = "ok", "status-ok"
        children = [self.run.find(c) for c in cell.children]
        spawned = [c for c in children if c is not None and c.id not in self.placed]
        summary = (
            f'<summary>cell {_e(cell.label)} <span class="{cls}">{_e(state)}</span> '
            f'<span class="dim">{_e(fmt_s(cell.duration_s))} · {_e(one_line(cell.code, 70))}'
            f"{f' · spawned {len(spawned)} node(s)' if spawned else ''}</span></summary>"
        )
        body = [f'<pre class="code">{_e(cell.code)}</pre>']
        if cell.output:
            body.append(f'<pre class="output">{_e(cell.output)}</pre>')
        if cell.error:
            body.append(f'<pre class="error">{_e(cell.error)}</pre>')
        if spawned:
            body.append('<ul class="tree">' + "".join(self.node(c) for c in spawned) + "</ul>")
        return f'<details class="cell"{" open" if spawned else ""}>{summary}<div class="body">{"".join(body)}</div></details>'

    # ---- the timeline

    def timeline(self) -> str:
        run = self.run
        nodes = [n for n in run.walk() if n.t_begin is not None]
        if not nodes:
            return '<p class="dim">no node has a start time in this trace</p>'
        end = max([run.last_t, *(n.t_end or 0.0 for n in nodes)]) or 1.0
        left, width, row = 110, 870, 22
        scale = width / end
        height = 30 + row * len(nodes)
        out = [
            f'<svg class="timeline" viewBox="0 0 {left + width + 10} {height}" role="img" '
            f'aria-label="node timeline">'
        ]
        for i in range(6):
            x = left + width * i / 5
            out.append(
                f'<line class="axis" x1="{x:.1f}" y1="18" x2="{x:.1f}" y2="{height}"/>'
                f'<text x="{x:.1f}" y="12" text-anchor="middle">{_e(fmt_s(end * i / 5))}</text>'
            )
        for i, node in enumerate(nodes):
            y = 22 + row * i
            t0 = node.t_begin or 0.0
            t1 = node.t_end if node.t_end is not None else run.last_t
            x, w = left + t0 * scale, max(2.0, (t1 - t0) * scale)
            tip = f"{node.id} {node.status}: {fmt_s(t0)} → {fmt_s(t1)} ({fmt_s(run.elapsed(node))})"
            if node.answer is not None:
                tip += f"; answer {one_line(node.answer, 80)}"
            out.append(
                f'<g class="bar" tabindex="0" role="button" data-target="{self.ids[node.id]}">'
                f"<title>{_e(tip)}</title>"
                f'<text x="{4 + 10 * min(node.depth, 6)}" y="{y + 13}">{_e(one_line(node.id, 14))}</text>'
                f'<rect class="span {_status_class(node.status)}" x="{x:.1f}" y="{y}" '
                f'width="{w:.1f}" height="{row - 6}" rx="2"/>'
            )
            for cell in node.cells:
                if cell.t_start is None:
                    continue
                c1 = cell.t_end if cell.t_end is not None else t1
                out.append(
                    f'<rect class="cellmark" x="{left + cell.t_start * scale:.1f}" y="{y + row - 10}" '
                    f'width="{max(1.0, (c1 - cell.t_start) * scale):.1f}" height="4"/>'
                )
            out.append("</g>")
        out.append("</svg>")
        return "".join(out)

    # ---- the whole page

    def header(self) -> str:
        run, total = self.run, self.run.total()
        start = run.start
        facts = [
            ("model", start.get("model", "?")),
            ("sub-model", start.get("sub_model", "?")),
            ("task", start.get("task", "?")),
            ("depth", start.get("depth", "?")),
            (
                "totals",
                f"{total.nodes} nodes · {total.lm_calls} lm calls · {fmt_tokens(total.tokens)} tok · "
                f"{fmt_cost(total.cost_usd)} · {fmt_s(run.wall_s)}",
            ),
        ]
        if run.answer is not None:
            facts.append(("answer", excerpt(run.answer, 20, 400)))
        if run.end is not None and run.end.get("error"):
            facts.append(("error", run.end["error"]))
        for ev in run.problems:
            facts.append((str(ev.get("event")), f"{ev.get('budget') or ''} {ev.get('error')}".strip()))
        if not run.complete:
            facts.append(("note", "the trace has no run_end: the run crashed or is still running"))
        if run.skipped_lines:
            facts.append(("note", f"{run.skipped_lines} unreadable line(s) skipped"))
        return (
            f'<h1>run {_e(run.run_id or "?")} <span class="{_status_class(run.status)}">{_e(run.status)}</span></h1>'
            + '<dl class="facts">'
            + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
            + "</dl>"
        )

    def render(self) -> str:
        tree = '<ul class="tree top">' + "".join(self.node(n) for n in self.run.roots) + "</ul>"
        csp = (
            f"default-src 'none'; style-src {_csp_hash(CSS)}; script-src {_csp_hash(JS)}; "
            "img-src data:; base-uri 'none'; form-action 'none'"
        )
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>rlm-sandbox trace {_e(self.run.run_id or '')}</title>"
            f"<style>{CSS}</style></head><body>"
            f"<header>{self.header()}</header>"
            f'<section id="timeline"><h2>Timeline</h2>{self.timeline()}'
            '<p class="dim">one bar per node, from node_begin to node_end; dark ticks are its cells. '
            "Click a bar to open the node below.</p></section>"
            '<section id="tree"><h2>Nodes</h2><div class="toolbar">'
            '<button type="button" id="expand-all">expand all</button>'
            '<button type="button" id="collapse-all">collapse all</button></div>'
            f"{tree}</section>"
            f"<script>{JS}</script></body></html>\n"
        )


def render_html(run: RunTrace) -> str:
    return _Page(run).render()
