"""``rlm-sandbox mcp``: serve ``rlm_query`` to an MCP client (Claude Code, Claude Desktop, any
agent framework) on stdio.

The same settings as ``run`` (flags, ``RLM_SANDBOX_*``, ``rlm-sandbox.toml`` with the
project-trust rules), fixed for the server's life; a call may only ask for a shallower
depth. ``--allow-dir`` names the directories a call's ``path`` may read (none: only
``text``). Everything a person reads (notes, errors) goes to stderr: stdout is the protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rlm_sandbox.cli.options import MODEL_FLAGS, RUN_FLAGS, resolve_settings, setting_options, trust_option
from rlm_sandbox.cli.output import fail
from rlm_sandbox.errors import ConfigError, RLMSandboxError

#: Every run setting but ``--trace``: one fixed file cannot hold many runs (see --trace-dir).
MCP_FLAGS = tuple(n for n in RUN_FLAGS if n != "trace")


@click.command("mcp")
@setting_options(*MODEL_FLAGS, *MCP_FLAGS)
@click.option(
    "--allow-dir",
    "allow_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="a directory whose files a call's `path` may name (repeatable; symlinks followed, "
    "'..' refused); none: only `text` inputs",
)
@click.option(
    "--trace-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="write each call's trace here, one file per run (default: your private trace directory)",
)
@click.option("--no-trace", is_flag=True, help="write no trace files")
@trust_option
@click.option("--debug", is_flag=True, help="show tracebacks and the SDK's debug log (on stderr)")
def mcp(
    model: str | None,
    sub_model: str | None,
    allow_dirs: tuple[str, ...],
    trace_dir: str | None,
    no_trace: bool,
    debug: bool,
    **o: Any,
) -> None:
    """Serve the rlm_query tool to an MCP client on stdio (see README: MCP server)."""
    o["model"], o["sub_model"] = model, sub_model
    try:
        o["settings"] = resolve_settings(click.get_current_context(), o)
        model, sub_model = o.pop("model"), o.pop("sub_model")
        if not model:
            raise ConfigError(
                "no model: give --model (or set model in rlm-sandbox.toml, or RLM_SANDBOX_MODEL)",
                hint="e.g. rlm-sandbox mcp --model openai/gpt-4o-mini --allow-dir .",
            )
        service = _service(model, sub_model, allow_dirs, trace_dir, no_trace, o)
    except RLMSandboxError as exc:
        fail(exc, debug)
    _serve(service, debug)


def _service(
    model: str,
    sub_model: str | None,
    allow_dirs: tuple[str, ...],
    trace_dir: str | None,
    no_trace: bool,
    o: dict[str, Any],
) -> Any:
    from rlm_sandbox.cli.execute import build_config, note_project_api_base, note_project_lm_cache
    from rlm_sandbox.mcp_server.paths import AllowedDirs
    from rlm_sandbox.mcp_server.service import QueryService

    if trace_dir and no_trace:
        raise ConfigError("--trace-dir and --no-trace contradict each other")
    config = build_config(o)
    note_project_api_base(config, o.get("settings"))
    note_project_lm_cache(config, o.get("settings"))
    traces = None
    if not no_trace:
        from rlm_sandbox.trace.writer import trace_dir as default_dir
        from rlm_sandbox.user_dirs import private_dir

        traces = private_dir(Path(trace_dir), what="trace") if trace_dir else default_dir()
    allowed = AllowedDirs(allow_dirs)
    click.echo(
        f"rlm-sandbox mcp: serving rlm_query on stdio (model {model}, depth {config.depth}; "
        f"readable: {allowed.describe()}; traces: {traces or 'none'})",
        err=True,
    )
    return QueryService(model=model, sub_model=sub_model, config=config, allowed=allowed, trace_dir=traces)


def _serve(service: Any, debug: bool) -> None:
    import anyio

    from rlm_sandbox.mcp_server.server import build_server, serve_stdio

    anyio.run(serve_stdio, build_server(service, debug=debug), service)
