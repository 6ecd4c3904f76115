"""The public entry points: ``RLM(...).run(context=..., task=...)``, ``RLM.session(...)``, and
the names users of the paper's reference scripts reach for (``RecursiveLanguageModel``).

Outcomes are typed: ``ok``, ``budget_exhausted``, ``sandbox_error``, ``lm_error``, ``error``
(see :mod:`rlm_sandbox.errors`); a run never ends in a lost result or a leaked container.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlm_sandbox.blocking import blocking, finish
from rlm_sandbox.errors import (
    AnswerInvalid,
    BudgetExhausted,
    ConfigError,
    LMError,
    RLMSandboxError,
    RunCancelled,
    SandboxError,
)
from rlm_sandbox.input_check import BinaryInput, checked_input
from rlm_sandbox.inputs import InputSet, as_input
from rlm_sandbox.inputs.decompress import compression_of_name
from rlm_sandbox.rlm.answers import AnswerSpec
from rlm_sandbox.rlm.bridge import run_sync
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.lm import LMClient, make_client, needs_litellm, start_preload
from rlm_sandbox.rlm.models import ModelRouter
from rlm_sandbox.rlm.node import Node
from rlm_sandbox.rlm.outcome import Cancellation, Outcome
from rlm_sandbox.rlm.result import RLMResult
from rlm_sandbox.rlm.run import Run
from rlm_sandbox.rlm.run_setup import RunSetup, new_run_id
from rlm_sandbox.rlm.session import Session
from rlm_sandbox.rlm.tools import ToolSet
from rlm_sandbox.sandbox.backend import Backend
from rlm_sandbox.trace.writer import Listener


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
        backend: Backend | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config or RLMConfig()
        self.backend = backend  # a test seam (rlm_sandbox.sandbox.fake.FakeBackend); None: Docker
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
        self.listeners: list[Listener] = []
        if any(needs_litellm(m, cfg.api_base) for m in self._model_names()):
            # The model names are known: a provider that needs LiteLLM starts its import now,
            # so it overlaps the engine check, the container start and the input load.
            start_preload()

    def _model_names(self) -> list[str]:
        """The model strings this RLM makes clients for, as ``_models`` does: not the clients
        given to it, nor a name one of them already serves."""
        given = {getattr(c, "model", None) for c in (self._root_lm, self._sub_lm) if c is not None}
        names = [] if self._root_lm is not None else [self.model or ""]
        if self._sub_lm is None and self.sub_model != self.model:
            names.append(self.sub_model or "")
        names += list(self.config.depth_models.values())
        return [n for n in dict.fromkeys(names) if n and n not in given]

    def setup(self, listeners: Sequence[Listener] = ()) -> RunSetup:
        """What every run and session of this RLM is made of (``listeners``: more, for one run)."""
        return RunSetup(
            config=self.config,
            make_models=self._models,
            tools=self.tools,
            listeners=(*self.listeners, *listeners),
            model=self.model,
            sub_model=self.sub_model,
            backend=self.backend,
        )

    def session(
        self, context: Any = None, *, run_id: str | None = None, listeners: Sequence[Listener] = ()
    ) -> Session:
        """``with rlm.session(context=...) as s: s.ask(...); s.ask(...)``: one container, one
        REPL and one conversation across questions (see :mod:`rlm_sandbox.rlm.session`)."""
        return Session(self.setup(listeners), _checked(context), run_id=run_id)

    def _models(self) -> ModelRouter:
        """The clients of a run: the ones given, else one per model name (OpenAI-compatible
        endpoints over httpx, every other provider through LiteLLM: see rlm_sandbox.rlm.lm)."""
        cfg = self.config

        def make(model: str) -> LMClient:
            return make_client(
                model,
                api_base=cfg.api_base,
                api_key=self._api_key,
                timeout_s=cfg.lm_timeout,
                max_retries=cfg.lm_retries,
            )

        owned: list[LMClient] = []

        def own(model: str) -> LMClient:
            owned.append(client := make(model))
            return client

        root = self._root_lm or own(self.model or "")
        if self._sub_lm is not None:
            sub = self._sub_lm
        elif self.sub_model == self.model:
            sub = root
        else:
            sub = own(self.sub_model or "")
        return ModelRouter(root, sub, cfg.depth_models, make_client=make, owned=owned)

    def run(
        self,
        context: Any = None,
        task: str = "",
        *,
        run_id: str | None = None,
        output: Any = None,
        cancel: Cancellation | None = None,
        listeners: Sequence[Listener] = (),
    ) -> RLMResult:
        """Answer ``task`` over ``context``: a str, bytes, a ``Path`` (a file, plain or
        compressed, or a directory), a list of paths, a dict of name -> text (several
        inputs: ``context`` is then a dict in the REPL), an :class:`InputSet`, a binary
        file object, or a JSON list/dict. ``result.citations`` are what the model cited,
        checked against this input on this host.

        ``output`` (a pydantic model class or a JSON Schema dict) makes the answer typed: it
        is validated, sent back to the model to fix when it does not match, and returned
        as ``result.output`` (the model instance, or the parsed JSON). ``cancel`` (a
        :class:`Cancellation`) lets another thread stop the run: ``status: cancelled``;
        ``listeners`` get this run's events, besides ``self.listeners``.

        The run is :meth:`arun` on the process's engine loop (:mod:`rlm_sandbox.rlm.bridge`);
        Ctrl-C here stops it, removes its containers and closes its trace, then goes on."""
        cancel = cancel or Cancellation()
        return run_sync(
            self.arun(context, task, run_id=run_id, output=output, cancel=cancel, listeners=listeners),
            on_interrupt=cancel.interrupt,
        )

    async def arun(
        self,
        context: Any = None,
        task: str = "",
        *,
        run_id: str | None = None,
        output: Any = None,
        cancel: Cancellation | None = None,
        listeners: Sequence[Listener] = (),
    ) -> RLMResult:
        """:meth:`run` as a coroutine, on the caller's loop. Cancelling the awaiting task
        stops the run (``status: cancelled``, every container removed, the trace closed)
        and raises :class:`asyncio.CancelledError`; ``cancel.cancel()`` stops it and
        returns its result."""
        spec = AnswerSpec(output) if output is not None else None
        if not task or not task.strip():
            raise ConfigError(
                "the task is empty", hint="say what to find or compute, e.g. --task 'How many ...?'"
            )
        given, context = await blocking(_prepared, context)
        try:
            return await self._arun(context, task, spec, run_id, cancel, listeners)
        finally:
            if isinstance(context, InputSet) and context is not given:
                context.close()  # a stream's spool: ours to remove

    async def _arun(
        self,
        context: Any,
        task: str,
        spec: AnswerSpec | None,
        run_id: str | None,
        cancel: Cancellation | None,
        listeners: Sequence[Listener],
    ) -> RLMResult:
        run_id = run_id or new_run_id("run")
        run = Run.begin(self.setup(listeners), run_id, task)
        if cancel is not None:
            cancel.attach(run)
        root = Node(run, depth=0, parent=None, context=context, task=task, output=spec)
        answer, outcome = None, Outcome()
        caller_cancelled = False
        try:
            run.models.check_credentials()  # a missing key fails here, before any container starts
            run.take_input(context)  # a known size past the cap stops here: no container yet
            # The engines' check and the warm pools start while the root's first model call
            # is already out (the call needs nothing from a container).
            answer = await run.spawn(root.solve(prepare_engines=True))
        except (KeyboardInterrupt, SystemExit) as signal:  # raised on the loop (by a listener)
            run.interrupt(signal)
            await finish(run.stop(drain=False))
            run.end_interrupted()
            raise
        except asyncio.CancelledError:
            if run.interrupted is not None:  # Ctrl-C or SIGTERM: the signal goes on
                await finish(run.stop(drain=False))
                run.end_interrupted()
                raise
            caller_cancelled = _cancelling()
            if caller_cancelled:
                run.cancel("the asyncio task awaiting the run was cancelled")
            outcome = run.outcome(run.budget.cancel_reason or RunCancelled("the run was cancelled"))
        except BaseException as exc:
            outcome = run.outcome(exc)
        _, cancelled = await finish(run.stop(drain=not run.budget.cancelled_by_caller.is_set()))
        _, closing_cancelled = await finish(run.models.aclose())
        caller_cancelled = caller_cancelled or cancelled or closing_cancelled
        result = run.result(
            answer, outcome, output=root.typed, typed=spec is not None, claims=root.cited.claims()
        )
        run.end_with(result)
        if caller_cancelled:
            raise asyncio.CancelledError
        return result


def _cancelling() -> bool:
    """Was the task running this asked to cancel (not only a task it awaited)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _prepared(context: Any) -> tuple[Any, Any]:
    """``(as given, as the run loads it)``: files, directories, compressed files, streams
    become an InputSet (an input that is not UTF-8 text stays bytes: it is loaded as it is)."""
    if context is None:
        context = ""
    given = _checked(context)
    return given, given if isinstance(given, BinaryInput) else as_input(given)


def _checked(context: Any) -> Any:
    """A file given as a path is checked from its head: an empty one is refused, one that is
    not UTF-8 text becomes ``bytes`` in the kernel (:mod:`rlm_sandbox.input_check`). A
    directory (or several paths) is walked and checked file by file as it streams."""
    if not isinstance(context, Path) or context.is_dir() or compression_of_name(context.name):
        return context  # walked, or decompressed as it streams: checked as text then
    if not context.is_file():
        raise ConfigError(f"input file not found: {context}", hint="check the path given to -i/--input")
    return checked_input(context, str(context))


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
        backend: Backend | None = None,
    ) -> None:
        self._rlm = RLM(
            model=model, sub_model=sub_model, config=config, root_lm=root_lm, sub_lm=sub_lm, backend=backend
        )
        self.config = self._rlm.config

    def run(self, prompt: Any = None, task: str = "", **kw: Any) -> RLMResult:
        return self._rlm.run(context=prompt, task=task, **kw)

    def completion(self, context: Any = None, query: str = "") -> str:
        result = self._rlm.run(context=context, task=query)
        if result.ok and result.answer is not None:
            return result.answer
        if result.status == "budget_exhausted":
            raise BudgetExhausted(
                result.budget or "unknown", result.error or "a budget ran out", hint=result.hint
            )
        error_type = _ERROR_OF_STATUS.get(result.status, RLMSandboxError)
        raise error_type(result.error or result.status, hint=result.hint)


_ERROR_OF_STATUS: dict[str, type[RLMSandboxError]] = {
    "sandbox_error": SandboxError,
    "lm_error": LMError,
    "answer_invalid": AnswerInvalid,
}
