"""The model's best answer when a budget stops the run before it said ``FINAL``.

A run that spent its budget has usually learned something; throwing that away is what users
of other RLM libraries complain about. So the root's model is asked once more, with its
whole history and the reason for stopping, to answer from what it has. This one call is
outside the budget that ran out (otherwise it could never happen) but bounded: one call, a
short timeout, no code run. Its cost is still counted, and the result says it is a fallback.
"""

from __future__ import annotations

from collections.abc import Callable

from rlm_sandbox.errors import RLMSandboxError
from rlm_sandbox.rlm.prompts import render

#: The fallback call's own time limit: it is outside the budget that ran out, so it is short.
FALLBACK_TIMEOUT_S = 60.0

Messages = list[dict[str, str]]


def best_answer(
    messages: Messages,
    reason: str,
    ask: Callable[[Messages], str],
    finish: Callable[[str], str | None],
) -> str | None:
    """Ask the model for its answer now; None if it has none or the call fails.

    ``ask`` sends one request to the node's model; ``finish`` turns its reply into an answer
    the run accepts (``FINAL``/``FINAL_VAR``, checked against the schema), or None."""
    if not messages:
        return None
    request = [*messages, {"role": "user", "content": render("fallback", reason=reason)}]
    try:
        text = ask(request)
    except RLMSandboxError:
        return None
    try:
        return finish(text)
    except RLMSandboxError:  # the sandbox is gone (a crash, or the wall clock): no FINAL_VAR
        return None
