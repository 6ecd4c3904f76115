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
from rlm_sandbox.trace.writer import check_event
from rlm_sandbox.untrusted import TRACE_DEPTH, TRACE_LINE_CHARS, loads

KNOWN_EVENTS = frozenset(
    {
        "run_start",
        "run_end",
        "node_begin",
        "node_start",
        "node_end",
        "lm_start",
        "lm_call",
        "lm_error",
        "sub_call",
        "cell_start",
        "cell",
        "budget",
        "error",
        "engines",
        "engine_warning",
        "tool_call",
        # Known, and shown elsewhere or not needed for the tree: the run's own detail.
        "lm_cut",
        "fallback",
        "compaction",
        "schema_mismatch",
        "question",
        "answer",
        "lm_cache_hit",
        "warning",
    }
)


class TraceFileError(RLMSandboxError):
    """The trace file cannot be read at all (missing, unreadable, or not JSON lines)."""

    hint = "pass the JSON-lines file written by `--trace PATH` (the demo's default is in the temp dir)"


def _num(value: Any) -> float:
    """Numbers from a trace written by any version: absent, null or text count as zero."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    return 0.0


def _int(value: Any) -> int:
    return int(_num(value))


def _opt_num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


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
    cache_hits: int = 0  # model requests answered by --lm-cache
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.end is not None

    @property
    def citations(self) -> list[dict[str, Any]]:
        """The run's checked citations (from ``run_end``), each with its fields made safe to
        read: a trace is untrusted input, so anything malformed is left out."""
        raw = self.end.get("citations") if self.end is not None else None
        out = []
        for c in raw if isinstance(raw, list) else []:
            if not isinstance(c, dict) or type(c.get("line")) is not int:
                continue
            out.append(
                {
                    "file": _text(c.get("file")) or "?",
                    "line": c["line"],
                    "quote": _text(c.get("quote")) or "",
                    "text": _text(c.get("text")),
                    "verified": c.get("verified") is True,
                    "reason": _text(c.get("reason")),
                }
            )
        return out

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


class _Builder:
    def __init__(self) -> None:
        self.run = RunTrace()
        self.pending_lm: dict[str, list[LMCall]] = {}

    def node(self, node_id: Any, ev: dict[str, Any]) -> Node:
        key = str(node_id)
        node = self.run.nodes.get(key)
        if node is None:
            node = self.run.nodes[key] = Node(id=key, depth=_int(ev.get("depth")))
        if ev.get("parent") is not None and node.parent is None:
            node.parent = str(ev["parent"])
        return node

    def feed(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        t = _opt_num(ev.get("t"))
        if t is not None:
            self.run.last_t = max(self.run.last_t, t)
        if self.run.run_id is None and ev.get("run") is not None:
            self.run.run_id = str(ev["run"])
        if kind not in KNOWN_EVENTS:
            name = str(kind)
            self.run.unknown_events[name] = self.run.unknown_events.get(name, 0) + 1
            return
        handler = getattr(self, f"on_{kind}", None)
        if handler is not None:
            handler(ev, t)

    def on_run_start(self, ev: dict[str, Any], t: float | None) -> None:
        self.run.start = ev

    def on_run_end(self, ev: dict[str, Any], t: float | None) -> None:
        self.run.end = ev

    def on_node_begin(self, ev: dict[str, Any], t: float | None) -> None:
        if ev.get("node") is None:
            return
        node = self.node(ev["node"], ev)
        node.depth = _int(ev.get("depth"))
        node.t_begin = t

    def on_node_start(self, ev: dict[str, Any], t: float | None) -> None:
        if ev.get("node") is None:
            return
        node = self.node(ev["node"], ev)
        node.container = _text(ev.get("container"))
        node.pooled = ev.get("pooled") if isinstance(ev.get("pooled"), bool) else None
        node.start_s = _opt_num(ev.get("start_s"))
        node.task = _text(ev.get("task"))
        if node.t_begin is None:  # node_begin lost: the start is the best bound we have
            node.t_begin = t

    def on_node_end(self, ev: dict[str, Any], t: float | None) -> None:
        if ev.get("node") is None:
            return
        node = self.node(ev["node"], ev)
        node.status = str(ev.get("status") or "error")
        node.steps = _int(ev.get("steps"))
        node.answer = _text(ev.get("answer"))
        node.error = _text(ev.get("error"))
        node.wall_s = _opt_num(ev.get("wall_s"))
        node.t_end = t
        if node.t_begin is None and t is not None and node.wall_s is not None:
            node.t_begin = max(0.0, t - node.wall_s)

    def on_lm_start(self, ev: dict[str, Any], t: float | None) -> None:
        if ev.get("node") is None:
            return
        node = self.node(ev["node"], ev)
        call = LMCall(
            node=node.id,
            depth=node.depth,
            purpose=str(ev.get("purpose") or "?"),
            model=str(ev.get("model") or "?"),
            t=t,
            finished=False,
        )
        node.lm_calls.append(call)
        self.pending_lm.setdefault(node.id, []).append(call)

    def on_lm_call(self, ev: dict[str, Any], t: float | None) -> None:
        if ev.get("node") is None:
            return
        node = self.node(ev["node"], ev)
        purpose = str(ev.get("purpose") or "?")
        pending = self.pending_lm.get(node.id, [])
        # Parallel sub-calls of one node finish in any order: pair with the oldest open
        # start of the same purpose; counts and sums come out right whatever the pairing.
        call = next((c for c in pending if c.purpose == purpose), None)
        if call is None:
            call = LMCall(node=node.id, depth=node.depth, purpose=purpose, model="?")
            node.lm_calls.append(call)
        else:
            pending.remove(call)
        call.model = str(ev.get("model") or call.model)
        call.prompt_tokens = _int(ev.get("prompt_tokens"))
        call.completion_tokens = _int(ev.get("completion_tokens"))
        call.cost_usd = _num(ev.get("cost_usd"))
        call.latency_s = _num(ev.get("latency_s"))
        call.response = _text(ev.get("response"))
        call.t = t
        call.finished = True

    def on_lm_error(self, ev: dict[str, Any], t: float | None) -> None:
        self.run.problems.append(ev)
        if ev.get("node") is not None:
            node = self.node(ev["node"], ev)
            node.lm_errors.append(str(ev.get("error")))
            pending = self.pending_lm.get(node.id, [])
            if pending:
                pending.pop(0)  # that start will never get its lm_call

    def on_sub_call(self, ev: dict[str, Any], t: float | None) -> None:
        if ev.get("node") is None:
            return
        node = self.node(ev["node"], ev)
        kind = str(ev.get("kind") or "?")
        node.sub_calls[kind] = node.sub_calls.get(kind, 0) + 1
        node.sub_call_chars += _int(ev.get("prompt_chars"))

    def on_tool_call(self, ev: dict[str, Any], t: float | None) -> None:
        """A host tool the node's code called: counted with its sub-calls, as ``tool:NAME``."""
        if ev.get("node") is None:
            return
        node = self.node(ev["node"], ev)
        kind = f"tool:{ev.get('tool') or '?'}"
        node.sub_calls[kind] = node.sub_calls.get(kind, 0) + 1

    def on_cell_start(self, ev: dict[str, Any], t: float | None) -> None:
        if ev.get("node") is None:
            return
        cell = self.node(ev["node"], ev).cell(_int(ev.get("step")), _int(ev.get("index")))
        cell.code = str(ev.get("code") or "")
        cell.t_start = t

    def on_cell(self, ev: dict[str, Any], t: float | None) -> None:
        if ev.get("node") is None:
            return
        cell = self.node(ev["node"], ev).cell(_int(ev.get("step")), _int(ev.get("index")))
        cell.code = str(ev.get("code") or cell.code)
        cell.output = _text(ev.get("output"))
        cell.error = _text(ev.get("error"))
        cell.duration_s = _opt_num(ev.get("duration_s"))
        cell.wall_s = _opt_num(ev.get("wall_s"))
        cell.timed_out = bool(ev.get("timed_out"))
        cell.t_end = t
        cell.finished = True
        if cell.t_start is None and t is not None:
            cell.t_start = max(0.0, t - (cell.wall_s or cell.duration_s or 0.0))

    def on_lm_cache_hit(self, ev: dict[str, Any], t: float | None) -> None:
        self.run.cache_hits += 1

    def on_warning(self, ev: dict[str, Any], t: float | None) -> None:
        message = _text(ev.get("message"))
        if message:
            self.run.warnings.append(message)

    def on_budget(self, ev: dict[str, Any], t: float | None) -> None:
        self.run.problems.append(ev)

    def on_error(self, ev: dict[str, Any], t: float | None) -> None:
        self.run.problems.append(ev)

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


def build(events: Iterable[dict[str, Any]]) -> RunTrace:
    """The tree from already-parsed events (in file order, which need not be time order)."""
    builder = _Builder()
    for ev in events:
        if not isinstance(ev, dict) or not isinstance(ev.get("event"), str):
            builder.run.skipped_lines += 1
        elif check_event(ev) is not None:
            # Known fields of the wrong type: shown as an event this reader cannot use.
            name = f"{ev['event'][:40]} (malformed)"
            builder.run.unknown_events[name] = builder.run.unknown_events.get(name, 0) + 1
        else:
            builder.feed(ev)
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
    events: list[Any] = []
    skipped = 0
    for line in raw.decode("utf-8", errors="replace").split("\n"):  # not splitlines: U+2028 is no line end
        line = line.strip()
        if not line:
            continue
        try:
            events.append(loads(line, max_chars=TRACE_LINE_CHARS, max_depth=TRACE_DEPTH, constants=True))
        except ValueError:
            skipped += 1
    if clean is not None:
        events = [clean(e) for e in events]
    good = [e for e in events if isinstance(e, dict) and "event" in e]
    if not good:
        what = "is empty" if not events and not skipped else "has no trace events (JSON lines with 'event')"
        raise TraceFileError(f"{p} {what}")
    run = build(events)
    run.skipped_lines += skipped
    return run
