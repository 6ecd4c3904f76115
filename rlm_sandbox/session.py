"""Multi-turn RLM sessions: several questions over one input, one container, one REPL.

Re-loading a 500 MB input and re-discovering its shape for every question wastes minutes;
a session keeps the root node's container, its namespace and its conversation across
questions, so a follow-up can use the variables the first answer computed. Budgets of
model calls, tokens and cost span the whole session; the wall-time limit and the steps
limit apply to each question. The container is removed when the session ends, however it
ends (``with``, ``close()``, an exception, the process's exit handlers).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from rlm_sandbox.answers import AnswerSpec
from rlm_sandbox.errors import BudgetExhausted, RLMSandboxError, SandboxClosed
from rlm_sandbox.prompts import render
from rlm_sandbox.rlm import RLM, Node, RLMResult, Run, _classify, _stop_all
from rlm_sandbox.trace import Tracer, answer_fields


class Session:
    def __init__(self, rlm: RLM, context: Any, *, run_id: str | None = None) -> None:
        self.rlm = rlm
        self.context = "" if context is None else context
        self.run_id = run_id or f"session-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.questions = 0
        self.run: Run | None = None
        self.node: Node | None = None
        self._sandbox: Any = None
        self._info: Any = None
        self._closed = False

    # ---- lifecycle

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Session:
        from rlm_sandbox.lm import start_preload
        from rlm_sandbox.sandbox.core import Sandbox

        if self.run is not None:
            return self
        rlm, cfg = self.rlm, self.rlm.config
        rlm.refuse_unsafe()
        tracer = Tracer(self.run_id, cfg.trace)
        for listener in rlm.listeners:
            tracer.subscribe(listener)
        start_preload()
        run = Run(cfg, rlm._router(), tracer, self.run_id)
        run.tools = rlm.tools
        self.run = run
        tracer.emit("run_start", model=rlm.model, sub_model=rlm.sub_model, task="(session)", depth=cfg.depth,
                    max_steps=cfg.max_steps, tenant=cfg.tenant, session=True, backend=cfg.sandbox.backend,
                    limits=dataclasses.asdict(cfg.limits()),
                    unsafe=cfg.sandbox.backend == "local", levels=run.models.levels(cfg.depth))  # fmt: skip
        node = Node(run, depth=0, parent=None, context=self.context, task="")
        self.node = node
        tracer.emit("node_begin", node=node.id, parent=None, depth=0)
        run.node_entered()
        try:
            run.budget.admit_node(0)
            if cfg.engines:
                run.prepare_engines()
            engine_url = None
            if run.placement is not None:
                engine = run.placement.acquire(run.budget.check)
                engine_url = engine.url
            sandbox = Sandbox(
                cfg.node_sandbox_config(run.run_id, node.id, engine_url),
                llm_handler=node.handler,
                progress=run.image_progress,
            )
            self._sandbox = sandbox
            run.track(node.id, sandbox)
            sandbox.start()
            tracer.emit("node_start", node=node.id, parent=None, depth=0, container=sandbox.id,
                        engine=engine_url, start_s=sandbox.start_s, pooled=False, task="(session)")  # fmt: skip
            node.offer_tools(sandbox)
            self._info = sandbox.load_context(self.context, progress=run.load_progress(node.id))
            if run.pool is not None:
                run.pool.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove the container and close the trace; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        run = self.run
        if run is None:
            return
        if self._sandbox is not None:
            run.untrack(self.node.id if self.node else "root")
            self._sandbox.close()
            run.budget.release_container()
        if self.node is not None:
            run.tracer.emit("node_end", node=self.node.id, depth=0, status="done", steps=self.node.steps,
                            answer=None, error=None, wall_s=None)  # fmt: skip
            run.node_left()
        _stop_all(run)
        run.wait_nodes(10.0)  # children a question left unwinding
        run.models.drain(min(30.0, run.config.lm_timeout))
        run.tracer.emit("run_end", status="closed", questions=self.questions, **run.budget.snapshot(),
                        models=run.models.report())  # fmt: skip
        run.tracer.close()

    # ---- questions

    def ask(self, question: str, *, output: Any = None) -> RLMResult:
        """Answer one more question; the REPL and the conversation carry over."""
        if self._closed:
            raise SandboxClosed("this session is closed; start a new one")
        if not question or not question.strip():
            raise ValueError("the question is empty")
        self.open()
        run, node = self.run, self.node
        assert run is not None and node is not None
        self.questions += 1
        before = run.budget.snapshot()
        run.budget.started = time.monotonic()  # the wall-time limit is per question
        node.steps = 0
        node.schema_failures = 0
        node.output = AnswerSpec(output) if output is not None else None
        node.typed = None
        node.task = question
        run.tracer.emit("question", node=node.id, number=self.questions, task=question[:2000])
        if not node.messages:
            node.start_history(self._info)
        else:
            node.messages.append({"role": "user", "content": render("followup", task=question)})
        answer, status, error, budget, hint, fallback = None, "ok", None, None, None, False
        t0 = time.monotonic()
        try:
            answer = node.run_steps(self._sandbox)
        except RLMSandboxError as exc:
            cause: BaseException = run.fatal or exc
            status, budget = _classify(cause)
            error = getattr(cause, "message", str(cause))
            hint = getattr(cause, "hint", None) or None
            if isinstance(exc, BudgetExhausted) and getattr(exc, "fallback_answer", None) is not None:
                answer, fallback = exc.fallback_answer, True  # type: ignore[attr-defined]
            if not self._sandbox.healthy:
                self.close()  # the container died: this session cannot go on
        after = run.budget.snapshot()
        result = RLMResult(
            answer=answer,
            status=status,
            error=error,
            steps=node.steps,
            lm_calls=after["lm_calls"] - before["lm_calls"],
            tokens={k: after["tokens"][k] - before["tokens"][k] for k in ("prompt", "completion")},
            cost_usd=round(after["cost_usd"] - before["cost_usd"], 6),
            wall_s=round(time.monotonic() - t0, 3),
            nodes=after["nodes"] - before["nodes"] + (1 if self.questions == 1 else 0),
            containers=after["containers"] - before["containers"] + (1 if self.questions == 1 else 0),
            max_depth_reached=after["max_depth_reached"],
            trace=str(run.config.trace) if run.config.trace else None,
            budget=budget,
            hint=hint,
            fallback=fallback,
            models=run.models.report(),
            output=node.typed if answer is not None else None,
        )
        fields = result.to_json() | answer_fields(result.answer)
        run.tracer.emit("answer", node=node.id, number=self.questions, **fields)
        return result

    def totals(self) -> dict[str, Any]:
        """What the whole session has used so far (for ``/cost``)."""
        assert self.run is not None
        return self.run.budget.snapshot() | {"questions": self.questions, "models": self.run.models.report()}
