"""The node model every trace reader shares: a run as a tree of nodes with their cells, model
calls, questions and totals. ``trace show``/``summary``/``html``, the live tree and ``replay``
all read a run through these types, built by :mod:`rlm_sandbox.trace.tree` from events.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


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
    question: int = 0  # in a session, the question it worked on (its steps count from 1 again)

    @property
    def label(self) -> str:
        where = f"{self.step}.{self.index + 1}"
        return f"q{self.question} {where}" if self.question else where


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

    def cell(self, step: int, index: int, question: int = 0) -> Cell:
        for cell in self.cells:
            if cell.step == step and cell.index == index and cell.question == question:
                return cell
        cell = Cell(node=self.id, step=step, index=index, question=question)
        self.cells.append(cell)
        return cell


def _str(value: Any) -> str | None:
    """A field read as text: None stays None, anything else is shown as text."""
    return None if value is None else str(value)


def node_order(node_id: str) -> tuple[int, str]:
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
    lm_ready_t: float | None = None  # the run could call the model from then on (``lm_ready``)
    first_request_t: float | None = None  # ... and its first request went out (``lm_sent``)
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
                    "file": _str(c.get("file")) or "?",
                    "line": c["line"],
                    "quote": _str(c.get("quote")) or "",
                    "text": _str(c.get("text")),
                    "verified": c.get("verified") is True,
                    "reason": _str(c.get("reason")),
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
