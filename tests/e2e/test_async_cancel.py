"""Cancelling the asyncio task that awaits a run, with real containers: the cell is
interrupted, every container is gone within 2 s, the trace ends ``cancelled``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rlm_sandbox.rlm.aio import AsyncRLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.sandbox.config import SandboxConfig

from ..conftest import containers_of
from ..helpers import cells_then_final

pytestmark = pytest.mark.docker


def test_cancelling_the_awaiting_task_mid_cell_removes_the_container_within_2_s(
    scripted, run_id: str
) -> None:
    server = scripted(cells_then_final("import time\ntime.sleep(300)"))
    config = RLMConfig(api_base=server.url, sandbox=SandboxConfig(cell_timeout=600))
    arlm = AsyncRLM(model=server.model_name, config=config, api_key=server.api_key)
    events: list[dict[str, Any]] = []

    async def listener(event: dict[str, Any]) -> None:
        events.append(event)

    async def main() -> float:
        task = asyncio.ensure_future(
            arlm.run("some input", task="Wait.", run_id=run_id, listeners=[listener])
        )
        while not any(e["event"] == "cell_start" for e in events):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the cell is sleeping now
        assert containers_of(run_id)
        asked = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return asked

    asked = asyncio.run(main())
    while containers_of(run_id):
        assert time.monotonic() - asked < 2.0, "the run's container outlived its cancellation by 2 s"
        time.sleep(0.02)
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "cancelled"
