"""One ``rlm_query`` call, from the client's arguments to a finished (or cancelled) run.

The server's settings (model, budgets, sandbox, tenant) are fixed when it starts; a call may
only choose a shallower ``depth``. The input is a ``text`` the client sends, or a ``path``
that :mod:`.paths` allows, read through the same code as ``run -i`` (compressed files,
directories walked, the ``max_input_bytes`` cap, an empty file refused, a binary one given
as bytes).

Each call is its own run, with its own run id, containers and trace file. The run is an
:class:`~rlm_sandbox.rlm.aio.AsyncRLM` run in a task of its own: when the request is
cancelled (the client's ``notifications/cancelled``, or the server stopping) that task is
cancelled and awaited, shielded, until its containers are gone, so a cancelled call or a
server that exits leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.mcp_server.paths import AllowedDirs

#: How long a cancelled run may take to remove its containers before the call gives up
#: waiting (AsyncRLM's own grace is 5 s; the run keeps removing them after that).
STOP_WAIT_S = 10.0


@dataclass
class QueryService:
    """What every call shares: the models, the run settings, the allowed directories."""

    model: str
    sub_model: str | None
    config: Any  # RLMConfig, as `run` would build it from the same settings
    allowed: AllowedDirs
    trace_dir: Path | None = None  # None: no trace files
    api_key: str | None = None
    runs: set[asyncio.Future[Any]] = field(default_factory=set)  # in flight, for stop_all

    @property
    def max_depth(self) -> int:
        return int(self.config.depth)

    def config_for(self, depth: int | None, run_id: str) -> Any:
        """The server's settings with this call's depth (never deeper) and its own trace file."""
        from rlm_sandbox.rlm.config import RLMConfig

        if depth is not None and not 1 <= depth <= self.max_depth:
            raise ConfigError(
                f"depth {depth} is not allowed: this server runs at most depth {self.max_depth}",
                hint=f"give a depth from 1 to {self.max_depth}, or leave it out",
            )
        trace = str(self.trace_dir / f"mcp-{run_id}.jsonl") if self.trace_dir else None
        update = {"trace": trace} | ({"depth": depth} if depth is not None else {})
        return RLMConfig.model_validate({**self.config.model_dump(), **update})

    async def query(
        self, task: str, path: str | None, text: str | None, depth: int | None, listener: Any
    ) -> Any:
        """Run ``task`` over the input; the :class:`~rlm_sandbox.rlm.result.RLMResult`.
        A refused argument is a :class:`ConfigError` raised before anything starts."""
        from rlm_sandbox.rlm.aio import AsyncRLM
        from rlm_sandbox.rlm.run_setup import new_run_id

        if not task or not task.strip():
            raise ConfigError("`task` is empty", hint="say what to find or compute over the input")
        if (path is None) == (text is None):
            raise ConfigError(
                "give exactly one of `path` (a file or directory) and `text` (the input itself)",
                hint=f"`path` may name files under: {self.allowed.describe()}",
            )
        if text is not None and not text:
            raise ConfigError("`text` is empty: there is nothing to search")
        run_id = new_run_id("mcp")
        config = self.config_for(depth, run_id)
        arlm = AsyncRLM(model=self.model, sub_model=self.sub_model, config=config, api_key=self.api_key)
        if text is not None:
            return await run_cancellable(arlm, text, task, run_id, listener, self.runs)
        real = self.allowed.check(path or "")
        inputs = await anyio.to_thread.run_sync(_open_inputs, real)
        try:
            from rlm_sandbox.inputs import checked_inputs

            context = await anyio.to_thread.run_sync(checked_inputs, inputs)
            return await run_cancellable(arlm, context, task, run_id, listener, self.runs)
        finally:
            inputs.close()

    async def stop_all(self) -> None:
        """Cancel every run in flight and wait (at most :data:`STOP_WAIT_S`) until they have
        ended, their containers removed: what a server does before it exits on a signal."""
        runs = list(self.runs)
        for run in runs:
            run.cancel()
        if runs:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(runs, timeout=STOP_WAIT_S)


def _open_inputs(real: Path) -> Any:
    """What ``run -i PATH`` makes of the path: an :class:`~rlm_sandbox.inputs.InputSet`."""
    from rlm_sandbox.inputs import collect_inputs

    return collect_inputs([os.fspath(real)])


async def run_cancellable(
    arlm: Any, context: Any, task: str, run_id: str, listener: Any, runs: set[asyncio.Future[Any]]
) -> Any:
    """``await arlm.run(...)`` in a task of its own (kept in ``runs`` while it lives); if
    this call is cancelled, the run is cancelled and waited for (shielded, at most
    :data:`STOP_WAIT_S`) before the cancellation goes on, so its containers are gone when
    the call ends."""
    run = asyncio.ensure_future(arlm.run(context, task=task, run_id=run_id, listeners=[listener]))
    runs.add(run)
    run.add_done_callback(runs.discard)
    try:
        return await asyncio.shield(run)
    except BaseException:
        run.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_WAIT_S):
            await asyncio.wait({run})
        if run.done() and not run.cancelled():
            run.exception()  # retrieved: the caller's cancellation is what goes on
        raise
