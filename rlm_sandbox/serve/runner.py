"""A run's life in the service: an :class:`~rlm_sandbox.rlm.aio.AsyncRLM` run whose async
listener feeds the run's record, its outcome as ``run --json`` has it, its spool removed.

Only the public asyncio API is used: ``await AsyncRLM(...).run(...)``, cancelled by
cancelling the task that awaits it (the engine then removes the run's containers and ends
its trace with ``status: cancelled``). Model keys are never passed: the model clients read
them from the service's own environment, so a client never sends or sees one.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import anyio

from rlm_sandbox.errors import RLMSandboxError
from rlm_sandbox.rlm.aio import AsyncRLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.serve.records import RunRecord, outcome_of_error


class Runner:
    """Makes the job (see :class:`~rlm_sandbox.serve.registry.Registry`) of one run."""

    def __init__(self, model: str, sub_model: str | None) -> None:
        self.model = model
        self.sub_model = sub_model

    def job(self, context: Any, config: RLMConfig, spool: Path | None = None) -> Any:
        async def run(record: RunRecord) -> None:
            try:
                outcome = await self._outcome(record, context, config)
            finally:  # before the run is seen to end: an ended run has left nothing behind
                if spool is not None:
                    await anyio.to_thread.run_sync(lambda: shutil.rmtree(spool, ignore_errors=True))
            record.finish(outcome)

        return run

    async def _outcome(self, record: RunRecord, context: Any, config: RLMConfig) -> dict[str, Any]:
        arlm = AsyncRLM(model=self.model, sub_model=self.sub_model, config=config)
        try:
            result = await arlm.run(context, task=record.task, run_id=record.id, listeners=[record.on_event])
        except asyncio.CancelledError:
            return record.ended("cancelled", record.cancel_reason or "the run was cancelled")
        except RLMSandboxError as exc:
            return outcome_of_error(exc.status, exc.message, exc.hint or None)
        except Exception as exc:  # a bug of ours: the run says so, the service goes on
            return outcome_of_error("error", f"unexpected {type(exc).__name__}: {exc}")
        return result.to_json()
