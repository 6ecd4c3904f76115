"""A run's trace events as MCP progress notifications, so an agent sees a long run move.

An RLM run can take minutes; an MCP client shows (and its user waits on) the
``notifications/progress`` a tool sends for the request's ``progressToken``. This listener
counts what the run's events say — steps, nodes, sub-calls, model calls, tokens, cost — and
reports one notification per event that changes what a person would want to see, with a
one-line message. ``progress`` only grows (the protocol asks for that): it counts the
reported events. The run's total is unknown in advance, so no ``total`` is sent.

A client that sent no ``progressToken`` gets nothing: the SDK's ``report_progress`` is a
no-op then. A failure to send (the client went away) never touches the run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

#: The events that move the progress forward, and what each one is.
REPORTED = frozenset(
    {
        "run_start",
        "image_progress",
        "node_start",
        "cell_start",
        "sub_call",
        "lm_call",
        "node_end",
        "budget",
        "error",
        "run_end",
    }
)

Report = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass
class Tally:
    """What the run has done so far, from its events."""

    nodes: int = 0
    nodes_done: int = 0
    sub_calls: int = 0
    lm_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    seen_steps: set[tuple[Any, Any]] = field(default_factory=set)

    @property
    def steps(self) -> int:
        return len(self.seen_steps)

    def add(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if name == "node_start":
            self.nodes += 1
        elif name == "node_end":
            self.nodes_done += 1
        elif name == "cell_start":  # a step may run several cells: counted once
            self.seen_steps.add((event.get("node"), event.get("step")))
        elif name == "sub_call":
            self.sub_calls += 1
        elif name == "lm_call":
            self.lm_calls += 1
            self.tokens += _int(event.get("prompt_tokens")) + _int(event.get("completion_tokens"))
            self.cost_usd += _num(event.get("cost_usd"))

    def line(self) -> str:
        return (
            f"{self.steps} steps · {self.nodes} nodes ({self.nodes_done} done) · {self.sub_calls} sub-calls · "
            f"{self.lm_calls} model calls · {self.tokens:,} tokens · ${self.cost_usd:.4f}"
        )


class ProgressListener:
    """An ``async`` run listener (events arrive in order) that reports through ``report``."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self.tally = Tally()
        self.sent = 0

    async def __call__(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        self.tally.add(event)
        if name not in REPORTED:
            return
        self.sent += 1
        try:
            await self._report(float(self.sent), None, _message(name, event, self.tally))
        except Exception:
            pass  # the client went away or the request ended: the run goes on regardless


def _message(name: Any, event: dict[str, Any], tally: Tally) -> str:
    if name == "run_start":
        return "run started: starting the sandbox and asking the model"
    if name == "image_progress":
        return f"preparing the sandbox image: {str(event.get('message') or '')[:200]}"
    if name in ("budget", "error"):
        return f"{event.get('status') or name}: {str(event.get('error') or '')[:200]} · {tally.line()}"
    if name == "run_end":
        return f"run ended: {event.get('status')} · {tally.line()}"
    return tally.line()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _num(value: Any) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0.0
    )
