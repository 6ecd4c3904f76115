"""The live recursion tree a person watches on a terminal while a run works.

It is fed by the same events as the trace (plus listener-only progress ticks), keeps a small
model of every node, and redraws a few times a second from that model, so a burst of events
from a 256-way fan-out costs a dictionary update each, not a redraw each. Big fan-outs are
folded: running nodes are always shown, finished siblings are summarised, and the tree never
grows past the terminal's height. Every event is made visible (:mod:`rlm_sandbox.safe_text`)
as it arrives, so node ids, model names and errors a model or a cell chose can only show.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text
from rich.tree import Tree

from rlm_sandbox.safe_text import visible_data
from rlm_sandbox.trace import events
from rlm_sandbox.trace.model import Node
from rlm_sandbox.trace.render import fmt_bytes, fmt_tokens
from rlm_sandbox.trace.tree import TraceBuilder
from rlm_sandbox.trace.view import TraceView

STATUS_STYLE = {
    "starting": "cyan",
    "thinking": "magenta",
    "running a cell": "yellow",
    "waiting": "blue",
    "done": "green",
    "failed": "red",
}
WAIT_SHOWN_S = 10.0  # a node's own model call waiting longer than this is shown, with its limit
SHOWN_FINISHED = 3  # finished children shown per parent (the most recent); the rest are folded


@dataclass
class NodeState:
    """What only a live view knows of a node (what it is doing now, for how long), over the
    node model every trace reader shares (:class:`rlm_sandbox.trace.tree.Node`)."""

    facts: Node
    began: float
    status: str = "starting"
    ended: float | None = None
    pending: int = 0
    loaded: int = 0
    size: int = 0
    loading: bool = False
    note: str = ""
    children: list[str] = field(default_factory=list)
    started: bool = False  # it got a container (a node refused by a budget never does)
    call: Any = None  # the node's own model call in flight (its id), when one is
    call_since: float = 0.0
    call_limit: float | None = None

    @property
    def id(self) -> str:
        return self.facts.id

    @property
    def depth(self) -> int:
        return self.facts.depth

    @property
    def parent(self) -> str | None:
        return self.facts.parent

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    @property
    def steps(self) -> int:
        """Model turns of the node's own (steps, compaction, last word): sub-calls are not."""
        return sum(1 for c in self.facts.lm_calls if c.finished and c.purpose != "sub_call")

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.facts.lm_calls if c.finished)

    @property
    def cost(self) -> float:
        return sum(c.cost_usd for c in self.facts.lm_calls if c.finished)


class LiveTree:
    """A listener for a run's events that draws the tree with rich's ``Live``."""

    def __init__(self, console: Console, *, verbose: bool = False) -> None:
        self.console = console
        self.nodes: dict[str, NodeState] = {}
        self.builder = TraceBuilder()  # the node model every trace reader shares
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.limits: dict[str, Any] = {}
        self.model = ""
        self.lm_calls = 0
        self.cache_hits = 0
        self.tokens = 0
        self.cost = 0.0
        self.alive = 0
        self.image_note = ""
        self.final: dict[str, Any] | None = None
        self.t_end: float | None = None  # when run_end came: the clock stops there
        self._fits = True
        self.unsafe = False
        self._lines = TraceView(console) if verbose else None
        self._live = Live(
            get_renderable=self.render,
            console=console,
            refresh_per_second=6,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    # ---- lifecycle

    def __enter__(self) -> LiveTree:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._live.is_started:
            self._live.refresh()
            self._live.stop()

    # ---- events

    def on_event(self, raw: dict[str, Any]) -> None:
        clean = visible_data(raw)
        with self.lock:
            if self.final is not None:
                return  # the run has ended: what its unwinding threads still say is not news
            ev = self.builder.feed(clean)
            self._apply(ev)
        if self._lines is not None and ev.name in ("cell", "lm_error", "budget", "error"):
            self._lines.on_event(clean)

    def _apply(self, ev: events.Event) -> None:
        """What the event changes of the view, beyond the shared node model (fed already)."""
        if isinstance(ev, events.RunStart):
            self.limits = dict(ev.limits or {})
            self.model = ev.model or ""
            self.unsafe = bool(ev.unsafe)
        elif isinstance(ev, events.ImageProgress):
            self.image_note = (ev.message or "")[:100]
        elif isinstance(ev, events.RunEnd):
            self.final = ev.model_dump()
            self._close_open_nodes()
        node_id = events.declared(ev, "node")
        if isinstance(ev, events.NodeBegin) and node_id is not None:
            facts = self.builder.run.nodes[node_id]
            self.nodes[node_id] = NodeState(facts, time.monotonic())
            if facts.parent in self.nodes:
                self.nodes[facts.parent].children.append(node_id)
            return
        node = self.nodes.get(node_id or "")
        if node is not None:
            self._apply_to_node(node, ev)

    def _apply_to_node(self, node: NodeState, ev: events.Event) -> None:
        if isinstance(ev, events.NodeStart):
            node.status = "thinking"
            self.image_note = ""
            if not node.started:
                node.started = True
                self.alive += 1
        elif isinstance(ev, events.LMStart) and ev.purpose != "sub_call":
            node.status, node.note = "thinking", ""
            node.call, node.call_since, node.call_limit = ev.call, time.monotonic(), ev.timeout_s
        elif isinstance(ev, events.LMError | events.LMAbandoned | events.LMCut):
            if ev.call in (None, node.call):
                node.call = None
        elif isinstance(ev, events.LMCacheHit):
            self.cache_hits += 1
            if ev.purpose == "sub_call":
                node.pending = max(0, node.pending - 1)
        elif isinstance(ev, events.LMCall):
            self.lm_calls += 1
            self.tokens += (ev.prompt_tokens or 0) + (ev.completion_tokens or 0)
            self.cost += ev.cost_usd or 0.0
            if ev.call is not None and ev.call == node.call:
                node.call = None
            if ev.purpose == "sub_call":
                node.pending = max(0, node.pending - 1)
        elif isinstance(ev, events.Question):
            node.status, node.note = "thinking", ""
        elif isinstance(ev, events.Answer):
            node.status = "done" if ev.status == "ok" else "failed"
            node.note = "" if ev.status == "ok" else (ev.error or "")[:80]
        elif isinstance(ev, events.Cell):
            if ev.error:
                node.note = ev.error.splitlines()[0][:60]
        elif isinstance(ev, events.CellStart):
            node.status = "running a cell"
        elif isinstance(ev, events.SubCall):
            node.pending += 1
        elif isinstance(ev, events.LoadProgress):
            node.loaded, node.size = ev.sent or 0, ev.size or 0
            node.loading = node.size < 0 or node.loaded < node.size
        elif isinstance(ev, events.NodeEnd):
            stopped = (ev.error or "").startswith(("KeyboardInterrupt", "SystemExit"))
            self._end_node(node, ev.status == "done", "interrupted" if stopped else (ev.error or "")[:80])

    def _end_node(self, node: NodeState, done: bool, note: str) -> None:
        node.status = "done" if done else "failed"
        node.ended = time.monotonic()
        node.loading = False
        node.call = None
        if not done:
            node.note = note
        if node.started:
            node.started = False
            self.alive = max(0, self.alive - 1)
        parent = self.nodes.get(node.parent or "")
        if parent is not None:
            parent.pending = max(0, parent.pending - 1)

    def _close_open_nodes(self) -> None:
        """The run ended: its last frame must be true (no node still "thinking", no
        container counted up), whatever events a stop cut short."""
        reason = str((self.final or {}).get("reason") or (self.final or {}).get("status") or "stopped")
        self.t_end = time.monotonic()
        for node in self.nodes.values():
            if not node.finished:
                self._end_node(node, False, reason[:80])

    # ---- drawing

    def _label(self, n: NodeState) -> Text:
        status = n.status
        if status in ("thinking", "running a cell") and n.pending:
            status = f"waiting on {n.pending} sub-call{'s' if n.pending != 1 else ''}"
        style = STATUS_STYLE.get(n.status if not status.startswith("waiting") else "waiting", "white")
        elapsed = (n.ended or time.monotonic()) - n.began
        text = Text()
        text.append(f"{n.id:<6}", style="bold")
        text.append(f" d{n.depth} ")
        text.append(f"{status:<22}", style=style)
        text.append(f" {n.steps:>2} steps  {fmt_tokens(n.tokens):>6} tok  ${n.cost:.4f}  {elapsed:6.1f} s")
        waited = time.monotonic() - n.call_since
        if n.call is not None and not n.finished and waited >= WAIT_SHOWN_S:
            # A model that does not answer must be visible, not a silent "thinking".
            limit = f" (limit {n.call_limit:.0f} s)" if n.call_limit else ""
            text.append(f"  waiting for the model {waited:.0f} s{limit}", style="yellow")
        if n.loading:
            total = fmt_bytes(n.size) if n.size > 0 else "?"
            text.append(f"  loading {fmt_bytes(n.loaded)}/{total}", style="cyan")
        if n.note:
            text.append(f"  {n.note}", style="red" if n.status == "failed" else "dim")
        return text

    def _add(self, tree: Tree, n: NodeState, budget: list[int]) -> None:
        label: RenderableType = self._label(n)
        if n.loading and n.size > 0:
            bar = ProgressBar(total=n.size, completed=n.loaded, width=30)
            label = Group(label, bar)
        branch = tree.add(label)
        budget[0] -= 1
        kids = [self.nodes[c] for c in n.children if c in self.nodes]
        active = [k for k in kids if not k.finished]
        finished = [k for k in kids if k.finished]
        keep = len(finished) if self._fits else SHOWN_FINISHED
        shown = active + finished[len(finished) - keep :] if keep else active
        hidden = finished[: len(finished) - keep]
        for k in sorted(shown, key=lambda k: k.began):
            if budget[0] <= 1:
                hidden.append(k)
                continue
            self._add(branch, k, budget)
        if hidden:
            done = sum(1 for k in hidden if k.status == "done")
            failed = sum(1 for k in hidden if k.status == "failed")
            running = len(hidden) - done - failed
            parts = (
                [f"{done} done"]
                + [f"{failed} failed"] * bool(failed)
                + [f"{running} running"] * bool(running)
            )
            branch.add(Text(f"… {len(hidden)} more: {', '.join(parts)}", style="dim"))
            budget[0] -= 1

    def _footer(self) -> RenderableType:
        lim = self.limits
        elapsed = (self.t_end or time.monotonic()) - self.t0
        totals = Text(
            f"{self.lm_calls} LM calls"
            + (f" (+{self.cache_hits} cached)" if self.cache_hits else "")
            + f" · {fmt_tokens(self.tokens)} tokens · ${self.cost:.4f} · "
            f"{len(self.nodes)} nodes · {self.alive} containers up · {elapsed:.1f} s",
            style="bold",
        )
        left = []
        if lim.get("max_lm_calls"):
            left.append(f"LM calls {max(0, lim['max_lm_calls'] - self.lm_calls)}")
        if lim.get("max_tokens"):
            left.append(f"tokens {max(0, lim['max_tokens'] - self.tokens)}")
        if lim.get("max_cost"):
            left.append(f"cost ${max(0.0, lim['max_cost'] - self.cost):.4f}")
        if lim.get("timeout_s"):
            left.append(f"time {max(0.0, lim['timeout_s'] - elapsed):.0f} s")
        if lim.get("max_containers"):
            left.append(f"containers {max(0, lim['max_containers'] - self.alive)}")
        parts: list[RenderableType] = [
            totals,
            Text("budget left: " + (", ".join(left) or "no limits set"), style="dim"),
        ]
        if self.final is not None and self.final.get("reason"):
            parts.append(Text(f"stopped: {self.final['reason']}; every container removed", style="yellow"))
        return Group(*parts)

    def render(self) -> RenderableType:
        with self.lock:
            title = Text(f"rlm-sandbox · {self.model}", style="bold")
            if self.unsafe:
                title.append(
                    "  ⚠ UNSAFE: --backend local, code runs on this machine with no sandbox", style="bold red"
                )
            tree = Tree(title, guide_style="dim")
            root = self.nodes.get("root")
            room = max(6, self.console.size.height - 6)
            self._fits = len(self.nodes) <= room
            if root is not None:
                self._add(tree, root, [room])
            parts: list[RenderableType] = [tree]
            if self.image_note:
                parts.append(Text(f"⧗ {self.image_note}", style="cyan"))
            parts.append(self._footer())
            return Group(*parts)
