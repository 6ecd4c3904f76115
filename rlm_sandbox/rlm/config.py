"""The settings of a run: budgets shared by the whole tree, models per level, the sandbox of every node."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from rlm_sandbox.rlm.limits import Limits
from rlm_sandbox.rlm.tenants import TenantLimits
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.engines import EngineSpec
from rlm_sandbox.sizes import parse_size

#: A byte count, as a number or with a binary unit (``8g``).
ByteSize = Annotated[int, BeforeValidator(parse_size)]
DEFAULT_MAX_INPUT_BYTES = 8 << 30
DEFAULT_LM_CACHE_MAX_BYTES = 1 << 30


class RLMConfig(BaseModel):
    """Settings of a run. Budgets are shared by the whole recursion tree."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_steps: int = Field(12, ge=1, le=1000, description="steps (LM turns) per node")
    depth: int = Field(1, ge=1, le=16, description="levels of RLM nodes; 1 is the paper's setting")
    max_lm_calls: int | None = Field(500, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0)
    timeout: float | None = Field(1800.0, gt=0, description="wall-time budget of the whole run, seconds")
    max_containers: int = Field(16, ge=1, le=4096, description="containers alive at once")
    max_nodes: int | None = Field(1000, ge=1)
    max_concurrency: int = Field(16, ge=1, le=1024, description="sub-calls in flight per node")
    max_run_held_bytes: int | None = Field(
        None,
        ge=1 << 20,
        le=1 << 44,
        description="bytes of requests the host may hold for the whole tree (a prompt counts twice its "
        "size); None = max(1 GiB, depth x the largest request a frame can carry)",
    )
    pool_size: int | None = Field(
        None,
        ge=0,
        le=256,
        description="warm containers kept ready for child nodes; None = 0 at depth 1, else 4",
    )
    pool_idle_timeout: float = Field(30.0, gt=0, description="seconds without demand before the pool empties")
    output_limit: int = Field(20_000, ge=200, description="characters of cell output shown to the model")
    lm_timeout: float = Field(
        300.0, gt=0, description="seconds one model call may take, its retries included"
    )
    lm_retries: int = Field(4, ge=1, le=20, description="attempts per model call (1 = no retry)")
    lm_max_tokens: int = Field(
        4096,
        ge=16,
        le=1_000_000,
        description="completion tokens per model call at most: sent as max_tokens, and reserved "
        "against --max-tokens and --max-cost before each call",
    )
    api_base: str | None = None
    tenant: str = "default"
    tenants: dict[str, TenantLimits] = Field(
        default_factory=dict, description="per-tenant limits shared by all runs of a tenant in this process"
    )
    trace: str | None = Field(None, description="path of the JSON-lines trace")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    depth_models: dict[int, str] = Field(
        default_factory=dict,
        description="model per level: nodes at depth d use depth_models[d]; leaf calls from d use [d+1]",
    )
    context_window: int | None = Field(
        None,
        ge=1000,
        description="tokens the model accepts; None = what LiteLLM knows of the model (else no compaction)",
    )
    compact_at: float = Field(0.8, gt=0.1, le=1.0, description="compact when history exceeds this share")
    recursion: Literal["auto", "explicit"] = Field(
        "auto",
        description="auto: llm_query starts a child RLM while depth remains; explicit: only rlm_query does",
    )
    schema_retries: int = Field(3, ge=0, le=20, description="times a typed answer may be sent back to fix")
    max_tool_calls: int | None = Field(1000, ge=1, description="host tool calls, whole run")
    fallback_answer: bool = Field(
        True, description="when a budget stops the root, ask once (bounded) for its best answer"
    )
    engines: list[EngineSpec] = Field(
        default_factory=list,
        description="Docker engines to spread nodes over; empty = the one of sandbox.docker_url",
    )
    max_input_bytes: ByteSize = Field(
        DEFAULT_MAX_INPUT_BYTES,
        ge=1,
        description="cap on the whole input once decompressed (8g, 512m, bytes); a gzip bomb stops here",
    )
    lm_cache: str | None = Field(
        None, description="directory of the model-response cache (a hit costs nothing); None: no cache"
    )
    lm_cache_max_bytes: ByteSize = Field(
        DEFAULT_LM_CACHE_MAX_BYTES,
        ge=1 << 16,
        description="bound of the model-response cache (oldest out first)",
    )

    def effective_pool_size(self) -> int:
        tenant = self.tenants.get(self.tenant)
        if tenant is not None and tenant.max_containers is not None:
            return 0  # pooled containers would escape the tenant's cap, which spans runs
        if self.pool_size is not None:
            return min(self.pool_size, max(0, self.max_containers - 1))
        return 0 if self.depth == 1 else min(4, max(0, self.max_containers - 1))

    def node_sandbox_config(self, run_id: str, node: str, engine_url: str | None = None) -> SandboxConfig:
        return self.sandbox.model_copy(
            update={
                "docker_url": engine_url or self.sandbox.docker_url,
                "run_id": run_id,
                "node_id": f"{run_id}.{node}",
                "tenant": self.tenant,
                "llm_concurrency": self.max_concurrency,
            }
        )

    def input_cap(self) -> tuple[int, str]:
        """The cap on the input and the setting it comes from (the tenant's when lower)."""
        cap, source = self.max_input_bytes, "--max-input-bytes"
        tenant = self.tenants.get(self.tenant)
        if tenant is not None and tenant.max_input_bytes is not None and tenant.max_input_bytes < cap:
            cap, source = tenant.max_input_bytes, f"tenant {self.tenant}'s max_input_bytes"
        return cap, source

    def limits(self) -> Limits:
        return Limits(
            depth=self.depth,
            max_lm_calls=self.max_lm_calls,
            max_tokens=self.max_tokens,
            max_cost=self.max_cost,
            timeout_s=self.timeout,
            max_containers=self.max_containers,
            max_nodes=self.max_nodes,
            max_tool_calls=self.max_tool_calls,
        )
