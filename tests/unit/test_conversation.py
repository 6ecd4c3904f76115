"""What a node says to its model (rlm/conversation.py): pure functions over plain values, so the
wording a model depends on is pinned without a run."""

from __future__ import annotations

from typing import Any

from rlm_sandbox.rlm import conversation as conv
from rlm_sandbox.sandbox.cell_result import ExecResult


def facts(**kw: Any) -> conv.PromptFacts:
    base: dict[str, Any] = {
        "context_desc": "a str of 10 characters",
        "depth": 0,
        "max_depth": 1,
        "max_steps": 5,
        "output_limit": 2000,
    }
    return conv.PromptFacts(**(base | kw))


def cell(stdout: str = "", stderr: str = "", error: str | None = None, **kw: Any) -> ExecResult:
    fields: dict[str, Any] = {
        "stdout": stdout,
        "stderr": stderr,
        "error": error,
        "ename": error.split(":")[0] if error else None,
        "evalue": None,
        "traceback": None,
        "duration_s": 0.0,
        "wall_s": 0.0,
        "timed_out": False,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "final": None,
    }
    return ExecResult(**(fields | kw))


# ---- the budget note


def test_the_budget_note_lists_only_the_limits_that_exist() -> None:
    none = conv.budget_note(
        max_lm_calls=None, lm_calls=3, max_tokens=None, tokens=9, max_cost=None, cost_usd=1.0, wall_left=None
    )
    assert none == "no other limits."
    some = conv.budget_note(
        max_lm_calls=10, lm_calls=3, max_tokens=None, tokens=0, max_cost=0.5, cost_usd=0.125, wall_left=59.6
    )
    assert some == "7 model calls left for the whole run; $0.3750 left; 60 s of wall time left."
    tokens = conv.budget_note(
        max_lm_calls=None,
        lm_calls=0,
        max_tokens=1000,
        tokens=250,
        max_cost=None,
        cost_usd=0.0,
        wall_left=None,
    )
    assert tokens == "750 tokens left."


# ---- the system prompt


def test_a_leaf_level_node_is_told_its_helpers_are_plain_models() -> None:
    text = conv.system_prompt(facts(budget_note="7 model calls left."))
    assert "depth 0 of at most 0" in text and "Your llm_query calls go to a plain language model." in text
    assert "asks a helper language model one question" in text
    assert "rlm_query" not in text and "Tools (" not in text and "matching this JSON Schema" not in text
    assert text.rstrip().endswith("Budgets: 5 steps for this node; 7 model calls left.")
    assert "cut to about 2000 characters" in text and "(a str of 10 characters)" in text


def test_a_node_with_levels_below_may_start_children() -> None:
    deeper = facts(depth=1, max_depth=3)
    assert deeper.deeper and not facts(depth=2, max_depth=3).deeper
    text = conv.system_prompt(deeper)
    assert "depth 1 of at most 2" in text
    assert "asks a helper RLM (it gets its own REPL with your prompt as its `context`)" in text
    assert "always start child RLM nodes." in text
    explicit = conv.system_prompt(facts(max_depth=2, recursion="explicit"))
    assert "always start child RLM nodes (your `llm_query` calls are plain model calls)." in explicit


def test_tools_and_a_schema_are_stated_when_given() -> None:
    text = conv.system_prompt(facts(tools_description="  - `lookup(key)`", schema='{"type": "integer"}'))
    assert "Tools (they run outside the REPL; JSON arguments and results):\n  - `lookup(key)`" in text
    assert (
        'must be JSON matching this JSON Schema (FINAL(a dict or list) sends it as JSON):\n{"type": "integer"}'
        in text
    )


def test_the_opening_is_the_system_prompt_then_the_task_with_its_preview() -> None:
    system, first = conv.opening(facts(), "count the errors", "It begins with:\n```\nhead\n```\n")
    assert system == {"role": "system", "content": conv.system_prompt(facts())}
    assert first["role"] == "user"
    assert first["content"].startswith("Task: count the errors\n\n`context` is a str of 10 characters.\n")
    assert "It begins with:\n```\nhead\n```" in first["content"]
    assert "You have not run any code yet." in first["content"]


# ---- after each step


def test_feedback_joins_outputs_and_counts_the_steps_left() -> None:
    msg = conv.step_feedback(["out 1", "out 2"], step=2, max_steps=5)
    assert msg["role"] == "user"
    assert msg["content"].startswith("out 1\n\nout 2\n\nStep 2 of 5 done (3 left).")


def test_the_last_steps_feedback_asks_for_the_answer_now() -> None:
    msg = conv.step_feedback(["out"], step=5, max_steps=5)
    assert "You have no steps left. Answer now" in msg["content"] and "Step 5" not in msg["content"]


def test_a_step_without_output_gets_the_nudge() -> None:
    assert conv.step_feedback([], 1, 3)["content"].startswith(conv.NO_CODE_NOTE)


def test_a_follow_up_question_says_the_repl_is_as_it_was() -> None:
    msg = conv.followup("and the warnings?")
    assert msg["role"] == "user"
    assert "Question: and the warnings?" in msg["content"] and "every\nvariable you created" in msg["content"]


# ---- a cell's outcome as the model reads it


def test_a_cell_shows_stdout_stderr_and_the_traceback_in_that_order() -> None:
    tb = "Traceback (most recent call last):\nValueError: bad\n"
    text = conv.format_result(cell("out\n", "warn\n", "ValueError: bad", traceback=tb), 1000)
    assert text == "out\n[stderr]\nwarn\nTraceback (most recent call last):\nValueError: bad"


def test_an_error_without_a_traceback_shows_the_error() -> None:
    assert conv.format_result(cell(error="NameError: x"), 1000) == "NameError: x"


def test_a_timed_out_cell_shows_a_short_note_not_a_traceback() -> None:
    timeout = cell(
        "partial\n",
        error="CellTimeoutError: cell exceeded its time limit",
        ename="CellTimeoutError",
        traceback="long engine traceback",
        timed_out=True,
    )
    assert conv.format_result(timeout, 1000) == "partial\n[CellTimeoutError: cell exceeded its time limit]"


def test_a_silent_cell_says_so_and_long_output_is_cut() -> None:
    assert conv.format_result(cell(), 1000) == "(no output)"
    cut = conv.format_result(cell("x" * 5000), 500)
    assert "[4500 characters truncated]" in cut and cut.startswith("x" * 400)


def test_output_blocks_are_numbered_from_one() -> None:
    assert conv.cell_output_block(0, "hi") == "Output of code block 1:\n```\nhi\n```"
