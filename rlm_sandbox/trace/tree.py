"""A run's trace rebuilt as a tree of nodes with their cells, model calls and totals.

The trace is a flat, interleaved stream (children run in parallel threads), and it may be cut
short by a crash or hold events newer than this reader. So the parsing here never trusts
order or completeness: nodes are created on first mention, events without a node id are kept
as run-level facts, anything unknown is counted and otherwise ignored, and a node that never
ended is reported as ``running`` with its time measured to the last event seen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm_sandbox.errors import RLMSandboxError
from rlm_sandbox.trace import events
from rlm_sandbox.untrusted import TRACE_DEPTH, TRACE_LINE_CHARS, loads


class TraceFileError(RLMSandboxError):
    """The trace file cannot be read at all (missing, unreadable, or not JSON lines)."""

    hint = "pass the JSON-lines file written by `--trace PATH` (the demo's default is in the temp dir)"


def _opt_num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class Cell:
    """One code block run in a node's sandbox; ``finished`` is False when the trace ends mid-cell."""

    node: str
    step: int
    index: int
    code: str = ""
    output: str | None = None
    error: str | None = None
    duration_s: float | None = None
    wall_s: float | None = None
    timed_out: bool = False
    t_start: float | None = None
    t_end: float | None = None
    finished: bool = False
    children: list[str] = field(default_factory=list)  # nodes this cell spawned via llm_query

    @property
    def label(self) -> str:
        return f"{self.step}.{self.index + 1}"


@dataclass
class LMCall:
    """One model call; ``finished`` is False for an lm_start that never got its lm_call."""

    node: str
    depth: int
    purpose: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    response: str | None = None
    t: float | None = None
    finished: bool = True

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Totals:
    """What a set of nodes or calls cost; one type so tree, depth and model rows add alike."""

    nodes: int = 0
    containers: int = 0
    steps: int = 0
    lm_calls: int = 0
    sub_lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    lm_s: float = 0.0
    cells: int = 0
    cell_s: float = 0.0
    errors: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_call(self, call: LMCall) -> None:
        if not call.finished:
            return
        self.lm_calls += 1
        self.sub_lm_calls += call.purpose == "sub_call"
        self.prompt_tokens += call.prompt_tokens
        self.completion_tokens += call.completion_tokens
        self.cost_usd += call.cost_usd
        self.lm_s += call.latency_s

    def add_node(self, node: Node) -> None:
        """The node's own share (not its children's)."""
        self.nodes += 1
        self.containers += node.container is not None
        self.steps += node.steps
        self.errors += node.status == "error"
        for call in node.lm_calls:
            self.add_call(call)
        for cell in node.cells:
            self.cells += 1
            self.cell_s += cell.duration_s or 0.0


@dataclass
class Exchange:
    """One question of a session and its answer (``status`` None until it is answered)."""

    number: int
    question: str
    status: str | None = None
    answer: str | None = None
    error: str | None = None


@dataclass
class Node:
    id: str
    parent: str | None = None
    depth: int = 0
    status: str = "running"  # done | error | running (no node_end in the trace)
    steps: int = 0
    answer: str | None = None
    error: str | None = None
    task: str | None = None
    container: str | None = None
    pooled: bool | None = None
    start_s: float | None = None
    t_begin: float | None = None
    t_end: float | None = None
    wall_s: float | None = None
    cells: list[Cell] = field(default_factory=list)
    lm_calls: list[LMCall] = field(default_factory=list)
    sub_calls: dict[str, int] = field(default_factory=dict)  # kind ('rlm'|'lm') -> count
    sub_call_chars: int = 0
    lm_errors: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    questions: list[Exchange] = field(default_factory=list)  # a session's questions and answers

    @property
    def own(self) -> Totals:
        totals = Totals()
        totals.add_node(self)
        return totals

    @property
    def total(self) -> Totals:
        """This node and every node under it."""
        totals = Totals()
        for node in self.walk():
            totals.add_node(node)
        return totals

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def cell(self, step: int, index: int) -> Cell:
        for cell in self.cells:
            if cell.step == step and cell.index == index:
                return cell
        cell = Cell(node=self.id, step=step, index=index)
        self.cells.append(cell)
        return cell


def _node_order(node_id: str) -> tuple[int, str]:
    m = re.fullmatch(r"n(\d{1,18})", node_id)  # a trace is untrusted: no unbounded int()
    return (-1 if node_id == "root" else int(m.group(1)) if m else 1 << 30, node_id)


@dataclass
class RunTrace:
    """Everything known about one run; ``complete`` says whether its run_end was seen."""

    run_id: str | None = None
    start: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    roots: list[Node] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)  # budget / error / lm_error events
    skipped_lines: int = 0
    unknown_events: dict[str, int] = field(default_factory=dict)
    last_t: float = 0.0

    @property
    def complete(self) -> bool:
        return self.end is not None

    @property
    def status(self) -> str:
        if self.end is not None:
            return str(self.end.get("status") or "?")
        return "incomplete"

    @property
    def answer(self) -> str | None:
        if self.end is not None and self.end.get("answer") is not None:
            return str(self.end["answer"])
        root = self.nodes.get("root")
        return root.answer if root is not None else None

    @property
    def wall_s(self) -> float:
        if self.end is not None and _opt_num(self.end.get("wall_s")) is not None:
            return float(self.end["wall_s"])
        return self.last_t

    def find(self, node_id: str) -> Node | None:
        return self.nodes.get(node_id)

    def walk(self) -> Iterator[Node]:
        for root in self.roots:
            yield from root.walk()

    def elapsed(self, node: Node) -> float | None:
        """Seconds the node ran: its own measure, else to the trace's last event if still open."""
        if node.wall_s is not None:
            return node.wall_s
        if node.t_begin is None:
            return None
        return max(0.0, (node.t_end if node.t_end is not None else self.last_t) - node.t_begin)

    def total(self) -> Totals:
        totals = Totals()
        for node in self.walk():
            totals.add_node(node)
        return totals

    def by_depth(self) -> dict[int, Totals]:
        rows: dict[int, Totals] = {}
        for node in self.walk():
            rows.setdefault(node.depth, Totals()).add_node(node)
        return dict(sorted(rows.items()))

    def by_model(self) -> dict[str, Totals]:
        """Per model as the server named it; ``nodes`` counts the nodes that called it."""
        rows: dict[str, Totals] = {}
        for node in self.walk():
            seen: set[str] = set()
            for call in node.lm_calls:
                if not call.finished:
                    continue
                row = rows.setdefault(call.model, Totals())
                row.add_call(call)
                if call.model not in seen:
                    seen.add(call.model)
                    row.nodes += 1
        return dict(sorted(rows.items(), key=lambda kv: -kv[1].lm_calls))

    def slowest_cells(self, n: int = 5) -> list[Cell]:
        cells = [c for node in self.walk() for c in node.cells if c.duration_s is not None]
        return sorted(cells, key=lambda c: -(c.duration_s or 0.0))[:n]

    def open_nodes(self) -> list[Node]:
        return [node for node in self.walk() if node.status == "running"]


class TraceBuilder:
    """Builds a :class:`RunTrace` from events, one at a time: a whole file at once (``trace
    show``, ``replay``) or as a run emits them (the live tree). Every event is read through
    the vocabulary (:func:`rlm_sandbox.trace.events.parse`); what this version cannot use is
    counted and shown, never dropped silently."""

    def __init__(self) -> None:
        self.run = RunTrace()
        self.pending_lm: dict[str, list[LMCall]] = {}

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
        cell = self.node(ev.node, ev).cell(ev.step or 0, ev.index or 0)
        cell.code = ev.code or ""
        cell.t_start = ev.t

    def on_cell(self, ev: events.Cell, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        cell = self.node(ev.node, ev).cell(ev.step or 0, ev.index or 0)
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
        if ev.node is not None:
            self.node(ev.node, ev).questions.append(Exchange(ev.number or 0, ev.task or ""))

    def on_answer(self, ev: events.Answer, raw: dict[str, Any]) -> None:
        if ev.node is None:
            return
        node = self.node(ev.node, ev)
        asked = next((q for q in node.questions if q.number == ev.number and q.status is None), None)
        if asked is None:
            asked = Exchange(ev.number or 0, "")
            node.questions.append(asked)
        asked.status, asked.answer, asked.error = ev.status or "?", ev.answer, ev.error

    def on_budget(self, ev: events.Budget, raw: dict[str, Any]) -> None:
        self.run.problems.append(raw)

    def on_error(self, ev: events.Error, raw: dict[str, Any]) -> None:
        self.run.problems.append(raw)

    def finish(self) -> RunTrace:
        run = self.run
        nodes = run.nodes
        for node in sorted(nodes.values(), key=lambda n: _node_order(n.id)):
            parent = nodes.get(node.parent) if node.parent is not None else None
            if parent is None or parent is node:
                run.roots.append(node)
            else:
                parent.children.append(node)
        for node in nodes.values():
            if node.status == "running":  # no node_end to say how far it got: count its turns
                node.steps = max(node.steps, sum(c.purpose == "step" for c in node.lm_calls))
            node.children.sort(
                key=lambda n: (n.t_begin if n.t_begin is not None else 1e18, _node_order(n.id))
            )
            node.cells.sort(key=lambda c: (c.step, c.index))
            for child in node.children:
                spawner = _spawning_cell(node.cells, child.t_begin)
                if spawner is not None:
                    spawner.children.append(child.id)
        _break_cycles(run)
        run.roots.sort(key=lambda n: _node_order(n.id))
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
    for node in sorted(run.nodes.values(), key=lambda n: _node_order(n.id)):
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
