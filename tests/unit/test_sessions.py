"""Sessions (rlm/session.py) through the seam: one kernel, one namespace and one conversation
across questions; per-question results as deltas of the session's counters; closing is
idempotent, ends the trace, and happens by itself when the kernel dies."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel

from rlm_sandbox.errors import ConfigError, SandboxClosed, SandboxStartError
from rlm_sandbox.rlm.session import Session
from rlm_sandbox.rlm.tenants import TenantLimits
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.testing import sequence_policy

from ..helpers import JSON_KEYS, never_finishes
from .seam import Harness, last_user, repl

TWO_QUESTIONS = (repl("x = 41"), "FINAL(set)", repl("y = x + 1"), "FINAL_VAR(y)")


def two_questions(h: Harness) -> tuple[Session, Any, Any]:
    session = h.rlm.session("abc").open()
    first = session.ask("first")
    second = session.ask("second")
    return session, first, second


def test_a_variable_of_the_first_question_answers_the_second(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS))
    session, first, second = two_questions(h)
    session.close()
    assert (first.status, first.answer) == ("ok", "set")
    assert (second.status, second.answer) == ("ok", "42")
    assert len(h.backend.started) == 1
    assert h.backend.started[0].cells == ["x = 41\n", "y = x + 1\n", "FINAL_VAR('y')"]


def test_each_result_counts_only_its_own_question(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS))
    session, first, second = two_questions(h)
    totals = session.totals()
    session.close()
    assert list(first.to_json()) == JSON_KEYS
    assert (first.lm_calls, second.lm_calls, totals["lm_calls"]) == (2, 2, 4)
    assert (first.steps, second.steps) == (2, 2)
    for key in ("prompt", "completion"):
        assert first.tokens[key] + second.tokens[key] == totals["tokens"][key]
    assert (first.nodes, second.nodes) == (1, 0)  # the root was made for the first question
    assert (first.containers, second.containers) == (1, 0)
    assert totals["questions"] == 2
    assert totals["models"]["scripted"]["calls"] == 4


def test_the_conversation_carries_over_to_the_next_question(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS))
    session, _, _ = two_questions(h)
    session.close()
    third_request = h.client.requests[2]["messages"]
    assert [m["role"] for m in third_request] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Task: first" in third_request[1]["content"]
    follow = third_request[-1]["content"]
    assert "A new question about the same input" in follow and "Question: second" in follow


def test_the_trace_numbers_questions_and_answers(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS))
    session, _, second = two_questions(h)
    session.close()
    assert [(e["number"], e["task"]) for e in h.named("question")] == [(1, "first"), (2, "second")]
    answers = h.named("answer")
    assert [e["number"] for e in answers] == [1, 2]
    assert {k: answers[1][k] for k in JSON_KEYS} == second.to_json()
    start = h.named("run_start")[0]
    assert start["session"] is True
    assert re.fullmatch(r"session-\d{8}-\d{6}-[0-9a-f]{6}", start["run"])


def test_close_is_idempotent_and_ends_the_trace_once(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS))
    session, _, _ = two_questions(h)
    session.close()
    session.close()
    ends = h.named("run_end")
    assert len(ends) == 1
    assert (ends[0]["status"], ends[0]["questions"], ends[0]["lm_calls"]) == ("closed", 2, 4)
    assert h.backend.alive() == []


def test_asking_a_closed_session_is_refused(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS))
    with h.rlm.session("abc") as session:
        session.ask("first")
    assert h.backend.alive() == []
    with pytest.raises(SandboxClosed):
        session.ask("again")


def test_an_empty_question_is_refused_without_a_trace(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS))
    with h.rlm.session("abc") as session, pytest.raises(ValueError, match="empty"):
        session.ask("  ")
    assert h.named("question") == [] and h.client.calls == 0


def test_a_session_whose_kernel_dies_closes_itself(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS))
    session = h.rlm.session("abc").open()
    assert session.ask("first").ok
    h.backend.kill(h.backend.started[0].id)
    broken = session.ask("second")
    assert broken.status == "sandbox_error" and "killed" in (broken.error or "")
    assert h.backend.alive() == []
    assert h.named("run_end")[0]["status"] == "closed"
    with pytest.raises(SandboxClosed):
        session.ask("third")


def test_a_session_that_cannot_start_leaves_nothing(seam) -> None:
    h = seam(never_finishes, backend=FakeBackend(fail_starts=1))
    session = h.rlm.session("abc")
    with pytest.raises(SandboxStartError):
        session.open()
    assert h.backend.alive() == [] and h.client.calls == 0
    assert h.named("run_end")[0]["status"] == "closed"
    with pytest.raises(SandboxClosed):
        session.ask("anything")


def test_a_session_refuses_the_local_backend_for_a_tenant(seam) -> None:
    h = seam(never_finishes, tenant="acme", sandbox=SandboxConfig(backend="local"))
    with pytest.raises(ConfigError, match="refused for tenants"):
        h.rlm.session("abc").open()
    assert h.backend.started == []


class Count(BaseModel):
    n: int


def test_each_question_may_ask_for_its_own_type(seam) -> None:
    h = seam(sequence_policy('FINAL({"n": 3})', "FINAL(plain text)"))
    with h.rlm.session("abc") as session:
        typed = session.ask("how many?", output=Count)
        plain = session.ask("say it")
    assert typed.output == Count(n=3) and typed.answer == '{"n":3}'
    assert (plain.output, plain.answer) == (None, "plain text")
    assert "JSON Schema" in h.client.requests[0]["messages"][0]["content"]


def test_steps_are_per_question(seam) -> None:
    """A question that runs out of steps does not stop the next one."""

    def policy(request: dict[str, Any]) -> str:
        if "Question: second" in last_user(request):
            return "FINAL(fine)"
        return never_finishes(request)

    h = seam(policy, max_steps=2, fallback_answer=False)
    with h.rlm.session("abc") as session:
        first = session.ask("first")
        second = session.ask("second")
    assert (first.status, first.budget, first.steps) == ("budget_exhausted", "max_steps", 2)
    assert (second.status, second.answer, second.steps) == ("ok", "fine", 1)


def test_model_call_budgets_span_the_whole_session(seam) -> None:
    h = seam(sequence_policy(*TWO_QUESTIONS), max_lm_calls=3, fallback_answer=False)
    with h.rlm.session("abc") as session:
        first = session.ask("first")
        second = session.ask("second")
        totals = session.totals()
    assert first.ok
    assert (second.status, second.budget) == ("budget_exhausted", "max_lm_calls")
    assert second.lm_calls <= 1 and totals["lm_calls"] <= 3


def test_a_tenants_session_releases_its_container_slot(seam) -> None:
    from rlm_sandbox.rlm.tenants import ledger

    tenants = {"acme": TenantLimits(max_containers=1)}
    h = seam(sequence_policy(*TWO_QUESTIONS), tenant="acme", tenants=tenants)
    with h.rlm.session("abc") as session:
        session.ask("first")
        assert ledger.account("acme", None).containers_alive == 1
    assert ledger.account("acme", None).containers_alive == 0
