"""The outcome of a run (or of one question of a session): exactly the keys of ``--json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlm_sandbox.errors import exit_code
from rlm_sandbox.rlm.citations import Citation


@dataclass
class RLMResult:
    """The outcome of a run; ``to_json()`` has exactly the keys of ``--json``."""

    answer: str | None
    status: str
    error: str | None
    steps: int
    lm_calls: int
    tokens: dict[str, int]
    cost_usd: float
    wall_s: float
    nodes: int
    containers: int
    max_depth_reached: int
    trace: str | None
    budget: str | None = None
    hint: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    unsafe_backend: str | None = None  # "local": the code ran with no sandbox at all
    fallback: bool = False  # the answer came from the model's last word after a budget stop
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # usage and cost per model
    output: Any = None  # the validated typed answer, when a schema was given
    typed: bool = False  # a schema was given: ``--json`` carries ``output`` (null without an answer)
    citations: list[Citation] = field(default_factory=list)  # checked on the host (rlm.citations)
    lm_cache_hits: int = 0  # model requests answered by --lm-cache (not in lm_calls, no cost)
    warnings: list[str] = field(default_factory=list)  # what the run skipped or doubted, said once

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def exit_code(self) -> int:
        return exit_code(self.status)

    def to_json(self) -> dict[str, Any]:
        return (
            {
                "answer": self.answer,
                "status": self.status,
                "error": self.error,
                "steps": self.steps,
                "lm_calls": self.lm_calls,
                "tokens": dict(self.tokens),
                "cost_usd": self.cost_usd,
                "wall_s": self.wall_s,
                "nodes": self.nodes,
                "containers": self.containers,
                "max_depth_reached": self.max_depth_reached,
                "trace": self.trace,
                "citations": [c.to_json() for c in self.citations],
                "lm_cache_hits": self.lm_cache_hits,
                "warnings": list(self.warnings),
            }
            | ({"output": self.output_json()} if self.typed else {})
            | ({"unsafe_backend": self.unsafe_backend} if self.unsafe_backend else {})
            | ({"fallback": True} if self.fallback else {})
        )

    def output_json(self) -> Any:
        """The typed answer as JSON data: a pydantic model dumped, a JSON Schema's value as is."""
        dump = getattr(self.output, "model_dump", None)
        return dump(mode="json") if callable(dump) else self.output
