"""The best answer after a budget stop (rlm/fallback.py, Node._fallback): asked once, at the root
only, never for a tenant's cap or when disabled; a fallback that fails or has no answer leaves
the answer None and the stop as it was."""

from __future__ import annotations

import asyncio
from typing import Any

from rlm_sandbox.errors import LMError, SandboxCrashed
from rlm_sandbox.rlm.fallback import best_answer
from rlm_sandbox.testing import HTTPReply, error_body, generate_log, rlm_policy

from ..helpers import JSON_KEYS, never_finishes
from .seam import check_lifecycle, is_node, last_user, repl

ASKED = "The run has to stop now"


def answering(final: str, explore: str = "print(len(context))") -> Any:
    """A root that explores until the fallback question, which it answers with ``final``."""

    def policy(request: dict[str, Any]) -> Any:
        if ASKED in last_user(request):
            return final
        return repl(explore) if is_node(request) else "leaf"

    return policy


# ---- best_answer on its own


def answer_now(history: list[dict[str, str]], reason: str, ask: Any, finish: Any) -> str | None:
    """``best_answer`` with plain ``ask`` and ``finish``, run to its end."""

    async def aask(request: list[dict[str, str]]) -> str:
        return ask(request)

    async def afinish(text: str) -> str | None:
        return finish(text)

    return asyncio.run(best_answer(history, reason, aask, afinish))


def test_no_history_means_no_question() -> None:
    asked: list[Any] = []
    assert answer_now([], "why", lambda m: asked.append(m) or "FINAL(x)", lambda t: t) is None
    assert asked == []


def test_the_question_carries_the_history_and_the_reason() -> None:
    history = [{"role": "system", "content": "s"}, {"role": "user", "content": "task"}]
    sent: list[list[dict[str, str]]] = []

    def ask(request: list[dict[str, str]]) -> str:
        sent.append(request)
        return "FINAL(7)"

    assert answer_now(history, "the run made its limit of 3 LM calls", ask, lambda t: t[6:-1]) == "7"
    (request,) = sent
    assert request[:2] == history and request[2]["role"] == "user"
    assert ASKED in request[2]["content"] and "limit of 3 LM calls" in request[2]["content"]


def test_a_failed_call_or_a_dead_sandbox_gives_no_answer() -> None:
    history = [{"role": "user", "content": "task"}]

    def down(request: list[dict[str, str]]) -> str:
        raise LMError("provider down")

    def gone(text: str) -> str:
        raise SandboxCrashed("the kernel died")

    assert answer_now(history, "why", down, lambda t: t) is None
    assert answer_now(history, "why", lambda m: "FINAL_VAR(x)", gone) is None


# ---- through the seam


def test_a_budget_stop_at_the_root_asks_once_and_returns_a_fallback(seam) -> None:
    h = seam(answering("FINAL(best guess)"), max_lm_calls=3)
    result = h.run("abc")
    assert (result.status, result.budget) == ("budget_exhausted", "max_lm_calls")
    assert (result.answer, result.fallback) == ("best guess", True)
    assert list(result.to_json()) == [*JSON_KEYS, "fallback"]
    # The cap holds the fallback too: one of the 3 calls was kept back for it.
    assert [c["purpose"] for c in h.calls()] == ["step", "step", "fallback"]
    (event,) = h.named("fallback")
    assert (event["node"], event["budget"], event["answered"]) == ("root", "max_lm_calls", True)
    question = h.client.requests[-1]["messages"][-1]["content"]
    assert "limit of 3 LM calls" in question
    assert h.named("run_end")[0]["fallback"] is True


def test_the_fallback_may_name_a_variable_of_the_repl(seam) -> None:
    h = seam(answering("FINAL_VAR(found)", explore="found = context.upper()"), max_lm_calls=2)
    result = h.run("abc")
    assert (result.answer, result.fallback) == ("ABC", True)


def test_a_wall_time_stop_falls_back_too(seam) -> None:
    h = seam(answering("FINAL(in time)"), latency_s=0.1, timeout=0.3, max_steps=100)
    result = h.run("abc")
    assert (result.status, result.budget) == ("budget_exhausted", "timeout")
    assert (result.answer, result.fallback) == ("in time", True)


def test_no_fallback_when_it_is_disabled(seam) -> None:
    h = seam(answering("FINAL(unused)"), max_lm_calls=2, fallback_answer=False)
    result = h.run("abc")
    assert (result.answer, result.fallback) == (None, False)
    assert h.calls("fallback") == [] and h.named("fallback") == []


def test_a_fallback_without_a_final_answer_leaves_none(seam) -> None:
    h = seam(answering("I could not finish, sorry."), max_lm_calls=2)
    result = h.run("abc")
    assert (result.status, result.answer, result.fallback) == ("budget_exhausted", None, False)
    assert h.named("fallback")[0]["answered"] is False
    assert "fallback" not in result.to_json()


def test_a_failing_fallback_call_leaves_the_budget_stop_as_it_was(seam) -> None:
    """The fallback's own failure is not the run's outcome: the budget stop came first."""
    h = seam(answering(HTTPReply(500, error_body(500))), max_lm_calls=2)
    result = h.run("abc")
    assert (result.status, result.budget) == ("budget_exhausted", "max_lm_calls")
    assert (result.answer, result.fallback) == (None, False)
    assert h.named("fallback")[0]["answered"] is False
    check_lifecycle(h.events)


def test_a_last_word_with_an_answer_needs_no_fallback_call(seam) -> None:
    def policy(request: dict[str, Any]) -> str:
        if "You have no steps left" in last_user(request):
            return "FINAL(last word)"
        return never_finishes(request)

    h = seam(policy, max_steps=2)
    result = h.run("abc")
    assert (result.status, result.budget) == ("budget_exhausted", "max_steps")
    assert (result.answer, result.fallback) == ("last word", True)
    assert [c["purpose"] for c in h.calls()] == ["step", "step", "last_answer"]


def test_only_the_root_asks_for_a_fallback(seam) -> None:
    stats = generate_log(None, 60_000, seed=21)

    def policy(request: dict[str, Any]) -> Any:
        if ASKED in last_user(request):
            return "FINAL(root's guess)"
        return rlm_policy(request)

    h = seam(policy, depth=2, pool_size=0, max_lm_calls=3)
    result = h.run(stats.text, 'How many lines contain "ERROR disk"?')
    assert result.budget == "max_lm_calls"
    assert [c["node"] for c in h.calls("fallback")] == ["root"]
    assert (result.answer, result.fallback) == ("root's guess", True)
