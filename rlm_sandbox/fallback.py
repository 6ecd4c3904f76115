"""The model's best answer when a budget stops the run before it said ``FINAL``.

A run that spent its budget has usually learned something; throwing that away is what users
of other RLM libraries complain about. So the root's model is asked once more, with its
whole history and the reason for stopping, to answer from what it has. This one call is
outside the budget that ran out (otherwise it could never happen) but bounded: one call, a
short timeout, no code run. Its cost is still counted, and the result says it is a fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlm_sandbox.errors import BudgetExhausted, RLMSandboxError
from rlm_sandbox.prompts import render

if TYPE_CHECKING:
    from rlm_sandbox.rlm import Node

FALLBACK_TIMEOUT_S = 60.0


def best_answer(node: Node, sandbox: Any, exc: BudgetExhausted) -> str | None:
    """Ask the node's model for its answer now; None if it has none or the call fails."""
    run = node.run
    if not node.messages:
        return None
    messages = [*node.messages, {"role": "user", "content": render("fallback", reason=exc.message)}]
    timeout = min(FALLBACK_TIMEOUT_S, run.config.lm_timeout)
    run.budget.count_unchecked_call()
    try:
        text = run.call_model(node.lm, messages, node.id, node.depth, "fallback", timeout)
    except RLMSandboxError:
        return None
    try:
        answer, _note = node._final_from_text(sandbox, text)
    except RLMSandboxError:  # the sandbox is gone (a crash, or the wall clock): no FINAL_VAR
        answer = None
    if answer is not None and node.output is not None:
        # A typed run promises a typed answer: a last word that breaks the schema is none.
        answer = node._typed_text(answer) if node._check_answer(answer, retry=False) is None else None
    run.tracer.emit("fallback", node=node.id, budget=exc.budget, answered=answer is not None)
    return answer
