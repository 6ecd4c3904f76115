"""What a request may ask of its run: its own depth and budgets, only ever tighter.

A request's ``depth``, ``max_steps``, ``max_lm_calls``, ``max_tokens``, ``max_cost`` and
``timeout`` narrow what the service's settings allow; asking for more is a 422 that says
the ceiling, never a silent clamp (a caller who asked for depth 3 and got 1 would misread
its answers). The tenant's own caps (containers, cost shared by its runs) hold whatever a
request says, because they are the tenant's, not the run's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.serve.errors import ApiError, validation_error

#: Characters of a task: a question, not an input (the input goes in ``context``/``input``).
MAX_TASK_CHARS = 100_000


class RunLimits(BaseModel):
    """The budget fields a request may send (each optional, each only tightening)."""

    model_config = ConfigDict(extra="forbid")

    depth: int | None = Field(None, ge=1, le=16)
    max_steps: int | None = Field(None, ge=1, le=1000)
    max_lm_calls: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0)
    timeout: float | None = Field(None, gt=0)

    def tighter(self, base: RLMConfig) -> dict[str, Any]:
        """The values to run with; a 422 naming the first field that asks for more than
        ``base`` allows."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            ceiling = getattr(base, name)
            if ceiling is not None and value > ceiling:
                raise validation_error(
                    [
                        {
                            "loc": (name,),
                            "msg": f"may only tighten the service's limit ({ceiling:g})",
                            "type": "less_than_equal",
                        }
                    ]
                )
            out[name] = value
        return out


class RunRequest(RunLimits):
    """``POST /v1/runs`` as JSON (or the fields of its multipart form)."""

    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS)
    context: str = ""

    @field_validator("task")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the task is empty: say what to find or compute")
        return value

    def limits(self) -> RunLimits:
        return RunLimits.model_validate(self.model_dump(include=set(RunLimits.model_fields)))


def parse(model: type[BaseModel], data: Any) -> Any:
    """``model`` from request data, or a 422 that never echoes what was sent."""
    if not isinstance(data, dict):
        raise ApiError(422, "the body must be a JSON object", code="invalid_body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_input=False, include_url=False)) from None
