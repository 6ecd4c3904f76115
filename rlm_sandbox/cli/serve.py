"""``rlm-sandbox serve``: runs over HTTP for several tenants (see :mod:`rlm_sandbox.serve`).

Configured like ``run`` (flags, ``RLM_SANDBOX_*``, ``rlm-sandbox.toml``); the tenants and
their tokens come only from the operator's own settings (the user's file, the environment,
or ``--config FILE``), never from a project file in the working directory. Model keys stay
in this process's environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rlm_sandbox.cli.options import (
    FLAGS,
    MODEL_FLAGS,
    announce_ignored,
    resolve_settings,
    setting_options,
    trust_option,
)
from rlm_sandbox.cli.output import fail
from rlm_sandbox.errors import RLMSandboxError

#: Settings of ``run`` that mean nothing to a service (it keeps each run's trace itself,
#: its tenants come from their bearer tokens, a response cache would be shared by tenants).
NOT_FOR_SERVE = ("tenant", "trace", "lm_cache", "lm_cache_max_bytes")
SERVE_FLAGS = tuple(n for n in FLAGS if n not in MODEL_FLAGS and n not in NOT_FOR_SERVE)


@click.command("serve")
@setting_options(*MODEL_FLAGS, *SERVE_FLAGS)
@trust_option
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="port (0: any free one)"
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="a settings file read in place of your user file (tenants and tokens may come from it)",
)
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(0, 86_400),
    default=None,
    help="seconds running runs get to finish after SIGTERM  [default: serve_grace_s, 30]",
)
@click.option("--debug", is_flag=True, help="show tracebacks")
def serve(
    host: str, port: int, config_file: Path | None, grace_s: float | None, debug: bool, **o: Any
) -> None:
    """Serve runs over HTTP: /v1/runs, /v1/chat/completions (OpenAI-compatible), /healthz, /metrics.

    Each [tenants.NAME] table with a token_sha256 is a client: it sends Authorization:
    Bearer TOKEN. Logs are JSON lines on stderr. SIGTERM stops taking runs, gives running
    ones the grace period, cancels the rest, removes every container and exits 0.
    """
    try:
        loaded = resolve_settings(click.get_current_context(), o, announce=False, config_file=config_file)
        announce_ignored(loaded)
        from rlm_sandbox.serve.config import serve_config
        from rlm_sandbox.serve.server import serve as run_server

        config = serve_config(loaded, host=host, port=port, grace_s=grace_s)
        code = run_server(config)
    except RLMSandboxError as exc:
        fail(exc, debug)
    raise SystemExit(code)
