"""Untrusted JSON and JSON Schemas are evaluated on the host in bounded time and memory.

The bounds below that speak of seconds are generous on purpose (the machine is shared):
what they separate is "bounded" from "minutes or forever", never a fast run from a slow one.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import pytest

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.rlm.answers import AnswerSpec, parse_json
from rlm_sandbox.untrusted import CELL_SCHEMA, BoundedSchema, CheckTooCostly, SchemaRefused
from rlm_sandbox.untrusted_json import MAX_INT_DIGITS, loads

EVIL = "^(a+)+$"  # 2^n backtracking in Python's re
VICTIM = "a" * 40 + "!"


class Ticker:
    """A second thread that must keep running while the host evaluates something."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ticks.append(time.monotonic())
            time.sleep(0.02)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def max_gap(self) -> float:
        return max((b - a for a, b in zip(self.ticks, self.ticks[1:], strict=False)), default=0.0)


def exponential_schema(levels: int = 40) -> dict[str, Any]:
    """Each definition tries the next one twice: 2^levels evaluations in about 2 KB."""
    defs: dict[str, Any] = {
        f"a{i}": {"anyOf": [{"$ref": f"#/$defs/a{i + 1}"}, {"$ref": f"#/$defs/a{i + 1}"}]}
        for i in range(levels)
    }
    defs[f"a{levels}"] = {"type": "integer"}
    return {"$defs": defs, "$ref": "#/$defs/a0"}


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    "schema, value",
    [
        ({"type": "string", "pattern": EVIL}, VICTIM),
        ({"type": "object", "patternProperties": {EVIL: {"type": "integer"}}}, {VICTIM: "x", "aa": "x"}),
        ({"type": "object", "patternProperties": {EVIL: {}}, "additionalProperties": False}, {VICTIM: 1}),
        ({"type": "object", "propertyNames": {"pattern": EVIL}}, {VICTIM: 1}),
        # A nested $schema (or a $ref to a meta-schema) must not switch to the stock validator.
        (
            {"properties": {"x": {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": EVIL}}},
            {"x": VICTIM},
        ),
        ({"$schema": "http://json-schema.org/draft-04/schema#", "pattern": EVIL}, VICTIM),
    ],
)
def test_catastrophic_patterns_are_matched_in_linear_time(schema: dict[str, Any], value: Any) -> None:
    with Ticker() as ticker:
        problems = BoundedSchema(schema, CELL_SCHEMA).problems(value, seconds=30)
    assert problems, "the value does not match: the check must say so"
    assert ticker.max_gap() < 5.0  # Python's re needs minutes here (2^40 steps)


@pytest.mark.parametrize("pattern", ["(a)\\1", "a(?=b)", "(?<!x)y", "a++"])
def test_patterns_that_need_backtracking_are_refused_with_a_clear_error(pattern: str) -> None:
    with pytest.raises(SchemaRefused, match="RE2") as info:
        AnswerSpec.from_cell({"type": "string", "pattern": pattern})
    assert isinstance(info.value, ConfigError)  # what a cell receives as LLMQueryError


def test_patterns_keep_their_meaning() -> None:
    spec = BoundedSchema({"type": "string", "pattern": "^[a-z]+-\\d{2}$"})
    assert spec.problems("abc-12") == []
    assert spec.problems("abc-123")
    props = BoundedSchema({"patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False})
    assert props.problems({"x_a": 1}) == []
    assert props.problems({"x_a": "1"}) and props.problems({"y": 1})


# ---------------------------------------------------------------- cost, references, size


def test_an_exponential_schema_is_stopped_and_other_threads_keep_running() -> None:
    spec = BoundedSchema(exponential_schema(), CELL_SCHEMA)
    t0 = time.monotonic()
    with Ticker() as ticker, pytest.raises(CheckTooCostly):
        spec.problems("not an integer", seconds=1.0)
    assert time.monotonic() - t0 < 20  # 2^40 evaluations otherwise
    assert len(ticker.ticks) > 5 and ticker.max_gap() < 5.0


def test_unique_items_is_linear_and_keeps_json_equality() -> None:
    spec = BoundedSchema({"type": "array", "uniqueItems": True})
    assert spec.problems([1, 1.0]) and spec.problems([{"a": [1, 2]}, {"a": [1, 2.0]}])
    assert spec.problems([True, 1]) == [] and spec.problems([0, False]) == []
    many = [{"k": i} for i in range(20_000)]  # unsortable: jsonschema compares every pair
    with Ticker() as ticker:
        assert spec.problems([*many, {"k": 7}], seconds=30)
    assert ticker.max_gap() < 5.0


def test_remote_references_are_never_fetched() -> None:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/schema.json"
    try:
        for schema in (
            {"$ref": url},
            {"properties": {"a": {"$ref": url + "#/x"}}},
            {"$id": url, "$ref": "other.json"},
            {"$dynamicRef": url},
        ):
            with pytest.raises(SchemaRefused):
                spec = AnswerSpec.from_cell(schema)
                spec.check('"x"')
    finally:
        server.shutdown()
    assert hits == []


def test_schema_size_and_depth_are_bounded_for_cells() -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}
    assert len(json.dumps(big)) > CELL_SCHEMA.max_chars
    with pytest.raises(SchemaRefused, match="characters"):
        AnswerSpec.from_cell(big)
    AnswerSpec(big)  # the caller's own schema may be larger
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(40):
        deep = {"items": deep}
    with pytest.raises(SchemaRefused, match="deeper"):
        AnswerSpec.from_cell(deep)
    with pytest.raises(SchemaRefused, match="not a valid JSON Schema"):
        AnswerSpec.from_cell({"type": "strin"})


def test_self_reference_is_a_bounded_error() -> None:
    spec = BoundedSchema({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, CELL_SCHEMA)
    with pytest.raises(CheckTooCostly):
        spec.problems(1, seconds=5)


def test_messages_are_cut_whatever_the_value() -> None:
    spec = BoundedSchema({"anyOf": [{"type": "integer"}] * 50})
    problems = spec.problems("x" * 500_000)
    assert problems and all(len(p) < 1000 for p in problems)


# ---------------------------------------------------------------- JSON


@pytest.mark.parametrize(
    "text, words",
    [
        ("1" * (MAX_INT_DIGITS + 1), "digits"),
        ("-" + "9" * 100_000, "digits"),
        ("NaN", "not JSON"),
        ("[Infinity]", "not JSON"),
        ("1e999", "too large"),
        ('{"a": [-1.5e400]}', "too large"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ("[" * 70 + "]" * 70, "nested"),
        ('"' + "x" * (2 << 20) + '"', "characters"),
    ],
)
def test_untrusted_json_is_bounded(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        loads(text)


def test_typed_answers_parse_fences_in_linear_time() -> None:
    assert parse_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json("  ```\n[1, 2]\n```  ") == [1, 2]
    assert parse_json('{"a": "```"}') == {"a": "```"}
    with Ticker() as ticker:
        for text in ("```\n" + "\n" * 200_000 + "x", "```json\n" + " \n" * 200_000 + "x"):
            with pytest.raises(ValueError):
                parse_json(text)
    assert ticker.max_gap() < 5.0  # the old fence regex was quadratic here


def test_a_typed_answer_too_large_goes_back_to_the_model() -> None:
    spec = AnswerSpec.from_cell({"type": "string"})
    value, problem = spec.check(json.dumps("x" * (2 << 20)))
    assert value is None and problem is not None and "characters" in problem
    value, problem = spec.check('"fine"')
    assert value == "fine" and problem is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [(10**4000, False), (3 * 10**4000, True), (-(3 * 10**4000), True), (1.5, True), (1.0, False)],
    ids=["big-no", "big-yes", "big-negative", "float-yes", "float-no"],
)
def test_multiple_of_a_float_step_is_an_answer_for_any_number(value: Any, ok: bool) -> None:
    """A big integer over a float step used to raise OverflowError out of the check."""
    spec = AnswerSpec.from_cell({"type": "number", "multipleOf": 0.75})
    checked, problem = spec.check(json.dumps(value))
    assert (problem is None) is ok, problem
    if ok:
        assert checked == value
    else:
        assert checked is None and "not a multiple of 0.75" in str(problem)
