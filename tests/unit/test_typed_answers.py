"""Typed answers (rlm/answers.py, Node's checks): a pydantic model or a JSON Schema, the
validation error sent back to fix, ``AnswerInvalid`` after ``schema_retries``, typed leaf
calls and typed children from a cell, and a fallback only to an answer that fits."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from rlm_sandbox.errors import AnswerInvalid, ConfigError
from rlm_sandbox.rlm.answers import AnswerSpec, parse_json
from rlm_sandbox.testing import sequence_policy

from ..helpers import cells_then_final, never_finishes, root_then_policy
from .seam import is_node, last_user

SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
    "required": ["items"],
}
RETRY = "does not match the required schema"


class Count(BaseModel):
    n: int
    unit: str = "lines"


# ---- AnswerSpec on its own


def test_a_pydantic_answer_is_parsed_validated_and_dumped() -> None:
    spec = AnswerSpec(Count)
    value, problem = spec.check('{"n": 3}')
    assert (value, problem) == (Count(n=3), None)
    assert spec.dump(value) == '{"n":3,"unit":"lines"}'
    assert '"n"' in spec.describe() and spec.schema == Count.model_json_schema()


def test_a_json_fence_around_the_answer_is_tolerated() -> None:
    assert parse_json('```json\n{"n": 1}\n```') == {"n": 1}
    assert AnswerSpec(Count).check('```\n{"n": 2}\n```')[0] == Count(n=2)


def test_what_is_wrong_names_the_field() -> None:
    _, problem = AnswerSpec(Count).check('{"n": "many"}')
    assert problem is not None and problem.startswith("n: ") and "integer" in problem
    _, missing = AnswerSpec(Count).check("{}")
    assert missing == "n: Field required"


def test_an_answer_that_is_not_json_says_so() -> None:
    value, problem = AnswerSpec(Count).check("three")
    assert value is None and problem is not None and "not JSON" in problem


def test_a_json_schema_answer_is_plain_data_and_errors_have_paths() -> None:
    spec = AnswerSpec(SCHEMA)
    assert spec.check('{"items": [1, 2]}') == ({"items": [1, 2]}, None)
    _, problem = spec.check('{"items": [1, "two"]}')
    assert problem is not None and problem.startswith("items/1: ")
    _, root = spec.check("[]")
    assert root is not None and root.startswith("(root): ")
    assert spec.dump({"items": [1]}) == '{"items": [1]}'


def test_an_invalid_schema_or_output_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        AnswerSpec({"type": "no-such-type"})
    with pytest.raises(ConfigError, match="pydantic model class or a JSON Schema"):
        AnswerSpec(int)


# ---- a typed run


def test_a_typed_run_returns_the_model_instance(seam) -> None:
    h = seam(cells_then_final("print(len(context))", final='FINAL({"n": 3})'))
    result = h.run("abc", output=Count)
    assert (result.status, result.output) == ("ok", Count(n=3))
    assert result.answer == '{"n":3,"unit":"lines"}'
    system = h.client.requests[0]["messages"][0]["content"]
    assert "must be JSON matching this JSON Schema" in system and '"unit"' in system


def test_a_structure_given_to_final_in_code_is_sent_as_json(seam) -> None:
    h = seam(cells_then_final('FINAL({"items": [len(context), 2]})', final="FINAL(unreached)"))
    result = h.run("abc", output=SCHEMA)
    assert (result.status, result.output, result.answer) == ("ok", {"items": [3, 2]}, '{"items": [3, 2]}')


def test_a_mismatch_is_sent_back_with_what_is_wrong(seam) -> None:
    h = seam(sequence_policy('FINAL({"n": "many"})', 'FINAL({"n": 2})'))
    result = h.run("abc", output=Count)
    assert (result.status, result.output, result.steps) == ("ok", Count(n=2), 2)
    feedback = last_user(h.client.requests[1])
    assert RETRY in feedback and "n: " in feedback
    (event,) = h.named("schema_mismatch")
    assert event["node"] == "root" and event["problem"].startswith("n: ")


def test_an_answer_that_never_fits_is_answer_invalid_after_the_retries(seam) -> None:
    h = seam(sequence_policy("FINAL(not json)"), schema_retries=1)
    result = h.run("abc", output=Count)
    assert (result.status, result.answer, result.output) == ("error", None, None)
    assert "after 1 retries" in (result.error or "")
    assert result.exit_code == 1
    assert h.client.calls == 2 and len(h.named("schema_mismatch")) == 2
    assert result.hint == AnswerInvalid.hint


def test_no_retry_is_allowed_with_zero_schema_retries(seam) -> None:
    h = seam(sequence_policy("FINAL([])", 'FINAL({"n": 1})'), schema_retries=0)
    assert h.run("abc", output=Count).status == "error"
    assert h.client.calls == 1


# ---- typed calls from a cell


def test_a_typed_leaf_call_returns_parsed_json_to_the_cell(seam) -> None:
    code = "v = llm_query('how many?', output=int)\nprint(type(v).__name__, v)"
    h = seam(cells_then_final(code), sub_policy=sequence_policy("7"))
    assert h.run("abc").status == "ok"
    assert h.named("cell")[0]["output"] == "int 7"
    assert h.sub is not None
    prompt = h.sub.requests[0]["messages"][0]["content"]
    assert prompt.startswith("how many?") and '{"type": "integer"}' in prompt


def test_a_typed_leaf_call_is_retried_with_the_problem(seam) -> None:
    code = "v = llm_query('list them', output={'type': 'array'})\nprint(v)"
    h = seam(cells_then_final(code), sub_policy=sequence_policy("one, two", '["one", "two"]'))
    h.run("abc")
    assert h.named("cell")[0]["output"] == "['one', 'two']"
    assert h.sub is not None and h.sub.calls == 2
    retry = h.sub.requests[1]["messages"]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"] and RETRY in retry[-1]["content"]


def test_a_typed_leaf_that_never_fits_fails_in_the_cell_only(seam) -> None:
    code = "try:\n    llm_query('n?', output=int)\nexcept LLMQueryError as e:\n    print('failed:', e)"
    h = seam(
        cells_then_final(code, final="FINAL(went on)"), sub_policy=sequence_policy("many"), schema_retries=2
    )
    result = h.run("abc")
    assert (result.status, result.answer) == ("ok", "went on")
    assert "did not match the schema" in h.named("cell")[0]["output"]
    assert h.sub is not None and h.sub.calls == 3


def test_a_typed_child_at_depth_two_answers_in_the_schema(seam) -> None:
    def child(request: dict[str, Any]) -> str:
        system = request["messages"][0]["content"]
        assert '"required": ["items"]' in system  # the child is told the schema
        return 'FINAL({"items": [4, 5]})' if is_node(request) else "leaf"

    code = f"r = rlm_query('count them', output={SCHEMA!r})\nprint(sum(r['items']))"
    h = seam(root_then_policy(cells_then_final(code), child), depth=2, pool_size=0)
    assert h.run("abc").status == "ok"
    assert [e["output"] for e in h.named("cell")] == ["9"]
    assert [e["node"] for e in h.named("node_end")] == ["n2", "root"]


def test_a_typed_child_that_never_fits_fails_in_the_parents_cell(seam) -> None:
    def child(request: dict[str, Any]) -> str:
        return "FINAL(no structure)" if is_node(request) else "leaf"

    code = "try:\n    rlm_query('x', output=dict)\nexcept LLMQueryError as e:\n    print('child failed:', e)"
    h = seam(root_then_policy(cells_then_final(code), child), depth=2, pool_size=0, schema_retries=1)
    assert h.run("abc").status == "ok"
    output = h.named("cell")[0]["output"]
    assert "child failed" in output and "AnswerInvalid" in output


# ---- a fallback only to an answer that fits


def _stopped_with_last_word(final: str) -> Any:
    def policy(request: dict[str, Any]) -> str:
        return final if "You have no steps left" in last_user(request) else never_finishes(request)

    return policy


def test_a_typed_run_falls_back_to_a_last_word_that_fits(seam) -> None:
    h = seam(_stopped_with_last_word('FINAL({"n": 1})'), max_steps=1)
    result = h.run("abc", output=Count)
    assert (result.status, result.budget) == ("budget_exhausted", "max_steps")
    assert (result.fallback, result.output, result.answer) == (True, Count(n=1), '{"n":1,"unit":"lines"}')


def test_a_typed_run_never_falls_back_to_an_answer_that_does_not_fit(seam) -> None:
    h = seam(_stopped_with_last_word("FINAL(about one)"), max_steps=1)
    result = h.run("abc", output=Count)
    assert (result.status, result.budget) == ("budget_exhausted", "max_steps")
    assert (result.fallback, result.output, result.answer) == (False, None, None)
    # The fallback question was asked too, and its non-fitting answer refused the same way.
    assert [c["purpose"] for c in h.calls()] == ["step", "last_answer", "fallback"]
    assert h.named("fallback")[0]["answered"] is False
