"""Two runs set side by side: the recording and its replay, on the node model every trace
reader shares (:mod:`rlm_sandbox.trace.tree`).

Node ids follow creation order, which parallel fan-out shuffles; the recorded response each
replayed request got names the recorded node it belongs to, which does not: nodes are
paired by the recorded calls that answered them. Differences are ordered by when the replay
showed them, so the first one is the first thing that went differently.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from rlm_sandbox.replay.policy import DIVERGED_REPLY, Served
from rlm_sandbox.replay.recording import Recording, excerpt
from rlm_sandbox.trace import events as trace_events
from rlm_sandbox.trace.model import Cell, Node, RunTrace
from rlm_sandbox.trace.tree import build


@dataclass
class Divergence:
    """One place where the replay did not do what the recording did."""

    kind: str  # request_unknown, cell_code, cell_output, cell_missing, cell_extra,
    #            node_answer, node_missing, node_extra, cells_per_depth, run_answer, run_status
    detail: str
    node: str | None = None  # the recorded node
    replay_node: str | None = None
    depth: int | None = None
    step: int | None = None
    index: int | None = None
    recorded: str | None = None
    replayed: str | None = None
    position: float = float("inf")  # when the replay trace shows it (its ``t``): orders "first"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("position")
        return out


@dataclass
class ReplayReport:
    """The verdict of a replay; ``to_json()`` is what ``replay --json`` prints."""

    identical: bool
    divergences: list[Divergence]
    answer_recorded: str | None
    answer_replayed: str | None
    status_recorded: str | None
    status_replayed: str | None
    trace: str | None
    recorded_trace: str
    counts: dict[str, int]
    containers_recorded: list[str]
    containers_replayed: list[str]

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None

    @property
    def exit_code(self) -> int:
        return 0 if self.identical else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "divergences": [d.to_json() for d in self.divergences],
            "first_divergence": self.first.to_json() if self.first else None,
            "answer_recorded": self.answer_recorded,
            "answer_replayed": self.answer_replayed,
            "status_recorded": self.status_recorded,
            "status_replayed": self.status_replayed,
            "counts": dict(self.counts),
            "trace": self.trace,
            "recorded_trace": self.recorded_trace,
        }


@dataclass
class _Pairing:
    """Replayed node -> recorded node, and the replayed nodes no recording explains."""

    pairs: dict[str, str]
    unknown: set[str]


def compare(
    recording: Recording, replayed: list[dict[str, Any]], served: list[Served], trace: str | None = None
) -> ReplayReport:
    """Old run against new: what the replay did differently, first difference first."""
    old, new = build(recording.events), build(replayed)
    end = new.last_t + 1.0  # after every event of the replay: run-level differences come last
    divergences: list[Divergence] = []
    pairing = _pair_nodes(recording, replayed, served, divergences)
    cells_differing = 0
    for rnode, onode in pairing.pairs.items():
        a, b = old.find(onode), new.find(rnode)
        if a is not None and b is not None:
            cells_differing += _compare_nodes(a, b, divergences)
    _unpaired(old, new, pairing, end, divergences)
    per_depth = _cells_per_depth(old, new)
    if per_depth and not any(d.kind.startswith("cell_") for d in divergences):
        divergences.append(
            Divergence(
                "cells_per_depth",
                f"the cells (code, output) differ at depth {per_depth[0]}",
                depth=per_depth[0],
                position=end,
            )
        )
    old_end, new_end = old.end or {}, new.end or {}
    _compare_ends(old_end, new_end, end + 1.0, divergences)
    divergences.sort(key=lambda d: d.position)
    return ReplayReport(
        identical=not divergences,
        divergences=divergences,
        answer_recorded=old_end.get("answer"),
        answer_replayed=new_end.get("answer"),
        status_recorded=old_end.get("status"),
        status_replayed=new_end.get("status"),
        trace=trace,
        recorded_trace=str(recording.path),
        counts=_counts(recording, old, new, served, cells_differing, len(divergences)),
        containers_recorded=[n.container for n in old.nodes.values() if n.container],
        containers_replayed=[n.container for n in new.nodes.values() if n.container],
    )


def _pair_nodes(
    recording: Recording, replayed: list[dict[str, Any]], served: list[Served], out: list[Divergence]
) -> _Pairing:
    """Pair each replayed node with the recorded node whose calls answered it; a request the
    recording never made is the divergence it is."""
    pending: dict[str, collections.deque[Served]] = collections.defaultdict(collections.deque)
    for s in served:
        pending[s.digest].append(s)
    has_root = any(e.get("node") == "root" for e in recording.events) and any(
        e.get("node") == "root" for e in replayed
    )
    pairing = _Pairing({"root": "root"} if has_root else {}, set())
    turns: collections.Counter[str] = collections.Counter()  # model turns per replayed node
    for raw in replayed:
        ev = trace_events.parse(raw)
        if not isinstance(ev, trace_events.LMCall) or ev.node is None:
            continue
        if ev.purpose != "sub_call":
            turns[ev.node] += 1
        queue = pending.get(str(ev.request_sha256))
        if not queue:
            continue
        s = queue.popleft()
        if s.call is not None:
            pairing.pairs.setdefault(ev.node, recording.calls[s.call].node)
            continue
        pairing.unknown.add(ev.node)
        out.append(
            Divergence(
                "request_unknown",
                f"replayed node {ev.node} sent a model request the recording never made "
                f"(request {s.number}, {ev.purpose}); it was answered {DIVERGED_REPLY}",
                node=pairing.pairs.get(ev.node),
                replay_node=ev.node,
                depth=ev.depth,
                step=turns[ev.node],  # a sub-call belongs to the step whose cell made it
                replayed=s.last_user,
                position=ev.t if ev.t is not None else float("inf"),
            )
        )
    for queue in pending.values():  # answered, but no lm_call written (the run was cut short)
        for s in queue:
            if s.call is None:
                out.append(
                    Divergence(
                        "request_unknown",
                        f"request {s.number} was not in the recording",
                        depth=s.depth,
                        step=s.step,
                        replayed=s.last_user,
                    )
                )
    return pairing


def _node_end(node: Node) -> float:
    return node.t_end if node.t_end is not None else float("inf")


def _compare_nodes(a: Node, b: Node, out: list[Divergence]) -> int:
    """The differences of two paired nodes (cells, then answer); returns the cells differing."""
    differing = _compare_cells(a, b, out)
    if (a.answer, a.status) != (b.answer, b.status):
        differently = (
            f" ({a.status} in the recording, {b.status} in the replay)" if a.status != b.status else ""
        )
        out.append(
            Divergence(
                "node_answer",
                f"node {a.id} answered differently{differently}",
                node=a.id,
                replay_node=b.id,
                depth=a.depth,
                recorded=excerpt(a.answer),
                replayed=excerpt(b.answer),
                position=_node_end(b),
            )
        )
    return differing


def _unpaired(old: RunTrace, new: RunTrace, pairing: _Pairing, end: float, out: list[Divergence]) -> None:
    """Nodes (that got a container) on one side only."""
    matched = set(pairing.pairs.values())
    for onode, a in old.nodes.items():
        if onode not in matched and a.container is not None:
            out.append(
                Divergence(
                    "node_missing",
                    f"recorded node {onode} (depth {a.depth}) has no counterpart in the replay",
                    node=onode,
                    depth=a.depth,
                    recorded=excerpt(a.answer),
                    position=end,
                )
            )
    for rnode, b in new.nodes.items():
        if rnode not in pairing.pairs and rnode not in pairing.unknown and b.container is not None:
            out.append(
                Divergence(
                    "node_extra",
                    f"replayed node {rnode} (depth {b.depth}) has no counterpart in the recording",
                    replay_node=rnode,
                    depth=b.depth,
                    replayed=excerpt(b.answer),
                    position=_node_end(b),
                )
            )


def _compare_ends(old_end: dict[str, Any], new_end: dict[str, Any], at: float, out: list[Divergence]) -> None:
    if old_end.get("status") != new_end.get("status"):
        out.append(
            Divergence(
                "run_status",
                f"the run ended {new_end.get('status')}, the recording {old_end.get('status')}",
                recorded=excerpt(old_end.get("error")),
                replayed=excerpt(new_end.get("error")),
                position=at,
            )
        )
    if _answer_key(old_end) != _answer_key(new_end):
        out.append(
            Divergence(
                "run_answer",
                "the run's final answer differs",
                recorded=excerpt(old_end.get("answer")),
                replayed=excerpt(new_end.get("answer")),
                position=at,
            )
        )


def _counts(
    recording: Recording, old: RunTrace, new: RunTrace, served: list[Served], differing: int, found: int
) -> dict[str, int]:
    how = collections.Counter(s.how for s in served)
    return {
        "requests": len(served),
        "matched_exact": how["exact"],
        "unknown_requests": how["unknown"],
        "recorded_calls": len(recording.calls),
        "nodes_recorded": sum(1 for n in old.nodes.values() if n.container is not None),
        "nodes_replayed": sum(1 for n in new.nodes.values() if n.container is not None),
        "cells_recorded": sum(len(_cells(n)) for n in old.nodes.values()),
        "cells_replayed": sum(len(_cells(n)) for n in new.nodes.values()),
        "cells_differing": differing,
        "divergences": found,
    }


def _answer_key(end: dict[str, Any]) -> Any:
    """What identifies a run's answer in its run_end: the digest when the answer was cut."""
    digest = end.get("answer_sha256")
    if end.get("answer_truncated") and isinstance(digest, str):
        return ("sha256", digest)
    answer = end.get("answer")
    if isinstance(answer, str) and len(answer) >= 64 * 1024:
        return ("sha256", hashlib.sha256(answer.encode("utf-8", "surrogatepass")).hexdigest())
    return answer


def _cells(node: Node) -> dict[tuple[int, int], Cell]:
    """A node's cells that ran to the end (a ``cell`` event), by (step, index)."""
    return {(c.step, c.index): c for c in node.cells if c.finished}


def _cell_key(cell: Cell) -> tuple[str, str, str]:
    return (cell.code or "", cell.output or "", cell.error or "")


def _shown(cell: Cell) -> str:
    return (cell.output or "") + (f"\n[error] {cell.error}" if cell.error else "")


def _compare_cells(a: Node, b: Node, out: list[Divergence]) -> int:
    """Append the differences between two paired nodes' cells; returns how many differ."""
    old_cells, new_cells = _cells(a), _cells(b)
    differing = 0
    for key in sorted(set(old_cells) | set(new_cells)):
        old, new = old_cells.get(key), new_cells.get(key)
        common = dict(node=a.id, replay_node=b.id, depth=a.depth, step=key[0], index=key[1])
        where = f"node {a.id} step {key[0]} cell {key[1]}"
        at = new.t_end if new is not None and new.t_end is not None else _node_end(b)
        if new is None:
            assert old is not None
            found = Divergence(
                "cell_missing",
                f"{where} ran in the recording but not in the replay",
                recorded=excerpt(old.code),
                position=at,
                **common,
            )
        elif old is None:
            found = Divergence(
                "cell_extra",
                f"{where} ran in the replay only",
                replayed=excerpt(new.code),
                position=at,
                **common,
            )
        elif old.code != new.code:
            found = Divergence(
                "cell_code",
                f"{where} ran other code",
                recorded=excerpt(old.code),
                replayed=excerpt(new.code),
                position=at,
                **common,
            )
        elif _cell_key(old) != _cell_key(new):
            found = Divergence(
                "cell_output",
                f"{where}: the same code printed something else",
                recorded=excerpt(_shown(old)),
                replayed=excerpt(_shown(new)),
                position=at,
                **common,
            )
        else:
            continue
        out.append(found)
        differing += 1
    return differing


def _cells_per_depth(old: RunTrace, new: RunTrace) -> list[int]:
    """Depths whose multisets of (code, output) cells differ, whatever the node pairing."""

    def count(run: RunTrace) -> dict[int, collections.Counter]:
        out: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for n in run.nodes.values():
            out[n.depth].update(_cell_key(c) for c in _cells(n).values())
        return out

    a, b = count(old), count(new)
    return sorted(d for d in set(a) | set(b) if a.get(d) != b.get(d))
