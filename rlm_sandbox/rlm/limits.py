"""The limits of one run (what ``RLMConfig`` sets) and the flag that raises each of them."""

from __future__ import annotations

from dataclasses import dataclass

from rlm_sandbox.errors import ConfigError

FLAGS = {
    "max_steps": "--max-steps",
    "max_lm_calls": "--max-lm-calls",
    "max_tokens": "--max-tokens",
    "max_cost": "--max-cost",
    "timeout": "--timeout",
    "max_containers": "--max-containers",
    "max_nodes": "--max-nodes",
    "max_tool_calls": "max_tool_calls (RLMConfig)",
    "tenant_max_cost": "the tenant's max_cost setting",
    "tenant_max_containers": "the tenant's max_containers setting",
}
#: Budgets a call's completion share counts against: lowering it lets more calls fit.
COMPLETION_HINT = " or lower --lm-max-tokens (the completion reserved for every call)"


@dataclass(frozen=True, slots=True)
class Limits:
    depth: int = 1
    max_lm_calls: int | None = 500
    max_tokens: int | None = None
    max_cost: float | None = None
    timeout_s: float | None = 1800.0
    max_containers: int = 16
    max_nodes: int | None = 1000
    max_tool_calls: int | None = 1000

    def check(self) -> None:
        if self.max_containers < self.depth:
            raise ConfigError(
                f"max_containers ({self.max_containers}) must be at least depth ({self.depth}): "
                "every level of the recursion needs a container of its own",
                hint="raise --max-containers or lower --depth",
            )
