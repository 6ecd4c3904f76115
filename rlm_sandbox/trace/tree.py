"""A run's trace rebuilt as a tree of nodes with their cells, model calls and totals.

The trace is a flat, interleaved stream (children run in parallel threads), and it may be cut
short by a crash or hold events newer than this reader. So the parsing here never trusts
order or completeness: nodes are created on first mention, events without a node id are kept
as run-level facts, anything unknown is counted and otherwise ignored, and a node that never
ended is reported as ``running`` with its time measured to the last event seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlm_sandbox.errors import RLMSandboxError
from rlm_sandbox.trace import events
from rlm_sandbox.trace.model import Cell, Exchange, LMCall, Node, RunTrace, node_order
from rlm_sandbox.untrusted_json import TRACE_DEPTH, TRACE_LINE_CHARS, loads


class TraceFileError(RLMSandboxError):
    """The trace file cannot be read at all (missing, unreadable, or not JSON lines)."""

    hint = (
        "pass the JSON-lines file written by `--trace PATH` (demo, chat and replay write theirs "
        "to ~/.local/state/rlm-sandbox/traces unless given one)"
    )


class TraceBuilder:
    """Builds a :class:`RunTrace` from events, one at a time: a whole file at once (``trace
    show``, ``replay``) or as a run emits them (the live tree). Every event is read through
    the vocabulary (:func:`rlm_sandbox.trace.events.parse`); what this version cannot use is
    counted and shown, never dropped silently."""

    def __init__(self) -> None:
        self.run = RunTrace()
        self.pending_lm: dict[str, list[LMCall]] = {}
        self.asking: dict[str, int] = {}  # node -> the question it works on (sessions)

    def node(self, node_id: str, ev: Any) -> Node:
        node = self.run.nodes.get(node_id)
        if node is None:
            node = self.run.nodes[node_id] = Node(id=node_id, depth=events.declared(ev, "depth") or 0)
        parent = events.declared(ev, "parent")
        if parent is not None and node.parent is None:
            node.parent = parent
        return node

    def feed(self, raw: Any) -> events.Event:
        """Take one decoded trace line; returns it as a typed event."""
        ev = events.parse(raw)
        if isinstance(ev, events.Malformed):
            name = f"{ev.event[:40]} (malformed)" if ev.event != "?" else None
            if name is None:
                self.run.skipped_lines += 1
            else:
                self.run.unknown_events[name] = self.run.unknown_events.get(name, 0) + 1
            return ev
        if ev.t is not None:
            self.run.last_t = max(self.run.last_t, ev.t)
        if self.run.run_id is None and ev.run is not None:
            self.run.run_id = ev.run
        if isinstance(ev, events.Unknown):
            name = ev.event[:80]
            self.run.unknown_events[name] = self.run.unknown_events.get(name, 0) + 1
            return ev
        handler = getattr(self, f"on_{ev.name}", None)
        if handler is not None:
            handler(ev, raw)
        return ev

    def on_run_start(self, ev: events.RunStart, raw: dict[str, Any]) -> None:
        self.run.start = raw

    def on_run_end(self, ev: events.RunEnd, raw: dict[str, Any]) -> None:
        self.run.end = raw

    def on_node_begin(self, ev: events.NodeBegin, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        node.depth = ev.depth or 0
        node.t_begin = ev.t

    def on_node_start(self, ev: events.NodeStart, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        node.container = ev.container
        node.pooled = ev.pooled
        node.start_s = ev.start_s
        node.task = ev.task
        if node.t_begin is None:  # node_begin lost: the start is the best bound we have
            node.t_begin = ev.t

    def on_node_end(self, ev: events.NodeEnd, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        node.status = ev.status or "error"
        node.steps = ev.steps or 0
        node.answer = ev.answer
        node.error = ev.error
        node.wall_s = ev.wall_s
        node.t_end = ev.t
        if node.t_begin is None and ev.t is not None and node.wall_s is not None:
            node.t_begin = max(0.0, ev.t - node.wall_s)

    def on_lm_ready(self, ev: events.LMReady, raw: dict[str, Any]) -> None:
        if self.run.lm_ready_t is None:
            self.run.lm_ready_t = ev.t

    def on_lm_sent(self, ev: events.LMSent, raw: dict[str, Any]) -> None:
        if self.run.first_request_t is None:
            self.run.first_request_t = ev.t

    def on_lm_start(self, ev: events.LMStart, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        call = LMCall(
            node=node.id,
            depth=node.depth,
            purpose=ev.purpose or "?",
            model=ev.model or "?",
            t=ev.t,
            finished=False,
        )
        node.lm_calls.append(call)
        self.pending_lm.setdefault(node.id, []).append(call)

    def on_lm_call(self, ev: events.LMCall, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        purpose = ev.purpose or "?"
        pending = self.pending_lm.get(node.id, [])
        # Parallel sub-calls of one node finish in any order: pair with the oldest open
        # start of the same purpose; counts and sums come out right whatever the pairing.
        call = next((c for c in pending if c.purpose == purpose), None)
        if call is None:
            call = LMCall(node=node.id, depth=node.depth, purpose=purpose, model="?")
            node.lm_calls.append(call)
        else:
            pending.remove(call)
        call.model = ev.model or call.model
        call.prompt_tokens = ev.prompt_tokens or 0
        call.completion_tokens = ev.completion_tokens or 0
        call.cost_usd = ev.cost_usd or 0.0
        call.latency_s = ev.latency_s or 0.0
        call.response = ev.response
        call.t = ev.t
        call.finished = True

    def on_lm_error(self, ev: events.LMError, raw: dict[str, Any]) -> None:
        self.run.problems.append(raw)
        if ev.node is not None:
            node = self.node(ev.node, ev)
            node.lm_errors.append(str(ev.error))
            pending = self.pending_lm.get(node.id, [])
            if pending:
                pending.pop(0)  # that start will never get its lm_call

    def on_sub_call(self, ev: events.SubCall, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        kind = ev.kind or "?"
        node.sub_calls[kind] = node.sub_calls.get(kind, 0) + 1
        node.sub_call_chars += ev.prompt_chars or 0

    def on_tool_call(self, ev: events.ToolCall, raw: dict[str, Any]) -> None:
        """A host tool the node's code called: counted with its sub-calls, as ``tool:NAME``."""
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        kind = f"tool:{ev.tool or '?'}"
        node.sub_calls[kind] = node.sub_calls.get(kind, 0) + 1

    def on_cell_start(self, ev: events.CellStart, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        cell = node.cell(ev.step or 0, ev.index or 0, self.asking.get(node.id, 0))
        cell.code = ev.code or ""
        cell.t_start = ev.t

    def on_cell(self, ev: events.Cell, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        cell = node.cell(ev.step or 0, ev.index or 0, self.asking.get(node.id, 0))
        cell.code = ev.code or cell.code
        cell.output = ev.output
        cell.error = ev.error
        cell.duration_s = ev.duration_s
        cell.wall_s = ev.wall_s
        cell.timed_out = bool(ev.timed_out)
        cell.t_end = ev.t
        cell.finished = True
        if cell.t_start is None and ev.t is not None:
            cell.t_start = max(0.0, ev.t - (cell.wall_s or cell.duration_s or 0.0))

    def on_question(self, ev: events.Question, raw: dict[str, Any]) -> None:
        """A session's next question: the cells that follow are its own (their steps count
        from 1 again), until the next question."""
        if ev.node is not None:
            node = self.node(ev.node, ev)
            number = ev.number or len(node.questions) + 1
            node.questions.append(Exchange(number, ev.task or ""))
            self.asking[node.id] = number

    def on_answer(self, ev: events.Answer, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        asked = next((q for q in node.questions if q.number == ev.number and q.status is None), None)
        if asked is None:
            asked = Exchange(ev.number or 0, "")
            node.questions.append(asked)
        asked.status, asked.answer, asked.error = ev.status or "?", ev.answer, ev.error

    def on_lm_cache_hit(self, ev: events.LMCacheHit, raw: dict[str, Any]) -> None:
        self.run.cache_hits += 1

    def on_warning(self, ev: events.Warning, raw: dict[str, Any]) -> None:
        if ev.message:
            self.run.warnings.append(ev.message)

    def on_budget(self, ev: events.Budget, raw: dict[str, Any]) -> None:
        self.run.problems.append(raw)

    def on_error(self, ev: events.Error, raw: dict[str, Any]) -> None:
        self.run.problems.append(raw)

    def finish(self) -> RunTrace:
        run = self.run
        nodes = run.nodes
        for node in sorted(nodes.values(), key=lambda n: node_order(n.id)):
            parent = nodes.get(node.parent) if node.parent is not None else None
            if parent is None or parent is node:
                run.roots.append(node)
            else:
                parent.children.append(node)
        for node in nodes.values():
            if node.status == "running":  # no node_end to say how far it got: count its turns
                node.steps = max(node.steps, sum(c.purpose == "step" for c in node.lm_calls))
            node.children.sort(key=lambda n: (n.t_begin if n.t_begin is not None else 1e18, node_order(n.id)))
            node.cells.sort(key=lambda c: (c.question, c.step, c.index))
            for child in node.children:
                spawner = _spawning_cell(node.cells, child.t_begin)
                if spawner is not None:
                    spawner.children.append(child.id)
        _break_cycles(run)
        run.roots.sort(key=lambda n: node_order(n.id))
        return run


def _break_cycles(run: RunTrace) -> None:
    """A corrupt trace can make nodes each other's parents; such nodes would hang off no
    root and vanish from every view, so they become roots instead."""
    seen: set[str] = set()
    stack = list(run.roots)
    while stack:
        node = stack.pop()
        seen.add(node.id)
        stack.extend(node.children)
    for node in sorted(run.nodes.values(), key=lambda n: node_order(n.id)):
        if node.id in seen:
            continue
        parent = run.nodes.get(node.parent or "")
        if parent is not None and node in parent.children:
            parent.children.remove(node)
        run.roots.append(node)
        stack = [node]
        while stack:
            current = stack.pop()
            seen.add(current.id)
            stack.extend(c for c in current.children if c.id not in seen)


def _spawning_cell(cells: list[Cell], t: float | None) -> Cell | None:
    """The cell that was running when a child began: children come from a cell's llm_query."""
    if t is None:
        return None
    for cell in cells:
        if cell.t_start is not None and cell.t_start <= t and (cell.t_end is None or t <= cell.t_end):
            return cell
    return None


def build(lines: Iterable[Any]) -> RunTrace:
    """The tree from already-parsed events (in file order, which need not be time order)."""
    builder = TraceBuilder()
    for raw in lines:
        builder.feed(raw)
    return builder.finish()


def load(path: str | Path, *, clean: Callable[[Any], Any] | None = None) -> RunTrace:
    """Read a trace file; lines that are not JSON objects (a torn last line) are skipped and
    counted, but a file with none at all is refused, since it cannot be a trace. ``clean``
    is applied to every event first (the terminal views make every string visible there)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise TraceFileError(f"trace file not found: {p}") from None
    except IsADirectoryError:
        raise TraceFileError(f"{p} is a directory, not a trace file") from None
    except OSError as exc:
        raise TraceFileError(f"cannot read trace file {p}: {exc.strerror or exc}") from None
    lines: list[Any] = []
    skipped = 0
    for line in raw.decode("utf-8", errors="replace").split("\n"):  # not splitlines: U+2028 is no line end
        line = line.strip()
        if not line:
            continue
        try:
            lines.append(loads(line, max_chars=TRACE_LINE_CHARS, max_depth=TRACE_DEPTH, constants=True))
        except ValueError:
            skipped += 1
    if clean is not None:
        lines = [clean(e) for e in lines]
    good = [e for e in lines if isinstance(e, dict) and "event" in e]
    if not good:
        what = "is empty" if not lines and not skipped else "has no trace events (JSON lines with 'event')"
        raise TraceFileError(f"{p} {what}")
    run = build(lines)
    run.skipped_lines += skipped
    return run
