"""One run as the service sees it: who owns it, its status, its events, its outcome.

Its events are kept in order as the run emits them (its async listener gets them in order),
so a client of ``GET /v1/runs/ID/events`` that connects late still reads the run from its
first event; :meth:`RunRecord.follow` then waits for the next. Progress ticks meant for a
terminal (``notify_only`` events) are not kept: they are not part of the trace. Every run
ends with a ``run_end`` event, even one cancelled before it started (the service writes it
then, with the fields the engine's would have), and it is published only once the run has
ended for the service too: a client that reads ``run_end`` and then ``GET``s the run finds
its final status, its upload removed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from rlm_sandbox.safe_text import json_text
from rlm_sandbox.trace.events import EVENTS, RunEnd

#: The keys of ``run --json`` (RLMResult.to_json) before a run has its outcome.
_PENDING: dict[str, Any] = {
    "answer": None,
    "error": None,
    "steps": 0,
    "lm_calls": 0,
    "tokens": {"prompt": 0, "completion": 0},
    "cost_usd": 0.0,
    "wall_s": 0.0,
    "nodes": 0,
    "containers": 0,
    "max_depth_reached": 0,
    "trace": None,
    "citations": [],
    "lm_cache_hits": 0,
    "warnings": [],
}
FINISHED = (
    "ok",
    "budget_exhausted",
    "sandbox_error",
    "lm_error",
    "answer_invalid",
    "error",
    "usage",
    "cancelled",
)


def outcome_of_error(status: str, message: str, hint: str | None = None) -> dict[str, Any]:
    """The ``run --json`` object of a run that failed before it could start."""
    return {**_PENDING, "status": status, "error": message} | ({"hint": hint} if hint else {})


class RunRecord:
    """A run of one tenant, from ``POST`` until the service forgets it."""

    def __init__(self, run_id: str, tenant: str, task: str) -> None:
        self.id = run_id
        self.tenant = tenant
        self.task = task
        self.status = "queued"
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.events: list[dict[str, Any]] = []
        self.outcome: dict[str, Any] | None = None
        self.handle: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.cancel_reason: str | None = None  # why the service cancelled it (DELETE, shutdown)
        self.containers = 0  # alive now, from its node_start/node_end events
        self._wake = asyncio.Event()
        self._closed = False  # run_end is in: a late event of a cancelled run is dropped
        self._end: dict[str, Any] | None = None  # the engine's run_end, until finish()
        self._calls = 0
        self._tokens = {"prompt": 0, "completion": 0}
        self._cost = 0.0

    # ---- what the run reports

    async def on_event(self, event: dict[str, Any]) -> None:
        """The run's async listener: called in order, one event at a time."""
        self.add(event)

    def add(self, event: dict[str, Any]) -> None:
        kind = EVENTS.get(str(event.get("event")))
        if self._closed or (kind is not None and kind.notify_only):
            return
        name = event.get("event")
        if name == "run_end":
            # Held back until :meth:`finish`: a client that reads ``run_end`` then finds the
            # run ended (its status final, its spool gone), never still "running".
            self._end = event
            return
        self._append(event)
        if name == "node_start":
            self.containers += 1
        elif name == "node_end":
            self.containers = max(0, self.containers - 1)
        elif name in ("lm_call", "lm_late"):
            self._calls += name == "lm_call"
            self._tokens["prompt"] += int(event.get("prompt_tokens") or 0)
            self._tokens["completion"] += int(event.get("completion_tokens") or 0)
            self._cost += float(event.get("cost_usd") or 0.0)

    def _append(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._notify()

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def start(self) -> None:
        self.status = "running"
        self.started = time.time()

    def finish(self, outcome: dict[str, Any]) -> None:
        """The run ended (or never started): its ``run --json`` object, and a ``run_end``."""
        self.outcome = dict(outcome)
        self.status = str(outcome.get("status") or "error")
        self.finished = time.time()
        self.containers = 0
        end = self._end
        if end is None:  # it never started, or it was stopped before its engine said so
            fields = {k: v for k, v in self.outcome.items() if k in RunEnd.model_fields}
            end = {"event": "run_end", "run": self.id, "ts": self.finished, **fields}
        self._append(end)
        self._closed = True
        self.done.set()
        self._notify()

    def ended(self, status: str, error: str) -> dict[str, Any]:
        """The outcome of a run the service stopped: what its engine's ``run_end`` counted,
        if it got that far, with the service's ``status`` and reason."""
        body = dict(_PENDING)
        if self._end is not None:
            body |= {k: self._end[k] for k in _PENDING if self._end.get(k) is not None}
        return body | {"status": status, "error": error}

    # ---- what clients read

    def to_json(self) -> dict[str, Any]:
        """``run --json``'s object, plus ``id``; ``status`` is also ``queued`` or ``running``
        (with the calls, tokens and cost so far)."""
        if self.outcome is not None:
            body = {**self.outcome, "status": self.status}
        else:
            since = self.started or self.created
            body = {**_PENDING, "status": self.status}
            body |= {
                "lm_calls": self._calls,
                "tokens": dict(self._tokens),
                "cost_usd": round(self._cost, 8),
                "wall_s": round(time.time() - since, 3) if self.started else 0.0,
            }
        body["trace"] = f"/v1/runs/{self.id}/trace"
        return {"id": self.id, **body}

    def trace_lines(self) -> str:
        return "".join(json_text(e, default=str) + "\n" for e in self.events)

    async def follow(self, start: int = 0, keepalive_s: float = 15.0) -> AsyncIterator[tuple[int, Any]]:
        """``(index, event)`` from ``start`` on, live, until ``run_end``; ``(-1, None)`` when
        nothing came for ``keepalive_s`` (so a stream can say it is alive)."""
        index = start
        while True:
            while index < len(self.events):
                event = self.events[index]
                yield index, event
                index += 1
                if event.get("event") == "run_end":
                    return
            if self.done.is_set() and index >= len(self.events):
                return
            wake = self._wake
            try:
                await asyncio.wait_for(wake.wait(), keepalive_s)
            except TimeoutError:
                yield -1, None
