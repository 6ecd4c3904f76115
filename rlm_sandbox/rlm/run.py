"""One run's lifecycle, shared by ``RLM.run`` and by sessions.

A run is opened (the trace, ``run_start``, the budget, the containers), gives each node a
sandbox for as long as the node lives (``node_sandbox``), turns whatever stopped it into a
typed outcome (``outcome``), builds the result from the budget's counters (``result``; both
with :mod:`rlm_sandbox.rlm.outcome`, which also holds the :class:`Cancellation` handle), is
stopped (every container closed, children unwinding waited for, calls in flight drained) and
ended (``run_end``, the trace closed). ``RLM.run`` does that once around a root node; a
session opens once, asks many questions of one node, and ends when it is closed. Writing the
lifecycle once is what keeps the two from drifting apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from rlm_sandbox.blocking import blocking, finish
from rlm_sandbox.errors import ConfigError, InputTooLarge, RunCancelled, SandboxError
from rlm_sandbox.inputs import InputSet
from rlm_sandbox.rlm.budget import Budget
from rlm_sandbox.rlm.calls import ModelCalls
from rlm_sandbox.rlm.citations import Claim, verify
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.containers import Lease, RunContainers
from rlm_sandbox.rlm.models import ModelRouter
from rlm_sandbox.rlm.outcome import Outcome, build_result, call_timings, classify, trace_fields
from rlm_sandbox.rlm.result import RLMResult
from rlm_sandbox.rlm.run_setup import RunSetup, open_cache
from rlm_sandbox.rlm.tenants import ledger
from rlm_sandbox.rlm.tools import ToolSet
from rlm_sandbox.sandbox.backend import Backend
from rlm_sandbox.sandbox.channel import LLMHandler
from rlm_sandbox.sandbox.core import Sandbox
from rlm_sandbox.sandbox.held import RunHeld
from rlm_sandbox.trace.writer import Tracer, answer_fields
from rlm_sandbox.untrusted import CHECK_SECONDS


class NodeLike(Protocol):
    """What the lifecycle needs of a node to give it a sandbox and trace it."""

    id: str
    parent: str | None
    depth: int
    task: str
    steps: int
    answer: str | None
    handler: LLMHandler


T = TypeVar("T")


class Run:
    """What every node of one run shares: budget, trace, model calls, containers, tools."""

    def __init__(
        self,
        config: RLMConfig,
        models: ModelRouter,
        tracer: Tracer,
        run_id: str,
        tools: ToolSet | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self.tracer = tracer
        self.run_id = run_id
        self.tools = tools or ToolSet(None)
        self.budget = Budget(
            config.limits(), ledger.account(config.tenant, config.tenants.get(config.tenant))
        )
        # One bound on the bytes the host holds for the whole tree's requests (sandbox/held.py).
        self.held = RunHeld(
            config.max_run_held_bytes, levels=config.depth, max_frame_payload=config.sandbox.max_frame_payload
        )
        self.fatal: BaseException | None = None
        self.first_cell_s: float | None = None
        self.inputs: Any = None  # the root's input as given: citations are checked against it
        self.warnings: list[str] = []  # said once each: stderr, --json's warnings, the trace
        self.calls = ModelCalls(
            models,
            self.budget,
            tracer,
            lm_timeout=config.lm_timeout,
            max_tokens=config.lm_max_tokens,
            on_fatal=self.fail_run,
            cache=open_cache(config),
        )
        self.containers = RunContainers(
            config,
            run_id,
            self.budget,
            warn=lambda message, fields: self.warn(message, event="engine_warning", **fields),
            progress=self.image_progress,
            backend=backend,
        )
        self._ids = 0
        self._lock = threading.Lock()
        self._active_nodes = 0
        # The loop the run lives on (a run is made by a coroutine): what other threads
        # (a Cancellation, Ctrl-C) hand their stop to.
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tasks_cancelled = False
        self.interrupted: str | None = None  # why, when Ctrl-C or SIGTERM stopped the run

    # ---- opening

    @classmethod
    def begin(cls, setup: RunSetup, run_id: str, task: str, *, session: bool = False) -> Run:
        """Open a run: refuse what is unsafe, start the trace and say ``run_start``."""
        cfg = setup.config
        if cfg.sandbox.backend == "local" and cfg.tenant != "default":
            raise ConfigError(
                "the local backend runs model-written code with no sandbox: it is refused for tenants",
                hint="drop --backend local (the default, docker, is the sandbox), or drop --tenant",
            )
        models = setup.make_models()
        tracer = Tracer(run_id, cfg.trace)
        try:
            run = cls(cfg, models, tracer, run_id, setup.tools, setup.backend)
        except BaseException:
            tracer.close()
            raise
        for listener in setup.listeners:
            tracer.subscribe(listener)
        tracer.emit(
            "run_start",
            model=setup.model,
            sub_model=setup.sub_model,
            task=task[:2000],
            depth=cfg.depth,
            max_steps=cfg.max_steps,
            tenant=cfg.tenant,
            limits=dataclasses.asdict(cfg.limits()),
            backend=cfg.sandbox.backend,
            unsafe=cfg.sandbox.backend == "local",
            levels=models.levels(cfg.depth),
            **({"image_packages": list(cfg.sandbox.image_packages)} if cfg.sandbox.image_packages else {}),
            **({"session": True} if session else {}),
        )
        return run

    def note_engines(self) -> None:
        """Say in the trace where nodes can go, once the engines were probed."""
        if self.containers.placement is not None:
            self.tracer.emit(
                "engines",
                engines=self.containers.engines_summary(),
                max_containers=self.budget.limits.max_containers,
            )

    # ---- nodes

    def new_node_id(self, parent: str | None) -> str:
        with self._lock:
            self._ids += 1
            return f"n{self._ids}" if parent else "root"

    @asynccontextmanager
    async def node_sandbox(
        self,
        node: NodeLike,
        *,
        while_starting: Callable[[], None] | None = None,
        prepare_engines: bool = False,
    ) -> AsyncIterator[Sandbox]:
        """A sandbox for ``node`` while the block runs (a budget slot, an engine, a pooled or
        new sandbox with the run's tools), traced from ``node_begin`` to ``node_end`` and
        released whatever happens. ``while_starting``: the node's first model call, sent
        after its container is asked for (the longer way) unless the CLI's prestart has it
        ready. ``prepare_engines`` (the first node): engines probed, warm pools started."""
        tracer = self.tracer
        tracer.emit("node_begin", node=node.id, parent=node.parent, depth=node.depth)
        self._node_entered()
        t0 = time.monotonic()
        admitted = False
        lease: Lease | None = None
        status, error = "error", None
        try:
            await self.budget.aadmit_node(node.depth)  # a container slot: released below, whatever happens
            admitted = True
            call_first = node.parent is None and self.containers.prestarted()
            if while_starting is not None and call_first:
                while_starting()
            acquiring = blocking(self.containers.acquire, node.id, node.handler, prepare=prepare_engines)
            try:
                if while_starting is not None and not call_first:
                    while_starting()
            finally:  # a start in flight is waited for, whatever happened: then released below
                lease, cancelled = await finish(acquiring)
            if prepare_engines:
                self.note_engines()
            if cancelled:
                raise asyncio.CancelledError
            self.budget.container_started()
            tracer.emit(
                "node_start",
                node=node.id,
                parent=node.parent,
                depth=node.depth,
                container=lease.sandbox.id,
                engine=lease.engine_url,
                start_s=round(lease.start_s, 4),
                pooled=lease.pooled,
                prestarted=lease.prestarted,
                task=node.task[:500],
            )
            await self.offer_tools(lease.sandbox)
            yield lease.sandbox
            status = "done"
        except BaseException as exc:
            stopped = isinstance(exc, asyncio.CancelledError)
            error = (self.interrupted or "cancelled") if stopped else f"{type(exc).__name__}: {exc}"
            if lease is not None and not stopped:
                self.containers.fail_engine(lease.engine, exc)
            raise
        finally:
            cancelled = False  # a cancel while the container is released: raised once all is done
            if lease is not None:
                _, cancelled = await finish(blocking(self.containers.release, lease))
            if admitted:
                self.budget.release_container()
            # Every node_begin gets its node_end, even for a node the budget never admitted:
            # trace readers would show it as still running otherwise.
            tracer.emit(
                "node_end",
                node=node.id,
                depth=node.depth,
                status=status,
                steps=node.steps,
                answer=None if node.answer is None else node.answer[:2000],
                error=error,
                wall_s=round(time.monotonic() - t0, 4),
            )
            self._node_left()
            if cancelled:
                raise asyncio.CancelledError

    async def offer_tools(self, sandbox: Sandbox) -> None:
        """Give the kernel a proxy per host tool; they live in its engine names, so they are
        restored after every cell."""
        if self.tools:
            code = f"_rlm_register_tools({self.tools.names()!r})"
            setup = await blocking(sandbox.execute, code, timeout=self.kernel_limit())
            if setup.error:
                raise SandboxError(f"could not offer the tools to the sandbox: {setup.error}")

    def _node_entered(self) -> None:
        with self._lock:
            self._active_nodes += 1

    def _node_left(self) -> None:
        with self._lock:
            self._active_nodes -= 1

    async def _wait_nodes(self, timeout_s: float) -> bool:
        """Wait until no node is running: after a stop, children still unwinding may be
        starting or closing containers; the run must not return before them."""
        deadline = time.monotonic() + timeout_s
        while self._active_nodes > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # ---- tasks: what a cancel stops

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task of this run (a node, a first model call): cancelled when the run is."""
        task = self.loop.create_task(coro)
        self.adopt(task)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Count ``task`` (a request a cell made) as the run's: cancelled when the run is."""
        if self._tasks_cancelled:
            task.cancel()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_tasks(self) -> None:
        """On the run's loop: every task of the run cancelled, every container removed."""
        self._tasks_cancelled = True
        for task in list(self._tasks):
            task.cancel()
        blocking(self.containers.close_all)  # in a thread: the loop goes on

    def _on_loop(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the run's loop: now when called there, else as soon as it can."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn)

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
        left = self.budget.wall_left()
        return CHECK_SECONDS if left is None else max(0.5, min(CHECK_SECONDS, left))

    # ---- progress for the live view

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

    def warn(self, message: str, *, event: str = "warning", **fields: Any) -> None:
        """Something the run skipped or doubts (an engine that does not answer, an input read
        as bytes): in the result's ``warnings`` and, as ``event``, in the trace and on stderr."""
        with self._lock:
            self.warnings.append(message)
        self.tracer.emit(event, message=message[:2000], **fields)

    def take_input(self, context: Any) -> None:
        """The root's input: kept to check citations against, its warnings said once (an
        input that is not UTF-8 text, given to the model as bytes), and the cap
        (``max_input_bytes``, or the tenant's) put on it. An :class:`InputSet` counts as it
        streams (a compressed file's size is known only then) and refuses at once what it
        already knows is too large; text given in memory is measured here."""
        self.inputs = context
        for warning in getattr(context, "warnings", ()):
            self.warn(str(warning))
        cap, source = self.config.input_cap()
        if isinstance(context, InputSet):
            context.bound(cap, source)
            context.check_known_sizes()
        elif isinstance(context, str | bytes | bytearray):
            size = len(context.encode("utf-8", "surrogatepass")) if isinstance(context, str) else len(context)
            if size > cap:
                raise InputTooLarge("<context>", cap, source)

    def snapshot(self) -> dict[str, Any]:
        """The budget's counters and the cache hits: what a session question is measured from."""
        return self.budget.snapshot() | {"lm_cache_hits": self.calls.cache_hits}

    # ---- stopping and ending

    def fail_run(self, exc: BaseException) -> None:
        """An error no node can recover from (the model is unreachable): stop the tree."""
        with self._lock:
            if self.fatal is None:
                self.fatal = exc
        self.budget.cancel(exc)

    def outcome(self, exc: BaseException) -> Outcome:
        """What stopped the run, as ``--json`` reports it (see :func:`classify`)."""
        reason = self.budget.cancel_reason if self.budget.cancelled.is_set() else None
        return classify(exc, reason, self.fatal)

    async def stop(self, *, drain: bool = True) -> None:
        """Close every container of the run and wait for what is still unwinding, never past
        the run's wall-time budget plus its grace (``Budget.stop_deadline``): what is still
        unwinding then closes its own container when it gets there, and the CLI's exit
        removes every container the process started. ``drain``: wait for model calls in
        flight too (their cost counts); a cancelled run does not."""
        await blocking(self.containers.close_all)
        # Children cut short are still unwinding (a cold start may be finishing): wait for
        # them, then close whatever they opened after the sweep.
        sb = self.config.sandbox
        await self._wait_nodes(self._until_stop_deadline(max(10.0, sb.start_timeout + sb.kill_grace)))
        await blocking(self.containers.close_all)
        if drain:  # calls still in flight (a fan-out the stop cut short) cost money: wait for them
            await blocking(self.models.drain, self._until_stop_deadline(min(30.0, self.config.lm_timeout)))

    def _until_stop_deadline(self, wait_s: float) -> float:
        """``wait_s``, cut to what is left before the run must have ended."""
        end = self.budget.stop_deadline()
        return wait_s if end is None else max(0.0, min(wait_s, end - time.monotonic()))

    def cancel(self, why: str = "the run was cancelled by its caller") -> None:
        """Stop the run now, from any thread: every node stops, every cell is interrupted
        (its container removed), every model call abandoned; the outcome is ``cancelled``."""
        self.budget.cancelled_by_caller.set()
        self.budget.cancel(RunCancelled(why))
        self._on_loop(self._cancel_tasks)

    def interrupt(self, signal: BaseException) -> None:
        """Ctrl-C or SIGTERM (from the thread that waits for the run): stop the tree and
        remove every container; the run's coroutine then closes the trace with the reason
        (:meth:`end_interrupted`) and the signal goes on."""
        self.interrupted = (
            "interrupted (SIGINT)" if isinstance(signal, KeyboardInterrupt) else "terminated (SIGTERM)"
        )
        self.budget.cancelled_by_caller.set()
        self.budget.cancel(signal)
        self._on_loop(self._cancel_tasks)

    def end_interrupted(self) -> None:
        """``run_end`` for a run Ctrl-C or SIGTERM stopped."""
        why = self.interrupted or "interrupted"
        error = f"{why}: the run was stopped and its containers removed"
        self.end(status="error", error=error, reason=why, **self.budget.snapshot())

    def result(
        self,
        answer: str | None,
        outcome: Outcome,
        *,
        output: Any = None,
        typed: bool = False,
        since: dict[str, Any] | None = None,
        steps: int | None = None,
        wall_s: float | None = None,
        claims: Sequence[Claim] = (),
    ) -> RLMResult:
        """The result from the budget's counters: the whole run, or since the ``since``
        snapshot (one question of a session). ``claims`` (what the answering node and its
        children cited) are checked here against the input on this host."""
        if outcome.status != "ok":
            self.tracer.emit(
                "budget" if outcome.status == "budget_exhausted" else "error",
                status=outcome.status,
                budget=outcome.budget,
                error=outcome.error,
            )
        fallback = answer is None and outcome.fallback_answer is not None
        if fallback:
            answer = outcome.fallback_answer
        citations = verify(claims, self.inputs) if answer is not None and claims else []
        calls = self.calls
        return build_result(
            answer,
            outcome,
            now=self.budget.snapshot(),
            since=since,
            steps=steps,
            wall_s=wall_s,
            fallback=fallback,
            citations=citations,
            config=self.config,
            models=self.models.report(),
            timings=call_timings(calls.ready_s, calls.first_request_s, calls.first_call_s, self.first_cell_s),
            cache_hits=calls.cache_hits,
            warnings=self.warnings,
            output=output,
            typed=typed,
        )

    def end_with(self, result: RLMResult) -> None:
        """``run_end`` for a run that produced a result, then close the trace."""
        self.end(
            **(trace_fields(result) | answer_fields(result.answer)),
            budget=result.budget,
            timings=result.timings,
            pool=self.containers.pool_stats(),
            engines=self.containers.engines_summary(),
            models=result.models,
            levels=self.models.levels(self.config.depth),
        )

    def end(self, **fields: Any) -> None:
        self.tracer.emit("run_end", **fields)
        self.tracer.close()
