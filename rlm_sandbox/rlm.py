"""The Recursive Language Model: a loop per node, a container per node, one budget per run.

A node's model writes ```repl code; the node runs it in its own sandbox and shows the model
the (truncated) output, until the model gives a final answer. ``llm_query`` from a node at
depth ``d`` becomes a child node (own container, own loop) while ``d + 1 < depth``, and a
plain call to the sub model below that. Children run in the sandbox's handler pool, so
``llm_query_batched`` fans out into parallel containers, bounded by the container budget.

Outcomes are typed: ``ok``, ``budget_exhausted``, ``sandbox_error``, ``lm_error``, ``error``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rlm_sandbox.answers import AnswerInvalid, AnswerSpec
from rlm_sandbox.budget import Budget, Limits
from rlm_sandbox.config import SandboxConfig
from rlm_sandbox.errors import (
    BudgetExhausted,
    ConfigError,
    EngineUnavailable,
    LMError,
    RLMSandboxError,
    SandboxError,
)
from rlm_sandbox.models import ModelRouter
from rlm_sandbox.parsing import find_code_blocks, find_final, truncate_output
from rlm_sandbox.prompts import render
from rlm_sandbox.sandbox.channel import RequestHandler, SubRequest
from rlm_sandbox.sandbox.engines import EngineSpec
from rlm_sandbox.tenants import TenantLimits, ledger
from rlm_sandbox.tools import ToolSet
from rlm_sandbox.trace import Tracer, answer_fields

STATUS_EXIT = {"ok": 0, "budget_exhausted": 3, "sandbox_error": 4, "lm_error": 5, "error": 1}


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
    pool_size: int | None = Field(
        None,
        ge=0,
        le=256,
        description="warm containers kept ready for child nodes; None = 0 at depth 1, else 4",
    )
    pool_idle_timeout: float = Field(30.0, gt=0, description="seconds without demand before the pool empties")
    output_limit: int = Field(20_000, ge=200, description="characters of cell output shown to the model")
    lm_timeout: float = Field(300.0, gt=0, description="seconds per model call")
    lm_retries: int = Field(4, ge=1, le=20)
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

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def exit_code(self) -> int:
        return STATUS_EXIT.get(self.status, 1)

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
            }
            | ({"unsafe_backend": self.unsafe_backend} if self.unsafe_backend else {})
            | ({"fallback": True} if self.fallback else {})
        )


class _Client:
    """What a node needs of an LM client; ``rlm_sandbox.lm.LiteLLMClient`` is the real one."""

    model: str

    def completion(self, messages: list[dict[str, str]], *, timeout_s: float | None = None) -> Any: ...


class Run:
    """State shared by every node of one run: budget, trace, clients, live sandboxes."""

    def __init__(self, config: RLMConfig, models: ModelRouter, tracer: Tracer, run_id: str) -> None:
        self.config = config
        self.models = models
        self.root_lm = models.root
        self.sub_lm = models.sub
        self.tracer = tracer
        self.run_id = run_id
        self.budget = Budget(
            config.limits(), ledger.account(config.tenant, config.tenants.get(config.tenant))
        )
        self._ids = 0
        self._lock = threading.Lock()
        self.sandboxes: dict[str, Any] = {}
        self.fatal: BaseException | None = None
        self.first_cell_s: float | None = None
        self.first_lm_s: float | None = None
        self.pool = None
        self.placement: Any = None
        self.tools = ToolSet(None)
        self._nodes_cond = threading.Condition()
        self._active_nodes = 0
        size = config.effective_pool_size()
        if size and not config.engines:
            from rlm_sandbox.sandbox.pool import SandboxPool

            budget = self.budget
            self.pool = SandboxPool(
                config.node_sandbox_config(run_id, "pool"),
                size,
                idle_timeout=config.pool_idle_timeout,
                progress=self.image_progress,
                can_grow=lambda total: (
                    budget.containers_alive + total < config.max_containers and not budget.cancelled.is_set()
                ),
            )

    def track(self, node_id: str, sandbox: Any) -> None:
        with self._lock:
            self.sandboxes[node_id] = sandbox

    def untrack(self, node_id: str) -> None:
        with self._lock:
            self.sandboxes.pop(node_id, None)

    def open_sandboxes(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self.sandboxes.items())

    def node_entered(self) -> None:
        with self._nodes_cond:
            self._active_nodes += 1

    def node_left(self) -> None:
        with self._nodes_cond:
            self._active_nodes -= 1
            self._nodes_cond.notify_all()

    def wait_nodes(self, timeout_s: float) -> bool:
        """Wait until no node is running: after a stop, children still unwinding in handler
        threads may be starting or closing containers; the run must not return before them."""
        deadline = time.monotonic() + timeout_s
        with self._nodes_cond:
            while self._active_nodes > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._nodes_cond.wait(left)
        return True

    def prepare_engines(self) -> None:
        """Several engines: probe them, give them the image, cap the budget at their room,
        and give each its own warm pool (a pooled container must live where its node runs)."""
        from rlm_sandbox.placement import Placement

        cfg = self.config
        placement = Placement(
            cfg.engines,
            cfg.max_containers,
            warn=lambda message, fields: self.tracer.emit("engine_warning", message=message, **fields),
            progress=self.image_progress,
        )
        placement.prepare(cfg.sandbox)
        room = placement.capacity()
        limits = self.budget.limits
        if room < limits.depth:
            raise ConfigError(
                f"the live engines have room for {room} containers, fewer than depth ({limits.depth})",
                hint="raise the engines' max (--engine URL,max=N), add engines, or lower --depth",
            )
        self.budget.limits = dataclasses.replace(limits, max_containers=min(limits.max_containers, room))
        self.placement = placement
        self.tracer.emit(
            "engines", engines=placement.summary(), max_containers=self.budget.limits.max_containers
        )
        size = cfg.effective_pool_size()
        if size:
            from rlm_sandbox.sandbox.pool import SandboxPool

            budget = self.budget
            per_engine = -(-size // len(placement.live))
            for engine in placement.live:
                engine.pool = SandboxPool(
                    cfg.node_sandbox_config(self.run_id, "pool", engine.url),
                    per_engine,
                    idle_timeout=cfg.pool_idle_timeout,
                    progress=self.image_progress,
                    can_grow=lambda total, e=engine: (
                        placement.pool_room(e, total)
                        and budget.containers_alive + placement.pools_held() < budget.limits.max_containers
                        and not budget.cancelled.is_set()
                    ),
                ).start()

    def pools(self) -> list[Any]:
        if self.placement is not None:
            return [e.pool for e in self.placement.engines if e.pool is not None]
        return [self.pool] if self.pool is not None else []

    def image_progress(self, message: str) -> None:
        """The first run on a machine builds the image (about a minute): say what it is doing."""
        self.tracer.notify("image_progress", message=message)

    def load_progress(self, node: str) -> Callable[[int, int], None]:
        """Tell the live view how far a node's input load has got, a few times a second."""
        last = [0.0]

        def tick(sent: int, size: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.1 or sent == size:
                last[0] = now
                self.tracer.notify("load_progress", node=node, sent=sent, size=size)

        return tick

    def kernel_limit(self) -> float:
        """How long the host may wait on a kernel (a cell, FINAL_VAR's str(), the tools'
        set-up): the cell timeout, and never past the run's wall time (1 s at least, so a
        last word can still be read)."""
        limit = self.config.sandbox.cell_timeout
        left = self.budget.wall_left()
        return limit if left is None else max(1.0, min(limit, left))

    def check_seconds(self) -> float:
        """How long checking one answer against a schema may take: a bound of its own, and
        never past the run's wall time."""
        from rlm_sandbox.untrusted import CHECK_SECONDS

        left = self.budget.wall_left()
        return CHECK_SECONDS if left is None else max(0.5, min(CHECK_SECONDS, left))

    def new_node_id(self, parent: str | None) -> str:
        with self._lock:
            self._ids += 1
            return f"n{self._ids}" if parent else "root"

    def fail_run(self, exc: BaseException) -> None:
        """An error no node can recover from (the model is unreachable): stop the tree."""
        with self._lock:
            if self.fatal is None:
                self.fatal = exc
        self.budget.cancel(exc)

    def lm_call(
        self, client: Any, messages: list[dict[str, str]], node: str, depth: int, purpose: str
    ) -> str:
        self.budget.reserve_lm_call()
        timeout = self.config.lm_timeout
        left = self.budget.wall_left()
        if left is not None:
            timeout = max(1.0, min(timeout, left))
        return self.call_model(client, messages, node, depth, purpose, timeout)

    def call_model(
        self, client: Any, messages: list[dict[str, str]], node: str, depth: int, purpose: str, timeout: float
    ) -> str:
        """One model call, counted (per model too) and traced, whatever budget allowed it."""
        t0 = time.perf_counter()
        self.tracer.emit("lm_start", node=node, depth=depth, purpose=purpose, model=client.model)
        self.models.started()
        try:
            resp = client.completion(messages, timeout_s=timeout)
        except BaseException as exc:
            self.models.finished(None)
            if isinstance(exc, LMError):
                left = self.budget.wall_left()
                if getattr(exc, "kind", None) == "timeout" and left is not None and left <= 0.5:
                    # The call was cut by the run's wall budget, not by the model: say so.
                    self.tracer.emit("lm_cut", node=node, depth=depth, model=client.model, reason="timeout")
                    self.budget.check()
                self.tracer.emit("lm_error", node=node, depth=depth, model=client.model, error=str(exc))
                self.fail_run(exc)
            raise
        self.models.finished(client.model, resp.prompt_tokens, resp.completion_tokens, resp.cost_usd)
        self.budget.record_usage(resp.prompt_tokens, resp.completion_tokens, resp.cost_usd)
        if self.first_lm_s is None:
            self.first_lm_s = time.monotonic() - self.budget.started
        self.tracer.emit(
            "lm_call",
            node=node,
            depth=depth,
            purpose=purpose,
            model=client.model,  # the name the user configured: per-model accounting uses it
            served_model=resp.model or None,
            prompt_tokens=resp.prompt_tokens,
            completion_tokens=resp.completion_tokens,
            cost_usd=resp.cost_usd,
            latency_s=round(time.perf_counter() - t0, 4),
            # Whole (up to 64 KB) and keyed by the request, so `replay` can answer the same
            # request with the same text without a model.
            response=resp.text[:65536],
            request_sha256=request_digest(messages),
        )
        return resp.text


def request_digest(messages: list[dict[str, str]]) -> str:
    """A stable name for one model request: the same messages give the same digest.

    The system prompt's ``Budgets:`` line (calls, tokens, seconds left) depends on timing and
    on the order parallel children start, so it is left out: a replay of the same run must
    give the same digests."""
    import hashlib
    import json
    import re

    volatile = re.compile(r"^Budgets: .*$", re.MULTILINE)
    stable = [
        {"role": m["role"], "content": volatile.sub("Budgets: -", m["content"])}
        if m["role"] == "system"
        else m
        for m in messages
    ]
    blob = json.dumps(stable, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: a model's reply may hold a lone surrogate; the digest must not fail on it.
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class Node:
    """One RLM node: its own sandbox, its own loop, a branch of the trace."""

    def __init__(
        self,
        run: Run,
        *,
        depth: int,
        parent: str | None,
        context: Any,
        task: str,
        output: AnswerSpec | None = None,
    ) -> None:
        self.run = run
        self.output = output
        self.typed: Any = None  # the validated value, when ``output`` is set
        self.schema_failures = 0
        self.handler = RequestHandler(self.handle_request)
        self.depth = depth
        self.parent = parent
        self.context = context
        self.task = task
        self.id = run.new_node_id(parent)
        self.lm = run.models.for_node(depth)
        self.steps = 0
        self.messages: list[dict[str, str]] = []
        self._loader: _Loader | None = None

    def _loaded(self) -> None:
        """Block until ``context`` is in the sandbox; re-raise a failed load."""
        if self._loader is not None:
            self._loader.join()

    # ---- llm_query from this node's cells

    def handle_llm_query(self, prompt: str) -> str:
        return self.handle_request(SubRequest("llm", prompt))

    def handle_request(self, req: SubRequest) -> str:
        """Everything a cell can ask the host: llm_query, rlm_query (typed or not), tools."""
        run = self.run
        run.budget.check()
        if req.kind == "tool":
            return run.tools.call(self, req.name or "", req.text)
        spec = AnswerSpec.from_cell(req.output) if req.output is not None else None
        child_allowed = self.depth + 1 < run.config.depth
        wants_child = req.kind == "rlm" or run.config.recursion == "auto"
        if child_allowed and wants_child:
            run.tracer.emit(
                "sub_call", node=self.id, depth=self.depth, kind="rlm", prompt_chars=len(req.text)
            )
            task = render("child_task")
            child = Node(run, depth=self.depth + 1, parent=self.id, context=req.text, task=task, output=spec)
            return child.solve()
        run.tracer.emit("sub_call", node=self.id, depth=self.depth, kind="lm", prompt_chars=len(req.text))
        leaf = run.models.for_leaf(self.depth)
        if spec is not None:
            return self._typed_leaf(leaf, req.text, spec)
        return run.lm_call(leaf, [{"role": "user", "content": req.text}], self.id, self.depth, "sub_call")

    def _typed_leaf(self, leaf: Any, prompt: str, spec: AnswerSpec) -> str:
        """A plain call whose answer must match a schema: checked, sent back to fix, bounded."""
        run = self.run
        messages = [{"role": "user", "content": render("typed_leaf", prompt=prompt, schema=spec.describe())}]
        for _attempt in range(run.config.schema_retries + 1):
            text = run.lm_call(leaf, messages, self.id, self.depth, "sub_call")
            value, problem = spec.check(text, seconds=run.check_seconds())
            if problem is None:
                return spec.dump(value)
            messages += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": render("schema_retry", problem=problem)},
            ]
        raise AnswerInvalid(f"the helper's answer did not match the schema: {problem}")

    # ---- the loop

    def solve(self) -> str:
        """Run this node to its answer; raises a typed error when it cannot give one."""
        from rlm_sandbox.sandbox.core import Sandbox

        run = self.run
        cfg = run.config
        run.tracer.emit("node_begin", node=self.id, parent=self.parent, depth=self.depth)
        run.node_entered()
        try:
            run.budget.admit_node(self.depth)  # a container slot: released below, whatever happens
        except BaseException:
            run.node_left()
            raise
        t0 = time.monotonic()
        sandbox = None
        engine = None
        outcome, answer, error = "error", None, None
        try:
            t_acquire = time.perf_counter()
            pool = run.pool
            if run.placement is not None:
                engine = run.placement.acquire(run.budget.check)
                pool = engine.pool
            if pool is not None:
                sandbox, pooled = pool.acquire(self.handler)
            else:
                sandbox = Sandbox(
                    cfg.node_sandbox_config(run.run_id, self.id, engine.url if engine else None),
                    llm_handler=self.handler,
                    progress=run.image_progress,
                )
                pooled = False
                run.track(self.id, sandbox)
                sandbox.start()
            run.track(self.id, sandbox)
            acquire_s = time.perf_counter() - t_acquire
            run.tracer.emit(
                "node_start",
                node=self.id,
                parent=self.parent,
                depth=self.depth,
                container=sandbox.id,
                engine=engine.url if engine else None,
                start_s=round(acquire_s, 4),
                pooled=pooled,
                task=self.task[:500],
            )
            self.offer_tools(sandbox)
            info = host_context_info(self.context)
            progress = run.load_progress(self.id)
            if info is None:
                info = sandbox.load_context(self.context, progress=progress)
            else:
                # The host already knows what the prompt says of the input: the first model
                # call need not wait for the load (seconds at 1 GB). Cells wait for it.
                self._loader = _Loader(sandbox, self.context, progress)
            answer = self._loop(sandbox, info)
            outcome = "done"
            return answer
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            if (
                isinstance(exc, BudgetExhausted)
                and self.depth == 0
                and cfg.fallback_answer
                and sandbox is not None
                # A tenant's caps are the operator's, hard: no call past them, not even this one.
                and exc.budget not in ("cancelled", "tenant_max_cost", "tenant_max_containers")
                and not hasattr(exc, "fallback_answer")
            ):
                from rlm_sandbox.fallback import best_answer

                found = best_answer(self, sandbox, exc)
                if found is not None:
                    exc.fallback_answer = found  # type: ignore[attr-defined]
            if engine is not None and isinstance(exc, EngineUnavailable):
                run.placement.mark_dead(engine, exc.message)
            raise
        finally:
            if sandbox is not None:
                run.untrack(self.id)
                sandbox.close()
            if engine is not None:
                run.placement.release(engine)
            run.budget.release_container()
            run.tracer.emit(
                "node_end",
                node=self.id,
                depth=self.depth,
                status=outcome,
                steps=self.steps,
                answer=None if answer is None else answer[:2000],
                error=error,
                wall_s=round(time.monotonic() - t0, 4),
            )
            run.node_left()

    def _loop(self, sandbox: Any, info: Any) -> str:
        self.start_history(info)
        return self.run_steps(sandbox)

    def start_history(self, info: Any) -> None:
        """The conversation a node starts with: the system prompt and the task."""
        desc = describe_context(self.context, info)
        self.messages = [
            {"role": "system", "content": self._system_prompt(desc, self.run.config.max_steps)},
            {
                "role": "user",
                "content": render(
                    "first_step", task=self.task, context_desc=desc, preview=preview(self.context)
                ),
            },
        ]

    def run_steps(self, sandbox: Any) -> str:
        """Steps until an answer, from whatever history the node has (a session's follow-up
        question continues the same conversation, REPL and all)."""
        run, cfg = self.run, self.run.config
        messages = self.messages
        for step in range(1, cfg.max_steps + 1):
            run.budget.check()
            self.steps = step
            run.budget.add_step()
            messages = self._compact(messages)
            text = run.lm_call(self.lm, messages, self.id, self.depth, "step")
            messages.append({"role": "assistant", "content": text})
            self._loaded()
            outputs, answer = self._run_blocks(sandbox, text, step)
            if answer is None:
                answer, note = self._final_from_text(sandbox, text)
                if note:
                    outputs.append(note)
            if answer is not None:
                problem = self._check_answer(answer)
                if problem is None:
                    return self._typed_text(answer)
                outputs.append(render("schema_retry", problem=problem))
            if not outputs:
                outputs.append(
                    "(your reply had no ```repl code block and no FINAL(...)/FINAL_VAR(...): "
                    "write code to explore `context`, or finish)"
                )
            body = "\n\n".join(outputs)
            template = "next_step" if step < cfg.max_steps else "last_step"
            messages.append(
                {
                    "role": "user",
                    "content": render(
                        template,
                        outputs=body,
                        step=step,
                        max_steps=cfg.max_steps,
                        steps_left=cfg.max_steps - step,
                    ),
                }
            )
        # One last turn to give the answer with what it has.
        run.budget.check()
        text = run.lm_call(self.lm, messages, self.id, self.depth, "last_answer")
        messages.append({"role": "assistant", "content": text})
        self._loaded()
        answer, _ = self._final_from_text(sandbox, text)
        if answer is not None and self._check_answer(answer, retry=False) is not None:
            answer = None  # a last word that breaks the schema is no answer
        elif answer is not None:
            answer = self._typed_text(answer)
        exc = BudgetExhausted(
            "max_steps",
            f"node {self.id} (depth {self.depth}) used all {cfg.max_steps} steps without a final answer",
            hint="raise --max-steps",
        )
        if answer is not None and self.depth > 0:
            return answer  # a child's last word is still an answer for its parent
        if answer is not None and cfg.fallback_answer:
            exc.fallback_answer = answer  # type: ignore[attr-defined]
        raise exc

    def offer_tools(self, sandbox: Any) -> None:
        """Give the kernel a proxy per host tool; they live in its engine names, so they are
        restored after every cell."""
        tools = self.run.tools
        if tools:
            setup = sandbox.execute(
                f"_rlm_register_tools({tools.names()!r})", timeout=self.run.kernel_limit()
            )
            if setup.error:
                raise SandboxError(f"could not offer the tools to the sandbox: {setup.error}")

    def _compact(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Keep the history inside the model's context window (the namespace is untouched)."""
        from rlm_sandbox.compaction import compact_if_needed

        compacted = compact_if_needed(self, messages)
        if compacted is not messages:
            self.messages = compacted
        return compacted

    def _run_blocks(self, sandbox: Any, text: str, step: int) -> tuple[list[str], str | None]:
        run, cfg = self.run, self.run.config
        outputs: list[str] = []
        for index, code in enumerate(find_code_blocks(text)):
            run.budget.check()
            limit = run.kernel_limit()
            run.tracer.emit(
                "cell_start", node=self.id, depth=self.depth, step=step, index=index, code=code[:4000]
            )
            result = sandbox.execute(code, timeout=limit)
            if run.first_cell_s is None:
                run.first_cell_s = time.monotonic() - run.budget.started
            shown = format_result(result, cfg.output_limit)
            run.tracer.emit(
                "cell",
                node=self.id,
                depth=self.depth,
                step=step,
                index=index,
                code=code[:4000],
                output=truncate_output(shown, 2000),
                error=result.error,
                duration_s=round(result.duration_s, 6),
                wall_s=round(result.wall_s, 6),
                timed_out=result.timed_out,
            )
            outputs.append(f"Output of code block {index + 1}:\n```\n{shown}\n```")
            if result.final is not None:
                return outputs, result.final
        return outputs, None

    def _check_answer(self, answer: str, *, retry: bool = True) -> str | None:
        """None if ``answer`` is acceptable; otherwise what is wrong (and count the attempt)."""
        if self.output is None:
            return None
        value, problem = self.output.check(answer, seconds=self.run.check_seconds())
        if problem is None:
            self.typed = value
            return None
        self.run.tracer.emit("schema_mismatch", node=self.id, depth=self.depth, problem=problem[:1000])
        if retry:
            self.schema_failures += 1
            if self.schema_failures > self.run.config.schema_retries:
                raise AnswerInvalid(
                    f"node {self.id}'s answer did not match the schema after "
                    f"{self.run.config.schema_retries} retries: {problem}"
                )
        return problem

    def _typed_text(self, answer: str) -> str:
        return self.output.dump(self.typed) if self.output is not None and self.typed is not None else answer

    def _final_from_text(self, sandbox: Any, text: str) -> tuple[str | None, str | None]:
        final = find_final(text)
        if final is None:
            return None, None
        if final.kind == "value":
            return final.value, None
        name = final.value
        if not name.isidentifier():
            return (
                None,
                f"FINAL_VAR needs a variable name, got {name!r}; use FINAL(...) for a literal answer.",
            )
        limit = self.run.kernel_limit()
        result = sandbox.execute(f"FINAL_VAR({name!r})", timeout=limit)
        if result.timed_out:
            return None, (
                f"FINAL_VAR({name}): turning {name!r} into text took longer than {limit:g} s and was "
                "stopped. Make its str() cheap, or answer with FINAL(...)."
            )
        value = result.final if result.ok else None
        if value is None:
            return None, (
                f"FINAL_VAR({name}): there is no variable named {name!r} in the REPL. "
                "Assign it in a ```repl block first, or answer with FINAL(...)."
            )
        return value, None

    def _prompt_extras(self, deeper: bool) -> str:
        """The REPL's optional helpers, listed only when they exist for this node."""
        cfg, lines = self.run.config, []
        if deeper:
            lines.append(
                "\n  - `rlm_query(prompt)` / `rlm_query_batched(prompts)`: always start child RLM nodes"
                + (" (your `llm_query` calls are plain model calls)." if cfg.recursion == "explicit" else ".")
            )
        lines.append(
            "\n  - `llm_query(prompt, output=schema)`: with `output=` (a JSON Schema dict, or dict/list/"
            "int/str) the answer comes back as parsed, checked JSON."
        )
        tools = self.run.tools
        if tools:
            lines.append(
                "\n  - Tools (they run outside the REPL; JSON arguments and results):\n" + tools.describe()
            )
        return "".join(lines)

    def _system_prompt(self, desc: str, max_steps: int) -> str:
        cfg, budget = self.run.config, self.run.budget
        deeper = self.depth + 1 < cfg.depth
        snap = budget.snapshot()
        parts = []
        if cfg.max_lm_calls:
            parts.append(f"{cfg.max_lm_calls - snap['lm_calls']} model calls left for the whole run")
        if cfg.max_tokens:
            used = snap["tokens"]["prompt"] + snap["tokens"]["completion"]
            parts.append(f"{cfg.max_tokens - used} tokens left")
        if cfg.max_cost:
            parts.append(f"${cfg.max_cost - snap['cost_usd']:.4f} left")
        left = budget.wall_left()
        if left is not None:
            parts.append(f"{left:.0f} s of wall time left")
        return render(
            "system",
            context_desc=desc,
            output_limit=cfg.output_limit,
            helper_kind="RLM (it gets its own REPL with your prompt as its `context`)"
            if deeper
            else "language model",
            depth=self.depth,
            max_depth=cfg.depth - 1,
            depth_note=(
                "Your llm_query calls start child RLM nodes, each with its own REPL."
                if deeper
                else "Your llm_query calls go to a plain language model."
            ),
            steps_left=max_steps,
            extras=self._prompt_extras(deeper),
            answer_note=(
                "\n- Your final answer must be JSON matching this JSON Schema (FINAL(a dict or list) "
                f"sends it as JSON):\n{self.output.describe()}"
                if self.output is not None
                else ""
            ),
            budget_note="; ".join(parts) + "." if parts else "no other limits.",
        )


# ---- context descriptions (never the context itself)


class _Loader:
    """Loads ``context`` in a thread while the node's first model call is under way."""

    def __init__(
        self, sandbox: Any, context: Any, progress: Callable[[int, int], None] | None = None
    ) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(sandbox, context, progress), name="context-load", daemon=True
        )
        self._thread.start()

    def _run(self, sandbox: Any, context: Any, progress: Callable[[int, int], None] | None) -> None:
        try:
            sandbox.load_context(context, progress=progress)
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


@dataclasses.dataclass(frozen=True)
class HostContextInfo:
    type: str
    length: int
    approximate: bool = False


def host_context_info(context: Any) -> HostContextInfo | None:
    """What can be said of the input without the kernel; None for streams (unknown length)."""
    if isinstance(context, str | bytes | list | dict):
        return HostContextInfo(type(context).__name__, len(context))
    if isinstance(context, os.PathLike) and os.path.isfile(context):
        return HostContextInfo("str", os.path.getsize(context), approximate=True)
    return None


def describe_context(context: Any, info: Any) -> str:
    kind = getattr(info, "type", None) or type(context).__name__
    length = getattr(info, "length", None)
    if isinstance(context, os.PathLike):
        kind = "str"
    if kind == "str":
        about = "about " if getattr(info, "approximate", False) else ""
        return f"a str of {about}{length:,} characters" if length is not None else "a str"
    if kind == "bytes":
        return f"a bytes object of {length:,} bytes" if length is not None else "a bytes object"
    if kind == "list":
        sizes = [len(str(x)) for x in context[:10]] if isinstance(context, list) else []
        more = f" (sizes of the first items in characters: {sizes})" if sizes else ""
        return f"a list of {length:,} items{more}"
    if kind == "dict":
        keys = list(context)[:20] if isinstance(context, dict) else []
        return f"a dict with {length:,} keys (first keys: {keys})"
    return f"a {kind}"


def preview(context: Any, limit: int = 300) -> str:
    """A short look at the input's start, so the model knows its format before it codes."""
    head: str | None = None
    if hasattr(context, "head"):
        head = bytes(context.head[:limit]).decode("utf-8", errors="replace")
    elif isinstance(context, str):
        head = context[:limit]
    elif isinstance(context, bytes | bytearray):
        head = bytes(context[:limit]).decode("utf-8", errors="replace")
    elif isinstance(context, os.PathLike):
        try:
            with open(context, "rb") as f:
                head = f.read(limit).decode("utf-8", errors="replace")
        except OSError:
            head = None
    if not head:
        return ""
    return f"It begins with:\n```\n{head}\n```\n"


def format_result(result: Any, limit: int) -> str:
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.error:
        tb = result.traceback or result.error
        parts.append(tb.rstrip("\n") if result.ename != "CellTimeoutError" else f"[{result.error}]")
    text = "\n".join(parts) if parts else "(no output)"
    return truncate_output(text, limit)


# ---- the public API


def _classify(exc: BaseException) -> tuple[str, str | None]:
    if isinstance(exc, BudgetExhausted):
        return "budget_exhausted", exc.budget
    if isinstance(exc, SandboxError):
        return "sandbox_error", None
    if isinstance(exc, LMError):
        return "lm_error", None
    return "error", None


class RLM:
    """``RLM(model=..., sub_model=..., config=RLMConfig(...)).run(context=..., task=...)``."""

    def __init__(
        self,
        model: str | None = None,
        sub_model: str | None = None,
        config: RLMConfig | None = None,
        *,
        root_lm: Any = None,
        sub_lm: Any = None,
        api_key: str | None = None,
        tools: dict[str, Callable[..., Any]] | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config or RLMConfig()
        self.tools = ToolSet(tools)
        if overrides:
            cfg = RLMConfig.model_validate({**cfg.model_dump(), **overrides})
        self.config = cfg
        if root_lm is None and not model:
            raise ConfigError("no model given", hint="pass model='provider/model', e.g. openai/gpt-4o-mini")
        self._root_lm = root_lm
        self._sub_lm = sub_lm
        self.model = model or getattr(root_lm, "model", None)
        self.sub_model = (
            sub_model or (getattr(sub_lm, "model", None) if sub_lm is not None else None) or self.model
        )
        self._api_key = api_key
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def refuse_unsafe(self) -> None:
        """No tenant's code ever runs outside a sandbox, by any path (runs and sessions)."""
        cfg = self.config
        if cfg.sandbox.backend == "local" and cfg.tenant != "default":
            raise ConfigError(
                "the local backend runs model-written code with no sandbox: it is refused for tenants",
                hint="drop --backend local (the default, docker, is the sandbox), or drop --tenant",
            )

    def session(self, context: Any = None, *, run_id: str | None = None) -> Any:
        """``with rlm.session(context=...) as s: s.ask(...); s.ask(...)``: one container, one
        REPL and one conversation across questions (see :mod:`rlm_sandbox.session`)."""
        from rlm_sandbox.session import Session

        return Session(self, context, run_id=run_id)

    def _router(self) -> ModelRouter:
        from rlm_sandbox.lm import LiteLLMClient

        cfg = self.config
        root, sub = self._clients()
        kw = dict(
            api_base=cfg.api_base, api_key=self._api_key, timeout_s=cfg.lm_timeout, max_retries=cfg.lm_retries
        )
        return ModelRouter(root, sub, cfg.depth_models, make_client=lambda m: LiteLLMClient(m, **kw))

    def _clients(self) -> tuple[Any, Any]:
        from rlm_sandbox.lm import LiteLLMClient

        cfg = self.config
        kw = dict(
            api_base=cfg.api_base, api_key=self._api_key, timeout_s=cfg.lm_timeout, max_retries=cfg.lm_retries
        )
        root = self._root_lm or LiteLLMClient(self.model, **kw)
        if self._sub_lm is not None:
            sub = self._sub_lm
        elif self.sub_model == self.model:
            sub = root
        else:
            sub = LiteLLMClient(self.sub_model, **kw)
        return root, sub

    def run(
        self, context: Any = None, task: str = "", *, run_id: str | None = None, output: Any = None
    ) -> RLMResult:
        """Answer ``task`` over ``context`` (str, bytes, Path, file object, list or dict).

        ``output`` (a pydantic model class or a JSON Schema dict) makes the answer typed: it
        is validated, sent back to the model to fix when it does not match, and returned
        as ``result.output`` (the model instance, or the parsed JSON)."""
        spec = AnswerSpec(output) if output is not None else None
        if not task or not task.strip():
            raise ConfigError(
                "the task is empty", hint="say what to find or compute, e.g. --task 'How many ...?'"
            )
        if context is None:
            context = ""
        if isinstance(context, Path) and not context.is_file():
            raise ConfigError(f"input file not found: {context}", hint="check the path given to -i/--input")
        cfg = self.config
        self.refuse_unsafe()
        run_id = run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        tracer = Tracer(run_id, cfg.trace)
        for listener in self.listeners:
            tracer.subscribe(listener)
        from rlm_sandbox.lm import start_preload

        start_preload()
        run = Run(cfg, self._router(), tracer, run_id)
        tracer.emit(
            "run_start",
            model=self.model,
            sub_model=self.sub_model,
            task=task[:2000],
            depth=cfg.depth,
            max_steps=cfg.max_steps,
            tenant=cfg.tenant,
            limits=dataclasses.asdict(cfg.limits()),
            backend=cfg.sandbox.backend,
            unsafe=cfg.sandbox.backend == "local",
            levels=run.models.levels(cfg.depth),
        )
        answer, status, error, budget_name, hint = None, "ok", None, None, None
        used_fallback = False
        run.tools = self.tools
        root = Node(run, depth=0, parent=None, context=context, task=task, output=spec)
        if run.pool is not None:
            run.pool.start()
        try:
            if cfg.engines:
                run.prepare_engines()
            answer = root.solve()
        except (KeyboardInterrupt, SystemExit) as exc:
            # Ctrl-C or SIGTERM: stop the tree, remove every container, close the trace with
            # the reason, then let the signal end the process.
            why = "interrupted (SIGINT)" if isinstance(exc, KeyboardInterrupt) else "terminated (SIGTERM)"
            run.budget.cancel(exc)
            status, error = "error", f"{why}: the run was stopped and its containers removed"
            _stop_all(run)
            tracer.emit("run_end", status=status, error=error, reason=why, **run.budget.snapshot())
            tracer.close()
            raise
        except RLMSandboxError as exc:
            reason = run.budget.cancel_reason if run.budget.cancelled.is_set() else None
            cause: BaseException = reason if isinstance(reason, RLMSandboxError) else exc
            if run.fatal is not None:
                cause = run.fatal
            status, budget_name = _classify(cause)
            error = str(cause.message if isinstance(cause, RLMSandboxError) else cause)
            hint = getattr(cause, "hint", None) or None
            fallback = getattr(exc, "fallback_answer", None) or getattr(cause, "fallback_answer", None)
            if status == "budget_exhausted" and fallback is not None:
                answer, used_fallback = fallback, True
        except Exception as exc:  # a bug of ours: still a typed outcome, never a lost run
            status, error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            _stop_all(run)
            # Children cut short are still unwinding in their threads (a cold start may be
            # finishing): wait for them, then close whatever they opened after the sweep.
            run.wait_nodes(max(10.0, cfg.sandbox.start_timeout + cfg.sandbox.kill_grace))
            _stop_all(run)
        # Calls still in flight (a fan-out the stop cut short) cost money: wait for them.
        run.models.drain(min(30.0, cfg.lm_timeout))
        snap = run.budget.snapshot()
        if status != "ok":
            tracer.emit(
                "budget" if status == "budget_exhausted" else "error",
                status=status,
                budget=budget_name,
                error=error,
            )
        result = RLMResult(
            answer=answer,
            status=status,
            error=error,
            steps=snap["steps"],
            lm_calls=snap["lm_calls"],
            tokens=snap["tokens"],
            cost_usd=snap["cost_usd"],
            wall_s=snap["wall_s"],
            nodes=snap["nodes"],
            containers=snap["containers"],
            max_depth_reached=snap["max_depth_reached"],
            trace=str(cfg.trace) if cfg.trace else None,
            budget=budget_name,
            hint=hint,
            unsafe_backend=cfg.sandbox.backend if cfg.sandbox.backend != "docker" else None,
            fallback=used_fallback,
            models=run.models.report(),
            output=root.typed if answer is not None else None,
            timings={
                k: round(v, 4)
                for k, v in (("first_lm_call_s", run.first_lm_s), ("first_cell_s", run.first_cell_s))
                if v is not None
            },
        )
        pools = run.pools()
        pool_stats = (
            {
                key: sum(getattr(p, key) for p in pools)
                for key in ("size", "hits", "misses", "started", "discarded")
            }
            if pools
            else None
        )
        tracer.emit(
            "run_end",
            **(result.to_json() | answer_fields(result.answer)),
            budget=budget_name,
            timings=result.timings,
            pool=pool_stats,
            engines=run.placement.summary() if run.placement is not None else None,
            models=result.models,
            levels=run.models.levels(cfg.depth),
        )
        tracer.close()
        return result


def _stop_all(run: Run) -> None:
    """Close whatever sandboxes of the run are still open, deepest first, and the pool."""
    for pool in run.pools():
        pool.close()
    for node_id, sandbox in sorted(run.open_sandboxes(), key=lambda kv: kv[0] == "root"):
        try:
            sandbox.close()
        except Exception:
            pass
        run.untrack(node_id)


class RecursiveLanguageModel:
    """The names users of the paper's reference scripts reach for.

    ``RecursiveLanguageModel(root_lm=LiteLLMClient(model=...), config=RLMConfig(max_steps=10))``
    with ``.run(prompt=..., task=...)`` (a result object) and ``.completion(context=...,
    query=...)`` (the answer as a string, or the typed error).
    """

    def __init__(
        self,
        root_lm: Any = None,
        sub_lm: Any = None,
        config: RLMConfig | None = None,
        *,
        model: str | None = None,
        sub_model: str | None = None,
    ) -> None:
        self._rlm = RLM(model=model, sub_model=sub_model, config=config, root_lm=root_lm, sub_lm=sub_lm)
        self.config = self._rlm.config

    def run(self, prompt: Any = None, task: str = "", **kw: Any) -> RLMResult:
        return self._rlm.run(context=prompt, task=task, **kw)

    def completion(self, context: Any = None, query: str = "") -> str:
        result = self._rlm.run(context=context, task=query)
        if result.ok and result.answer is not None:
            return result.answer
        exc_type = {
            "budget_exhausted": BudgetExhausted,
            "sandbox_error": SandboxError,
            "lm_error": LMError,
        }.get(result.status, RLMSandboxError)
        if exc_type is BudgetExhausted:
            raise BudgetExhausted(
                result.budget or "unknown", result.error or "a budget ran out", hint=result.hint
            )
        raise exc_type(result.error or result.status, hint=result.hint)
