"""The one exception tree (errors.py): each error's status, the exit code of each status
defined once, what ``outcome_of`` reports of an exception that ended a run, and hints."""

from __future__ import annotations

from rlm_sandbox.errors import (
    EXIT_CODES,
    AnswerInvalid,
    BudgetExhausted,
    CellTimeout,
    ConfigError,
    EngineUnavailable,
    LMError,
    ProtocolViolation,
    RLMSandboxError,
    SandboxClosed,
    SandboxCrashed,
    SandboxError,
    exit_code,
    outcome_of,
)
from rlm_sandbox.rlm.result import RLMResult


def test_exit_codes_are_the_documented_ones() -> None:
    assert EXIT_CODES == {
        "ok": 0,
        "error": 1,
        "usage": 2,
        "budget_exhausted": 3,
        "sandbox_error": 4,
        "lm_error": 5,
        "answer_invalid": 6,
        "interrupted": 130,
        "cancelled": 130,
    }
    assert exit_code("something new") == 1


def test_each_error_carries_its_status() -> None:
    errors = [
        ConfigError("x"),
        EngineUnavailable("x"),
        CellTimeout("x"),
        ProtocolViolation("x"),
        SandboxClosed("x"),
        LMError("x"),
        BudgetExhausted("max_nodes", "x"),
        AnswerInvalid("x"),
    ]
    assert {type(e).__name__: e.status for e in errors} == {
        "ConfigError": "usage",
        "EngineUnavailable": "sandbox_error",
        "CellTimeout": "sandbox_error",
        "ProtocolViolation": "sandbox_error",
        "SandboxClosed": "sandbox_error",
        "LMError": "lm_error",
        "BudgetExhausted": "budget_exhausted",
        "AnswerInvalid": "answer_invalid",
    }


def test_outcome_of_names_the_budget_and_hides_usage_errors() -> None:
    assert outcome_of(BudgetExhausted("max_cost", "spent")) == ("budget_exhausted", "max_cost")
    assert outcome_of(SandboxCrashed("oom", reason="oom")) == ("sandbox_error", None)
    assert outcome_of(LMError("down")) == ("lm_error", None)
    # A setting found wrong mid-run is still a failed run, not a usage error of the CLI.
    assert outcome_of(ConfigError("bad")) == ("error", None)
    assert outcome_of(ValueError("a bug of ours")) == ("error", None)
    assert outcome_of(KeyboardInterrupt()) == ("error", None)


def test_the_hint_is_shown_after_the_message_but_not_part_of_it() -> None:
    err = ConfigError("no model given", hint="pass model=...")
    assert err.message == "no model given"
    assert str(err) == "no model given (hint: pass model=...)"
    assert str(ConfigError("plain")) == "plain"
    assert CellTimeout("slow").hint.startswith("raise cell_timeout")  # a class's default hint
    assert SandboxError("x", hint="").hint == ""


def test_errors_declare_their_fields() -> None:
    lm = LMError("429", kind="rate_limit", attempts=4, status_code=429, model="openai/gpt-4o")
    assert (lm.kind, lm.attempts, lm.status_code, lm.model) == ("rate_limit", 4, 429, "openai/gpt-4o")
    assert (LMError("x").kind, LMError("x").attempts) == ("other", 1)
    crash = SandboxCrashed("killed", reason="killed", exit_code=137)
    assert (crash.reason, crash.exit_code) == ("killed", 137)
    stop = BudgetExhausted("max_steps", "out", fallback_answer="best")
    assert (stop.budget, stop.fallback_answer) == ("max_steps", "best")
    assert issubclass(SandboxCrashed, SandboxError) and issubclass(SandboxError, RLMSandboxError)


def test_a_results_exit_code_follows_its_status() -> None:
    def result(status: str) -> RLMResult:
        return RLMResult(None, status, None, 0, 0, {"prompt": 0, "completion": 0}, 0.0, 0.0, 0, 0, 0, None)

    assert [
        result(s).exit_code
        for s in ("ok", "budget_exhausted", "sandbox_error", "lm_error", "answer_invalid", "error")
    ] == [0, 3, 4, 5, 6, 1]
    assert result("ok").ok and not result("error").ok
    assert "unsafe_backend" not in result("ok").to_json()
