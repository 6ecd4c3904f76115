"""Typed answers: a final answer (or a child's) checked against a schema, with feedback.

Users ask for structured output more than for anything else. The model is told the schema;
its ``FINAL`` value is parsed as JSON and validated (a pydantic model, or a JSON Schema via
``jsonschema``); a mismatch goes back to the model with the validation errors, up to a limit,
instead of silently returning text the caller cannot use.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rlm_sandbox.errors import AnswerInvalid, ConfigError

__all__ = ["AnswerInvalid", "AnswerSpec", "parse_json"]


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


def parse_json(text: str) -> Any:
    """JSON from a model's answer, tolerating a ```json fence around it."""
    match = _FENCE.match(text)
    return json.loads(match.group(1) if match else text)


class AnswerSpec:
    """What an answer must look like: ``output`` is a pydantic model class or a JSON Schema."""

    def __init__(self, output: Any) -> None:
        from pydantic import BaseModel

        self.model: type[BaseModel] | None = None
        if isinstance(output, type) and issubclass(output, BaseModel):
            self.model = output
            self.schema: dict[str, Any] = output.model_json_schema()
        elif isinstance(output, dict):
            import jsonschema

            try:
                jsonschema.validators.validator_for(output).check_schema(output)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"the output schema is not a valid JSON Schema: {exc.message}") from None
            self.schema = output
        else:
            raise ConfigError("output= takes a pydantic model class or a JSON Schema dict")

    def describe(self) -> str:
        return json.dumps(self.schema, ensure_ascii=False)

    def check(self, text: str) -> tuple[Any, str | None]:
        """(the typed value, None) or (None, what is wrong, for the model to fix)."""
        try:
            data = parse_json(text)
        except ValueError as exc:
            return None, f"the answer is not JSON ({exc}); answer with a JSON value only"
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate(data), None
            except ValidationError as exc:
                problems = [
                    f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:8]
                ]
                return None, "; ".join(problems)
        import jsonschema

        validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))[:8]
        if errors:
            return None, "; ".join(f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors)
        return data, None

    def dump(self, value: Any) -> str:
        """The validated value as the JSON text an answer carries."""
        if self.model is not None:
            return value.model_dump_json()
        return json.dumps(value, ensure_ascii=False)
