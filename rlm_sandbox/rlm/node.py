"""One RLM node: its own sandbox, its own loop, a branch of the trace.

A node's model writes ```repl code; the node runs it in its own sandbox and shows the model
the (truncated) output, until the model gives a final answer. ``llm_query`` from a node at
depth ``d`` becomes a child node (own container, own loop) while ``d + 1 < depth``, and a
plain call to the sub model below that. A node is a coroutine on its run's loop, and so is
every request its cells make: ``llm_query_batched`` fans out into parallel containers,
bounded by the container budget, without a thread waiting on a model. What blocks (a cell
waiting on its kernel, Docker's API) runs in :mod:`rlm_sandbox.blocking`'s pools.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rlm_sandbox.blocking import blocking
from rlm_sandbox.errors import AnswerInvalid, BudgetExhausted
from rlm_sandbox.inputs import InputSet
from rlm_sandbox.rlm import conversation
from rlm_sandbox.rlm.answers import AnswerSpec
from rlm_sandbox.rlm.citations import CitationLog
from rlm_sandbox.rlm.compaction import compact_if_needed, known_window
from rlm_sandbox.rlm.context import ContextLoader, describe_context, host_context_info, load_into, preview
from rlm_sandbox.rlm.fallback import REASON_ROOM, best_answer, fallback_prompt
from rlm_sandbox.rlm.parsing import find_code_blocks, find_final, truncate_output
from rlm_sandbox.rlm.prompts import render
from rlm_sandbox.rlm.run import Run
from rlm_sandbox.sandbox.core import Sandbox
from rlm_sandbox.sandbox.held import Hold
from rlm_sandbox.sandbox.requests import RequestHandler, SubRequest

Messages = list[dict[str, str]]
#: A tenant's caps are the operator's, hard: no call past them, not even the fallback.
#: Nor when the input could not be loaded: there is nothing to answer from.
NO_FALLBACK_BUDGETS = frozenset({"cancelled", "tenant_max_cost", "tenant_max_containers", "max_input_bytes"})


class _FirstStep:
    """A node's first model call, made as a task of its own so that the node's container
    starts meanwhile; ``result()`` awaits it and re-raises what it raised."""

    def __init__(self, node: Node) -> None:
        # In flight from now on, not only once the request is sent: a run that stops (its
        # container failed to start) waits for this call and counts its cost.
        models = node.run.models
        models.started()
        self._task = node.run.spawn(node.step_call(1))

        def ended(task: asyncio.Task[str]) -> None:
            models.finished(None)
            if not task.cancelled():
                task.exception()  # never "exception was never retrieved" for a call unused

        self._task.add_done_callback(ended)

    async def result(self) -> str:
        return await self._task

    def cancel(self) -> None:
        """The node ended without it (its container failed to start): stop waiting for it."""
        self._task.cancel()


class Node:
    def __init__(
        self,
        run: Run,
        *,
        depth: int,
        parent: str | None,
        context: Any,
        task: str,
        output: AnswerSpec | None = None,
        context_held: Hold | None = None,
    ) -> None:
        self.run = run
        self.output = output
        self.typed: Any = None  # the validated value, when ``output`` is set
        self.schema_failures = 0
        # The bytes of this node's requests count against the run's bound, at this depth.
        self.handler = RequestHandler(self.handle_request, held=run.held.scope(depth), loop=run.loop)
        self.depth = depth
        self.parent = parent
        self.context = context
        self.context_held = context_held  # a parent's prompt: released once our kernel has it
        self.task = task
        self.id = run.new_node_id(parent)
        self.lm = run.models.for_node(depth)
        self.steps = 0
        self.answer: str | None = None
        self.messages: Messages = []
        self.cited = CitationLog()  # its cells' citations and those of its answered children
        self._loader: ContextLoader | None = None
        self._holds_fallback = False  # a root run by ``solve`` keeps room for its fallback

    # ---- what a cell asks the host

    async def handle_request(self, req: SubRequest) -> str:
        """Everything a cell can ask the host: llm_query, rlm_query (typed or not), tools.
        Runs as a task on the run's loop, cancelled with the run."""
        run = self.run
        task = asyncio.current_task()
        if task is not None:
            run.adopt(task)
        run.budget.check()
        if req.kind == "tool":
            return await run.tools.acall(
                req.name or "",
                req.text,
                reserve=run.budget.reserve_tool_call,
                trace=lambda fields: run.tracer.emit("tool_call", node=self.id, depth=self.depth, **fields),
            )
        spec = AnswerSpec.from_cell(req.output) if req.output is not None else None
        child_allowed = self.depth + 1 < run.config.depth
        wants_child = req.kind == "rlm" or run.config.recursion == "auto"
        if child_allowed and wants_child:
            run.tracer.emit(
                "sub_call", node=self.id, depth=self.depth, kind="rlm", prompt_chars=len(req.text)
            )
            child = Node(
                run,
                depth=self.depth + 1,
                parent=self.id,
                context=req.take_text(),  # the child's copy is the only one: freed once loaded
                task=render("child_task"),
                output=spec,
                context_held=req.held,
            )
            answer = await child.solve()
            self.cited.absorb(child.cited)  # the child's evidence comes back with its answer
            return answer
        run.tracer.emit("sub_call", node=self.id, depth=self.depth, kind="lm", prompt_chars=len(req.text))
        leaf = run.models.for_leaf(self.depth)
        if spec is not None:
            return await self._typed_leaf(leaf, req.text, spec)
        return await run.calls.call(
            leaf, [{"role": "user", "content": req.text}], self.id, self.depth, "sub_call"
        )

    async def _typed_leaf(self, leaf: Any, prompt: str, spec: AnswerSpec) -> str:
        """A plain call whose answer must match a schema: checked, sent back to fix, bounded."""
        run = self.run
        messages = [{"role": "user", "content": render("typed_leaf", prompt=prompt, schema=spec.describe())}]
        problem = None
        for _attempt in range(run.config.schema_retries + 1):
            text = await run.calls.call(leaf, messages, self.id, self.depth, "sub_call")
            value, problem = await blocking(spec.check, text, seconds=run.check_seconds())
            if problem is None:
                return spec.dump(value)
            messages += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": render("schema_retry", problem=problem)},
            ]
        raise AnswerInvalid(f"the helper's answer did not match the schema: {problem}")

    # ---- the node's life

    async def solve(self, *, prepare_engines: bool = False) -> str:
        """Run this node to its answer in a sandbox of its own; raises a typed error when it
        cannot give one (the root's budget stop carries the model's best answer, if any).

        When the host already knows what the first prompt says of ``context`` (a file's
        size, a string's length), the first model call is sent as soon as the node is
        admitted, and the container starts (and the input streams into it) while the model
        thinks: neither is on the way to the first call. ``prepare_engines`` (the run's root):
        the engines' check and the warm pools go first, in that window too."""
        self._holds_fallback = self.depth == 0 and self.run.config.fallback_answer
        info = host_context_info(self.context)
        first: _FirstStep | None = None

        def send_first_step() -> None:
            nonlocal first
            self.start_history(info)
            first = _FirstStep(self)

        early = send_first_step if info is not None else None
        try:
            async with self.run.node_sandbox(
                self, while_starting=early, prepare_engines=prepare_engines
            ) as sandbox:
                try:
                    if first is None:
                        self.start_history(await self.begin_load(sandbox))
                    else:
                        await self.begin_load(sandbox)
                    self.context = None  # the kernel has it (or its loader does): the host keeps no copy
                    self.answer = await self.run_steps(sandbox, first=first)
                    return self.answer
                except BudgetExhausted as exc:
                    if self._may_fall_back(exc):
                        exc.fallback_answer = await self._fallback(sandbox, exc)
                    raise
        except asyncio.CancelledError:
            if first is not None:
                first.cancel()  # a no-op once awaited; stops a call the node will not use
            raise

    async def begin_load(self, sandbox: Sandbox) -> Any:
        """Send ``context`` to the sandbox; returns what the prompt may say of it. When the
        host already knows that (a file's size, a string's length) the load goes on in the
        background while the first model call is made (seconds at 1 GB); cells wait for it."""
        info = host_context_info(self.context)
        progress = self.run.load_progress(self.id)
        context = self.context
        if isinstance(context, InputSet) and context.simple_path() is not None:
            context = context.simple_path()  # one plain file: the way a Path always loads
        if info is None:
            return await blocking(load_into, sandbox, context, progress, self.context_held)
        self._loader = ContextLoader(sandbox, context, progress, self.context_held)
        return info

    async def _loaded(self) -> None:
        """Wait until ``context`` is in the sandbox; re-raise a failed load. The wait
        ends with the run (its wall time, a stop): the load itself ends when the sandbox
        is closed."""
        if self._loader is not None:
            while not self._loader.join(timeout=0):
                self.run.budget.check()
                await asyncio.sleep(0.01)

    def start_history(self, info: Any) -> None:
        """The conversation a node starts with: the system prompt and the task."""
        facts = self._prompt_facts(describe_context(self.context, info))
        self.messages = conversation.opening(facts, self.task, preview(self.context))

    def _prompt_facts(self, desc: str) -> conversation.PromptFacts:
        run, cfg = self.run, self.run.config
        snap = run.budget.snapshot()
        note = conversation.budget_note(
            max_lm_calls=cfg.max_lm_calls,
            lm_calls=snap["lm_calls"],
            max_tokens=cfg.max_tokens,
            tokens=snap["tokens"]["prompt"] + snap["tokens"]["completion"],
            max_cost=cfg.max_cost,
            cost_usd=snap["cost_usd"],
            wall_left=run.budget.wall_left(),
        )
        return conversation.PromptFacts(
            context_desc=desc,
            depth=self.depth,
            max_depth=cfg.depth,
            max_steps=cfg.max_steps,
            output_limit=cfg.output_limit,
            recursion=cfg.recursion,
            tools_description=run.tools.describe() if run.tools else "",
            schema=self.output.describe() if self.output is not None else None,
            budget_note=note,
        )

    async def run_steps(self, sandbox: Sandbox, *, first: _FirstStep | None = None) -> str:
        """Steps until an answer, from whatever history the node has (a session's follow-up
        question continues the same conversation, REPL and all). ``first`` is the first
        step's model call, already sent while the sandbox started."""
        cfg = self.run.config
        for step in range(1, cfg.max_steps + 1):
            text = await first.result() if step == 1 and first is not None else await self.step_call(step)
            self.messages.append({"role": "assistant", "content": text})
            self._hold_fallback()
            await self._loaded()
            outputs, answer = await self._run_blocks(sandbox, text, step)
            if answer is None:
                answer, note = await self._final_from_text(sandbox, text)
                if note:
                    outputs.append(note)
            if answer is not None:
                problem = await self._check_answer(answer)
                if problem is None:
                    return self._typed_text(answer)
                outputs.append(render("schema_retry", problem=problem))
            self.messages.append(conversation.step_feedback(outputs, step, cfg.max_steps))
        return await self._last_word(sandbox)

    async def step_call(self, step: int) -> str:
        """The model call of step ``step``: counted, compacted, admitted by the budget."""
        run = self.run
        run.budget.check()
        self.steps = step
        run.budget.add_step()
        await self._compact()
        return await run.calls.call(self.lm, self.messages, self.id, self.depth, "step")

    async def _last_word(self, sandbox: Sandbox) -> str:
        """Out of steps: one last turn to answer with what it has. A child's last word is
        still an answer for its parent; the root's becomes the fallback of its budget stop."""
        run, cfg = self.run, self.run.config
        run.budget.check()
        text = await run.calls.call(self.lm, self.messages, self.id, self.depth, "last_answer")
        self.messages.append({"role": "assistant", "content": text})
        await self._loaded()
        answer = await self._accepted_final(sandbox, text)
        if answer is not None and self.depth > 0:
            return answer
        raise BudgetExhausted(
            "max_steps",
            f"node {self.id} (depth {self.depth}) used all {cfg.max_steps} steps without a final answer",
            hint="raise --max-steps",
            fallback_answer=answer if cfg.fallback_answer else None,
        )

    async def _compact(self) -> None:
        """Keep the history inside the model's context window (the namespace is untouched)."""
        run, cfg = self.run, self.run.config
        compacted, stats = await compact_if_needed(
            self.messages,
            window=cfg.context_window or known_window(self.lm.model),
            compact_at=cfg.compact_at,
            summarize=lambda request: run.calls.call(self.lm, request, self.id, self.depth, "compaction"),
        )
        if stats is not None:
            self.messages = compacted
            run.tracer.emit("compaction", node=self.id, depth=self.depth, **stats)

    async def _run_blocks(self, sandbox: Sandbox, text: str, step: int) -> tuple[list[str], str | None]:
        run, cfg = self.run, self.run.config
        outputs: list[str] = []
        for index, code in enumerate(find_code_blocks(text)):
            run.budget.check()
            limit = run.kernel_limit()  # a cell may not outlive the run's wall budget
            run.tracer.emit(
                "cell_start", node=self.id, depth=self.depth, step=step, index=index, code=code[:4000]
            )
            result = await blocking(sandbox.execute, code, timeout=limit)
            if result.citations:
                self.cited.add(result.citations, self.id)
            if run.first_cell_s is None:
                run.first_cell_s = time.monotonic() - run.budget.started
            shown = conversation.format_result(result, cfg.output_limit)
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
                **({"cited": len(result.citations)} if result.citations else {}),
            )
            outputs.append(conversation.cell_output_block(index, shown))
            if result.final is not None:
                return outputs, result.final
        return outputs, None

    # ---- answers

    async def _check_answer(self, answer: str, *, retry: bool = True) -> str | None:
        """None if ``answer`` is acceptable; otherwise what is wrong (and count the attempt)."""
        if self.output is None:
            return None
        value, problem = await blocking(self.output.check, answer, seconds=self.run.check_seconds())
        if problem is None:
            self.typed = value
            return None
        self.run.tracer.emit("schema_mismatch", node=self.id, depth=self.depth, problem=problem[:1000])
        if retry:
            self.schema_failures += 1
            retries = self.run.config.schema_retries
            if self.schema_failures > retries:
                raise AnswerInvalid(
                    f"node {self.id}'s answer did not match the schema after {retries} retries: {problem}"
                )
        return problem

    def _typed_text(self, answer: str) -> str:
        return self.output.dump(self.typed) if self.output is not None and self.typed is not None else answer

    async def _accepted_final(self, sandbox: Sandbox, text: str) -> str | None:
        """The final answer in ``text`` if it is one the run accepts (a typed run: only one
        that matches its schema), else None; no retry is asked for."""
        answer, _note = await self._final_from_text(sandbox, text)
        if answer is None or await self._check_answer(answer, retry=False) is not None:
            return None
        return self._typed_text(answer)

    async def _final_from_text(self, sandbox: Sandbox, text: str) -> tuple[str | None, str | None]:
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
        result = await blocking(sandbox.execute, f"FINAL_VAR({name!r})", timeout=limit)
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

    # ---- the best answer after a budget stop

    def _hold_fallback(self) -> None:
        """After each of the root's steps: keep room for a fallback from this history (the
        work of this step -- its cells, its children -- may not use it)."""
        if self._holds_fallback:
            self.run.calls.hold_fallback(self.lm, self.messages, fallback_prompt("x" * REASON_ROOM))

    def _may_fall_back(self, exc: BudgetExhausted) -> bool:
        return (
            self.depth == 0
            and self.run.config.fallback_answer
            and exc.budget not in NO_FALLBACK_BUDGETS
            and exc.fallback_answer is None
        )

    async def _fallback(self, sandbox: Sandbox, exc: BudgetExhausted) -> str | None:
        """Ask the root's model once for its best answer: within the caps (it spends the
        hold kept for it), bounded in time; skipped when it does not fit."""
        run = self.run
        skipped: list[str] = []

        async def ask(request: Messages) -> str:
            try:
                return await run.calls.fallback(self.lm, request, self.id, self.depth)
            except BudgetExhausted as why:
                skipped.append(why.message)
                raise

        found = await best_answer(
            self.messages, exc.message, ask, lambda text: self._accepted_final(sandbox, text)
        )
        run.tracer.emit(
            "fallback",
            node=self.id,
            budget=exc.budget,
            answered=found is not None,
            **({"skipped": skipped[0]} if skipped else {}),
        )
        return found
