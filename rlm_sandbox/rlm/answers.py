"""Typed answers: a final answer (or a child's) checked against a schema, with feedback.

Users ask for structured output more than for anything else. The model is told the schema;
its ``FINAL`` value is parsed as JSON and validated (a pydantic model, or a JSON Schema);
a mismatch goes back to the model with the validation errors, up to a limit, instead of
silently returning text the caller cannot use.

The answer is the model's and a schema may be a cell's (``llm_query(..., output=)``): both
are untrusted, so parsing and validation go through :mod:`rlm_sandbox.untrusted` (bounded
JSON, RE2 patterns, a metered validator) and never hold the host for long.
"""

from __future__ import annotations

import json
from typing import Any

from rlm_sandbox.errors import AnswerInvalid, ConfigError
from rlm_sandbox.untrusted import CELL_SCHEMA, CHECK_SECONDS, USER_SCHEMA, BoundedSchema, SchemaLimits
from rlm_sandbox.untrusted_json import MAX_VALUE_CHARS, loads

__all__ = ["AnswerInvalid", "AnswerSpec", "parse_json"]


def _unfence(text: str) -> str:
    """The body of a ```json fence wrapping the whole answer, else the text itself.

    Plain string work, linear in the text (a regex with a lazy body and ``\\s*`` around
    the fences backtracks quadratically on a long run of blank lines)."""
    stripped = text.strip()
    if not stripped.startswith("```") or not stripped.endswith("```") or len(stripped) < 6:
        return text
    first_nl = stripped.find("\n")
    if first_nl < 0 or stripped[3:first_nl].strip() not in ("", "json"):
        return text
    last_nl = stripped.rfind("\n", 0, len(stripped) - 3)
    if last_nl < first_nl or stripped[last_nl + 1 : -3].strip():
        return text
    return stripped[first_nl + 1 : last_nl] if last_nl > first_nl else ""


def parse_json(text: str, *, max_chars: int = MAX_VALUE_CHARS) -> Any:
    """JSON from a model's answer, tolerating a ```json fence around it (bounded: see
    :func:`rlm_sandbox.untrusted.loads`)."""
    return loads(_unfence(text), max_chars=max_chars)


class AnswerSpec:
    """What an answer must look like: ``output`` is a pydantic model class or a JSON Schema.

    A JSON Schema is refused (:class:`~rlm_sandbox.untrusted.SchemaRefused`, a
    ``ConfigError``) when it is larger or deeper than ``limits``, has a pattern RE2 cannot
    compile, or refers outside itself."""

    def __init__(self, output: Any, *, limits: SchemaLimits = USER_SCHEMA) -> None:
        from pydantic import BaseModel

        self.model: type[BaseModel] | None = None
        self._bounded: BoundedSchema | None = None
        if isinstance(output, type) and issubclass(output, BaseModel):
            self.model = output
            self.schema: dict[str, Any] = output.model_json_schema()
        elif isinstance(output, dict):
            self._bounded = BoundedSchema(output, limits)
            self.schema = output
        else:
            raise ConfigError("output= takes a pydantic model class or a JSON Schema dict")

    @classmethod
    def from_cell(cls, output: Any) -> AnswerSpec:
        """A schema a cell sent (``llm_query(..., output=)``): a cell's bounds."""
        return cls(output, limits=CELL_SCHEMA)

    def describe(self) -> str:
        return json.dumps(self.schema, ensure_ascii=False)

    def check(self, text: str, *, seconds: float = CHECK_SECONDS) -> tuple[Any, str | None]:
        """(the typed value, None) or (None, what is wrong, for the model to fix).

        Raises :class:`~rlm_sandbox.untrusted.CheckTooCostly` when checking takes more than
        ``seconds`` (or the step bound): that is the schema's doing, not the answer's."""
        try:
            data = parse_json(text)
        except ValueError as exc:
            return None, f"the answer is not JSON the host accepts ({exc}); answer with a JSON value only"
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate(data), None
            except ValidationError as exc:
                problems = [
                    f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:8]
                ]
                return None, "; ".join(problems)
        assert self._bounded is not None
        problems = self._bounded.problems(data, seconds=seconds)
        if problems:
            return None, "; ".join(problems)
        return data, None

    def dump(self, value: Any) -> str:
        """The validated value as the JSON text an answer carries."""
        if self.model is not None:
            return value.model_dump_json()
        return json.dumps(value, ensure_ascii=False)
