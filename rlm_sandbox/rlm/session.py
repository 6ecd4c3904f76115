"""Multi-turn RLM sessions: several questions over one input, one container, one REPL.

Re-loading a 500 MB input and re-discovering its shape for every question wastes minutes;
a session keeps the root node's container, its namespace and its conversation across
questions, so a follow-up can use the variables the first answer computed. Budgets of
model calls, tokens and cost span the whole session; the wall-time limit and the steps
limit apply to each question. The container is removed when the session ends, however it
ends (``with``, ``close()``, an exception, the process's exit handlers).

A session is the run lifecycle of :mod:`rlm_sandbox.rlm.run` held open: opened once, one
node's sandbox kept for its whole life, a result per question, ended on close.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

from rlm_sandbox.blocking import finish
from rlm_sandbox.errors import SandboxClosed
from rlm_sandbox.input_check import BinaryInput
from rlm_sandbox.inputs import as_input
from rlm_sandbox.rlm import conversation
from rlm_sandbox.rlm.answers import AnswerSpec
from rlm_sandbox.rlm.bridge import run_sync
from rlm_sandbox.rlm.citations import CitationLog
from rlm_sandbox.rlm.node import Node
from rlm_sandbox.rlm.outcome import Outcome, trace_fields
from rlm_sandbox.rlm.result import RLMResult
from rlm_sandbox.rlm.run import Run
from rlm_sandbox.rlm.run_setup import RunSetup, new_run_id
from rlm_sandbox.sandbox.core import Sandbox
from rlm_sandbox.trace.writer import answer_fields


class Session:
    """A session: the async core (``aopen``/``aask``/``aclose``, what ``AsyncSession``
    awaits) and the sync API over it (``open``/``ask``/``close``, on the engine loop)."""

    def __init__(self, setup: RunSetup, context: Any, *, run_id: str | None = None) -> None:
        self.setup = setup
        self._given = "" if context is None else context
        # Files, directories, streams -> an InputSet; an input that is not UTF-8 text
        # (checked by the caller: input_check.BinaryInput) stays as it is, loaded as bytes.
        self.context = self._given if isinstance(self._given, BinaryInput) else as_input(self._given)
        self.run_id = run_id or new_run_id("session")
        self.questions = 0
        self.run: Run | None = None
        self.node: Node | None = None
        self._sandbox: Sandbox | None = None
        self._info: Any = None
        self._opened: dict[str, Any] | None = None  # the budget before the root node started
        self._stack = AsyncExitStack()
        self._closed = False

    # ---- the sync API: the same coroutines on the engine loop

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Session:
        run_sync(self.aopen(), on_interrupt=self._interrupt)
        return self

    def ask(self, question: str, *, output: Any = None) -> RLMResult:
        """Answer one more question; the REPL and the conversation carry over."""
        return run_sync(self.aask(question, output=output), on_interrupt=self._interrupt)

    def close(self) -> None:
        """Remove the container and close the trace; safe to call more than once."""
        run_sync(self.aclose(), on_interrupt=self._interrupt)

    def _interrupt(self, signal: BaseException) -> None:
        if self.run is not None:
            self.run.interrupt(signal)

    # ---- lifecycle

    async def aopen(self) -> Session:
        if self.run is not None:
            return self
        if self._closed:
            raise SandboxClosed("this session is closed; start a new one")
        run = self.run = Run.begin(self.setup, self.run_id, "(session)", session=True)
        self._opened = run.snapshot()
        node = self.node = Node(run, depth=0, parent=None, context=self.context, task="(session)")
        try:
            run.models.check_credentials()  # a missing key fails here, before any container starts
            run.take_input(self.context)
            self._sandbox = await self._stack.enter_async_context(
                run.node_sandbox(node, prepare_engines=True)
            )
            self._info = await node.begin_load(self._sandbox)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self, **end: Any) -> None:
        """Remove the container and close the trace; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self.context is not self._given:
            self.context.close()  # a stream's spool: ours to remove
        run = self.run
        if run is None:
            return
        cancelled = False
        try:
            _, cancelled = await finish(self._stack.aclose())  # the root's sandbox, engine room, slot
        finally:
            _, stop_cancelled = await finish(run.stop(drain=not run.budget.cancelled_by_caller.is_set()))
            await finish(run.models.aclose())
            if run.interrupted is not None:
                run.end_interrupted()
            else:
                end = {"status": "closed"} | end
                run.end(**end, questions=self.questions, **run.budget.snapshot(), models=run.models.report())
            if cancelled or stop_cancelled:
                raise asyncio.CancelledError

    # ---- questions

    async def aask(self, question: str, *, output: Any = None) -> RLMResult:
        """Answer one more question; the REPL and the conversation carry over. Cancelling
        the awaiting task ends the session (``status: cancelled``) and raises
        :class:`asyncio.CancelledError`."""
        if self._closed:
            raise SandboxClosed("this session is closed; start a new one")
        if not question or not question.strip():
            raise ValueError("the question is empty")
        await self.aopen()
        run, node, sandbox = self.run, self.node, self._sandbox
        assert run is not None and node is not None and sandbox is not None
        self.questions += 1
        before = self._opened if self.questions == 1 else run.snapshot()
        self._start_question(question, output)
        answer, outcome = None, Outcome()
        t0 = time.monotonic()
        try:
            answer = await run.spawn(node.run_steps(sandbox))
        except asyncio.CancelledError:
            await self._cancelled(run)
            raise
        except Exception as exc:
            outcome = run.outcome(exc)
            if not sandbox.healthy:
                await self.aclose()  # the container died: this session cannot go on
        result = run.result(
            answer,
            outcome,
            output=node.typed,
            typed=output is not None,
            since=before,
            steps=node.steps,
            wall_s=round(time.monotonic() - t0, 3),
            claims=node.cited.claims(),
        )
        fields = trace_fields(result) | answer_fields(result.answer)
        run.tracer.emit("answer", node=node.id, number=self.questions, **fields)
        return result

    def _start_question(self, question: str, output: Any) -> None:
        run, node = self.run, self.node
        assert run is not None and node is not None
        run.budget.started = time.monotonic()  # the wall-time limit is per question
        node.steps = 0
        node.schema_failures = 0
        node.output = AnswerSpec(output) if output is not None else None
        node.typed = None
        node.task = question
        node.cited = CitationLog()  # this question's evidence only
        run.tracer.emit("question", node=node.id, number=self.questions, task=question[:2000])
        if not node.messages:
            node.start_history(self._info)
        else:
            node.messages.append(conversation.followup(question))

    async def _cancelled(self, run: Run) -> None:
        """The question was cancelled (its task, or Ctrl-C): the session ends with it."""
        if run.interrupted is None:
            run.cancel("the asyncio task awaiting the session was cancelled")
        await finish(self.aclose(status="cancelled"))

    def totals(self) -> dict[str, Any]:
        """What the whole session has used so far (for ``/cost``)."""
        assert self.run is not None
        return self.run.budget.snapshot() | {"questions": self.questions, "models": self.run.models.report()}
