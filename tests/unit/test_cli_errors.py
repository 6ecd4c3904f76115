"""Errors reach a person as one line and a hint, with the documented exit code, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rlm_sandbox.cli import main as cli_module  # the group (cli_module.main)
from rlm_sandbox.errors import BudgetExhausted, EngineUnavailable, LMError


def invoke(*args: str, **env: str):
    return CliRunner().invoke(cli_module.main, list(args), env=env or None)


def test_missing_input_file_is_a_usage_error_with_a_hint() -> None:
    r = invoke("run", "--model", "openai/x", "--task", "t", "-i", "/nonexistent/big.log")
    assert r.exit_code == 2
    assert "error: input file not found: /nonexistent/big.log" in r.output
    assert "hint: check the path given to -i/--input" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    ("exc", "code", "hint"),
    [
        (EngineUnavailable("no Docker engine answers at unix:///nowhere"), 4, "ensure-docker.sh"),
        (
            BudgetExhausted("lm_calls", "the run made its limit of 5 LM calls", hint="raise --max-lm-calls"),
            3,
            "--max-lm-calls",
        ),
        (LMError("authentication failed", hint="set the provider's API key"), 5, "API key"),
    ],
)
def test_typed_errors_map_to_exit_codes_and_hints(monkeypatch, exc, code: int, hint: str) -> None:
    def boom(*_a, **_k):
        raise exc

    monkeypatch.setattr("rlm_sandbox.inputs.collect_inputs", boom)
    r = invoke("run", "--model", "openai/x", "--task", "t", "-i", "-")
    assert r.exit_code == code, r.output
    lines = [line for line in r.output.splitlines() if line]
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ") and hint in lines[1]
    assert "Traceback" not in r.output


def test_an_unexpected_exception_is_one_line_unless_debug(monkeypatch) -> None:
    def boom(*_a, **_k):
        raise RuntimeError("something we did not foresee")

    monkeypatch.setattr("rlm_sandbox.inputs.collect_inputs", boom)
    r = invoke("run", "--model", "openai/x", "--task", "t")
    assert r.exit_code == 1
    assert "error: unexpected RuntimeError: something we did not foresee" in r.output
    assert "--debug" in r.output and "Traceback" not in r.output
    r = invoke("run", "--model", "openai/x", "--task", "t", RLM_SANDBOX_DEBUG="1")
    assert isinstance(r.exception, RuntimeError)  # re-raised: click's runner holds the traceback
