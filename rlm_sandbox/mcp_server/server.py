"""The MCP server: one tool, ``rlm_query``, on stdio, with the official ``mcp`` SDK.

Agents (coding assistants, agent frameworks) want "answer this over that huge file" as a
tool; this is it. The tool's schema says what the server allows (the deepest ``depth``, the
directories ``path`` may name), so an agent can see its limits before it calls.

stdout is the protocol and nothing else: the SDK's stdio transport points file descriptor 1
at stderr while it serves (a stray ``print`` of any library lands there), the SDK's own
logging goes to stderr, and a run here has no live view. Errors never take the server down:
a refused argument or a failed run is a tool result with ``isError`` and a message the agent
can read; anything unexpected is logged on stderr and answered the same way.

(No ``from __future__ import annotations`` here: the SDK reads the tool's annotations at
registration, and the ``depth`` bound is a value of the enclosing function.)
"""

import os
import signal
import sys
import traceback
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from rlm_sandbox.errors import RLMSandboxError
from rlm_sandbox.mcp_server.progress import ProgressListener
from rlm_sandbox.mcp_server.results import QueryAnswer, answer_of, render
from rlm_sandbox.mcp_server.service import QueryService

INSTRUCTIONS = (
    "rlm_query answers a question over an input far larger than your context window (a big log, "
    "a dump, a directory of files) with a Recursive Language Model: a model writes Python to "
    "inspect and split the input and calls models on the pieces; the code runs in sandboxed "
    "containers. Give the input as `path` (a file or directory this server may read) or `text`."
)


def build_server(service: QueryService, *, debug: bool = False) -> MCPServer:
    """An :class:`MCPServer` whose ``rlm_query`` tool runs on ``service``."""
    server = MCPServer(
        name="rlm-sandbox",
        instructions=INSTRUCTIONS,
        version=_version(),
        log_level="DEBUG" if debug else "WARNING",
    )
    max_depth = service.max_depth
    where = service.allowed.describe()

    async def rlm_query(
        ctx: Context,
        task: Annotated[str, Field(description="what to find or compute over the input")],
        path: Annotated[
            str | None,
            Field(description=f"a file or directory to answer over; only under: {where}"),
        ] = None,
        text: Annotated[
            str | None, Field(description="the input itself, when it is not a file (give path or text)")
        ] = None,
        depth: Annotated[
            int | None,
            Field(
                description=f"levels of RLM recursion, 1 to {max_depth} (default {max_depth})",
                # Published, and checked by the service with a message that names the limit.
                json_schema_extra={"minimum": 1, "maximum": max_depth},
            ),
        ] = None,
    ) -> Annotated[CallToolResult, QueryAnswer]:
        listener = ProgressListener(ctx.report_progress)
        try:
            result = await service.query(task, path, text, depth, listener)
        except RLMSandboxError as exc:
            raise ToolError(str(exc)) from None
        except Exception as exc:  # a bug of ours: said, never a crash of the server
            traceback.print_exc(file=sys.stderr)
            raise ToolError(f"unexpected {type(exc).__name__}: {exc}") from None
        answer = answer_of(result)
        return CallToolResult(
            content=[TextContent(type="text", text=render(answer))],
            structured_content=answer.model_dump(mode="json"),
            is_error=answer.status != "ok",
        )

    server.add_tool(
        rlm_query,
        name="rlm_query",
        title="Answer a question over a large input (Recursive Language Model)",
        description=(
            f"Answer `task` over a large input with a Recursive Language Model whose code runs in "
            f"sandboxed containers. Give exactly one of `path` (a file or directory; readable: {where}) "
            f"or `text`. Returns the answer, the status and the cost; a run that did not answer "
            f"(a budget ran out, a model error) is an error result that says why."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True, idempotent_hint=False),
    )
    return server


async def serve_stdio(server: MCPServer, service: QueryService) -> None:
    """Serve until the client closes stdin (the calls in flight are cancelled as the SDK
    ends them) or until SIGTERM/SIGINT. On a signal the transport's reader may be blocked on
    a stdin that never closes, so the runs in flight are cancelled and waited for here
    (their containers removed), then the process exits 0 at once."""
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _sig in signals:
                    await service.stop_all()
                    _exit_now()

        tg.start_soon(stop_on_signal)
        await server.run_stdio_async()
        tg.cancel_scope.cancel()


def _exit_now() -> None:
    """Leave without waiting for the transport's threads; whatever container is still
    registered (none, after ``stop_all``) is removed first, as ``atexit`` would."""
    try:
        from rlm_sandbox.sandbox.registry import live

        live.remove_all()
    finally:
        sys.stderr.flush()
        os._exit(0)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rlm-sandbox")
    except PackageNotFoundError:
        return "0"
