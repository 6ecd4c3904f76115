"""What ``rlm_query`` answers: a run's result as structured content and as text for a model.

The structured content (:class:`QueryAnswer`, published as the tool's ``outputSchema``) is
for programs; the text block is what most agents read, so it leads with the answer and ends
with one line of what it cost. A run that did not answer (a budget stop, a model or sandbox
error, a cancelled run) is a tool error (``isError``) whose text says what happened and what
to change, with the same structured content: an agent can read why, and retry differently.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class QueryAnswer(BaseModel):
    """The outcome of one ``rlm_query`` call (the fields of ``run --json`` an agent needs)."""

    answer: str | None = Field(description="the answer; null when the run did not answer")
    status: str = Field(
        description="ok, budget_exhausted, lm_error, sandbox_error, answer_invalid, cancelled or error"
    )
    error: str | None = Field(None, description="what went wrong, when status is not ok")
    hint: str | None = Field(None, description="what to change, when there is something to change")
    budget: str | None = Field(None, description="the budget that stopped the run, if one did")
    fallback: bool = Field(False, description="the answer is the model's best guess after a budget stop")
    cost_usd: float = Field(description="what the whole recursion tree cost, in USD")
    tokens: dict[str, int] = Field(description="prompt and completion tokens, whole tree")
    lm_calls: int
    steps: int
    nodes: int = Field(description="RLM nodes run (one sandbox container each)")
    wall_s: float
    trace: str | None = Field(None, description="the run's trace file (rlm-sandbox trace show FILE)")
    citations: list[dict[str, Any]] = Field(
        default_factory=list, description="what the answer cited, checked against the input on the host"
    )
    warnings: list[str] = Field(default_factory=list, description="what the run skipped or doubted")


def answer_of(result: Any) -> QueryAnswer:
    """The :class:`QueryAnswer` of an :class:`~rlm_sandbox.rlm.result.RLMResult`."""
    return QueryAnswer(
        answer=result.answer,
        status=result.status,
        error=result.error,
        hint=result.hint or None,
        budget=result.budget,
        fallback=bool(result.fallback),
        cost_usd=result.cost_usd,
        tokens=dict(result.tokens),
        lm_calls=result.lm_calls,
        steps=result.steps,
        nodes=result.nodes,
        wall_s=result.wall_s,
        trace=result.trace,
        citations=[c.to_json() for c in result.citations],
        warnings=list(result.warnings),
    )


def render(answer: QueryAnswer) -> str:
    """The text block: the answer (or why there is none), then one line of what it cost."""
    toks = answer.tokens.get("prompt", 0) + answer.tokens.get("completion", 0)
    tail = (
        f"[rlm-sandbox: {answer.status} · {answer.steps} steps · {answer.nodes} nodes · "
        f"{answer.lm_calls} model calls · {toks:,} tokens · ${answer.cost_usd:.4f} · {answer.wall_s:.1f} s"
        + (f" · trace: {answer.trace}" if answer.trace else "")
        + "]"
    )
    if answer.status == "ok":
        return f"{answer.answer or ''}\n\n{tail}"
    label = answer.status + (f" ({answer.budget})" if answer.budget else "")
    parts = [f"The run did not answer: {label}: {answer.error or 'no detail'}"]
    if answer.hint:
        parts.append(f"hint: {answer.hint}")
    if answer.answer is not None:
        kind = "best answer before the stop" if answer.fallback else "partial answer"
        parts.append(f"{kind}: {answer.answer}")
    return "\n".join(parts) + f"\n\n{tail}"
