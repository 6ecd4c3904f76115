"""How a run ends: its cancel handle, its typed outcome, and the result built from its counters.

Why it is its own module: :mod:`rlm_sandbox.rlm.run` owns a run's lifecycle (opening,
sandboxes, stopping, ending); turning whatever stopped it into a ``--json`` status
(:func:`classify`), and the budget's counters into an :class:`RLMResult`
(:func:`build_result`), are pure functions of what the run hands them, shared by
``RLM.run`` and sessions. Nothing here touches a container, a model or the trace.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rlm_sandbox.errors import BudgetExhausted, RLMSandboxError, RunCancelled, outcome_of
from rlm_sandbox.rlm.citations import Citation
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.result import RLMResult


class Stoppable(Protocol):
    """What a :class:`Cancellation` needs of a run (``rlm_sandbox.rlm.run.Run``)."""

    def cancel(self, why: str = ...) -> None: ...

    def interrupt(self, signal: BaseException) -> None: ...


class Cancellation:
    """A handle to cancel a run from outside it (an asyncio task, ``DELETE /v1/runs/ID``):
    given to :meth:`RLM.run`, attached to the run once it exists; a cancel that comes first
    takes effect at once when it does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: Stoppable | None = None
        self.requested: str | None = None

    def attach(self, run: Stoppable) -> None:
        with self._lock:
            self._run = run
            why = self.requested
        if why is not None:
            run.cancel(why)

    def cancel(self, why: str = "the run was cancelled by its caller") -> None:
        with self._lock:
            if self.requested is None:
                self.requested = why
            run = self._run
        if run is not None:
            run.cancel(why)

    def interrupt(self, signal: BaseException) -> None:
        """Ctrl-C or SIGTERM reached the thread waiting for the run: stop it as interrupted."""
        with self._lock:
            run = self._run
        if run is not None:
            run.interrupt(signal)


@dataclass
class Outcome:
    """How a run (or one question) ended, before it is turned into a result."""

    status: str = "ok"
    error: str | None = None
    budget: str | None = None
    hint: str | None = None
    fallback_answer: str | None = None


def classify(exc: BaseException, reason: BaseException | None, fatal: BaseException | None) -> Outcome:
    """What stopped the run, as ``--json`` reports it: the first cause, not its echoes (a
    child's budget stop surfaces in its parent as a failed ``llm_query``). ``reason``: why the
    budget cancelled the run, if it did; ``fatal``: an error no node could recover from."""
    if not isinstance(exc, RLMSandboxError):  # a bug of ours: still a typed outcome, never a lost run
        return Outcome("error", f"{type(exc).__name__}: {exc}")
    cause: BaseException = reason if isinstance(reason, RLMSandboxError) else exc
    if fatal is not None and not isinstance(reason, RunCancelled):
        cause = fatal

    status, budget = outcome_of(cause)
    message = cause.message if isinstance(cause, RLMSandboxError) else str(cause)
    hint = getattr(cause, "hint", None) or None
    fallback = None
    if status == "budget_exhausted":
        for candidate in (exc, cause):
            if isinstance(candidate, BudgetExhausted) and candidate.fallback_answer is not None:
                fallback = candidate.fallback_answer
                break
    return Outcome(status, message, budget, hint, fallback)


def call_timings(
    lm_ready_s: float | None,
    first_request_s: float | None,
    first_lm_call_s: float | None,
    first_cell_s: float | None,
) -> dict[str, float]:
    """The run's start-up timings that were measured, rounded (``--json``'s ``timings``)."""
    return {
        k: round(v, 4)
        for k, v in (
            ("lm_ready_s", lm_ready_s),
            ("first_request_s", first_request_s),
            ("first_lm_call_s", first_lm_call_s),
            ("first_cell_s", first_cell_s),
        )
        if v is not None
    }


def build_result(
    answer: str | None,
    outcome: Outcome,
    *,
    now: dict[str, Any],
    since: dict[str, Any] | None,
    steps: int | None,
    wall_s: float | None,
    fallback: bool,
    citations: list[Citation],
    config: RLMConfig,
    models: Any,
    timings: dict[str, float],
    cache_hits: int,
    warnings: Sequence[str],
    output: Any,
    typed: bool,
) -> RLMResult:
    """The result from the budget's counters ``now``: the whole run, or since the ``since``
    snapshot (one question of a session, which reports no start-up timings)."""
    base = since or {"lm_calls": 0, "tokens": {"prompt": 0, "completion": 0}, "cost_usd": 0.0}
    return RLMResult(
        answer=answer,
        status=outcome.status,
        error=outcome.error,
        steps=now["steps"] if steps is None else steps,
        lm_calls=now["lm_calls"] - base["lm_calls"],
        tokens={k: now["tokens"][k] - base["tokens"][k] for k in ("prompt", "completion")},
        cost_usd=round(now["cost_usd"] - base["cost_usd"], 6),
        wall_s=now["wall_s"] if wall_s is None else wall_s,
        nodes=now["nodes"] - (since or {}).get("nodes", 0),
        containers=now["containers"] - (since or {}).get("containers", 0),
        max_depth_reached=now["max_depth_reached"],
        trace=str(config.trace) if config.trace else None,
        budget=outcome.budget,
        hint=outcome.hint,
        unsafe_backend=config.sandbox.backend if config.sandbox.backend != "docker" else None,
        fallback=fallback,
        models=models,
        output=output if answer is not None else None,
        typed=typed,
        timings=timings if since is None else {},
        citations=citations,
        lm_cache_hits=cache_hits - (since or {}).get("lm_cache_hits", 0),
        warnings=list(warnings),
    )


def trace_fields(result: RLMResult) -> dict[str, Any]:
    """A result's ``--json`` keys as a trace event carries them: the typed ``output`` is not
    one of them (the ``answer`` holds its JSON text, and an event's ``output`` is a cell's)."""
    fields = result.to_json()
    fields.pop("output", None)
    return fields
