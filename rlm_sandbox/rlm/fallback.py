"""The model's best answer when a budget stops the run before it said ``FINAL``.

A run that spent its budget has usually learned something; throwing that away is what users
of other RLM libraries complain about. So the root's model is asked once more, with its
history and the reason for stopping, to answer from what it has: one call, no code run, and
the result says it is a fallback.

It is *not* outside the budgets: the caps are hard, and the cap wins. After each of its
steps the root keeps a hold for this call -- one call, and the worst case of its history plus
a short reply (``FALLBACK_MAX_TOKENS``) -- that other calls may not use, taken only out of
room that is free then. The fallback spends the hold and whatever else is left, its history
cut from the oldest steps when it would not fit, and it is skipped (traced, with the reason)
when even the system prompt and the task do not fit. In time it is bounded by ``FALLBACK_TIMEOUT_S``
and, after a wall-time stop, by the grace of :data:`rlm_sandbox.rlm.budget.FALLBACK_GRACE_S`
(see :mod:`rlm_sandbox.rlm.budget` and :meth:`rlm_sandbox.rlm.calls.ModelCalls.fallback`).
A tenant's caps and a cancelled run allow no fallback at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rlm_sandbox.errors import RLMSandboxError
from rlm_sandbox.rlm.prompts import render

#: The fallback call's own time limit.
FALLBACK_TIMEOUT_S = 60.0
#: Completion tokens of the fallback at most (fewer when ``lm_max_tokens`` is lower): an
#: answer, not a step of code. Its hold is sized with it, so it crowds out less work.
FALLBACK_MAX_TOKENS = 1024
#: Characters of the stop's reason the fallback prompt carries (the hold is sized for them).
REASON_ROOM = 400

Messages = list[dict[str, str]]


def fallback_prompt(reason: str) -> Messages:
    """The message that asks for the answer now (the hold uses a reason of full length)."""
    return [{"role": "user", "content": render("fallback", reason=reason[:REASON_ROOM])}]


async def best_answer(
    messages: Messages,
    reason: str,
    ask: Callable[[Messages], Awaitable[str]],
    finish: Callable[[str], Awaitable[str | None]],
) -> str | None:
    """Ask the model for its answer now; None if it has none or the call fails (or does
    not fit: ``ask`` raises then).

    ``ask`` sends one request to the node's model; ``finish`` turns its reply into an answer
    the run accepts (``FINAL``/``FINAL_VAR``, checked against the schema), or None."""
    if not messages:
        return None
    request = [*messages, *fallback_prompt(reason)]
    try:
        text = await ask(request)
    except RLMSandboxError:
        return None
    try:
        return await finish(text)
    except RLMSandboxError:  # the sandbox is gone (a crash, or the wall clock): no FINAL_VAR
        return None
