"""Driving ``rlm-sandbox mcp`` as an MCP client does: the real command in a child process,
the SDK's own stdio client and session, a scripted model on loopback."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from rlm_sandbox.testing import ScriptedModelServer

#: What the server needs from the test's environment besides the SDK's safe defaults.
PASSED_ON = ("DOCKER_HOST", "DOCKER_CONFIG", "RLM_SANDBOX_IMAGE", "RLM_SANDBOX_RUNTIME")


def server_params(
    model: ScriptedModelServer, home: Path, *args: str, env: dict[str, str] | None = None
) -> StdioServerParameters:
    """``rlm-sandbox mcp --model M --api-base URL ARGS`` in ``home`` (its own config, state
    and working directory, so no settings file of the developer's applies)."""
    for sub in ("cwd", "config", "state"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    base = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    base |= {
        "OPENAI_API_KEY": model.api_key,
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
    }
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "rlm_sandbox.cli", "mcp", "--model", model.model_name, "--api-base", model.url, *args],
        env=base | (env or {}),
        cwd=str(home / "cwd"),
    )


@asynccontextmanager
async def session(params: StdioServerParameters, errlog: Any = None) -> AsyncIterator[ClientSession]:
    """An initialised :class:`ClientSession` on the server ``params`` start; the server's
    stderr goes to ``errlog`` (a file), so a failing test can show it."""
    async with (
        stdio_client(params, errlog=errlog or sys.stderr) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


def wait_for(predicate: Any, timeout: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass (an upper bound only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())
