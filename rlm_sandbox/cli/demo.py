"""``rlm-sandbox demo``: a real run (real containers, the real HTTP path) on a generated log,
against a scripted model served on 127.0.0.1, so it needs no key."""

from __future__ import annotations

import sys
from typing import Any

import click

from rlm_sandbox.cli.execute import execute
from rlm_sandbox.cli.options import MODEL_FLAGS, budget_options, setting_options
from rlm_sandbox.cli.output import fail, parse_size
from rlm_sandbox.errors import RLMSandboxError


@click.command("demo")
@setting_options(*MODEL_FLAGS, help={"model": "use this model instead of the built-in scripted one"})
@click.option("--size", default="4m", show_default=True, help="size of the generated log (e.g. 4m, 100m)")
@click.option(
    "--task", "task_kind", type=click.Choice(["count", "search"]), default="count", show_default=True
)
@click.option("--latency", type=float, default=0.0, help="simulated latency of the scripted model, seconds")
@budget_options
def demo(
    model: str | None, sub_model: str | None, size: str, task_kind: str, latency: float, **o: Any
) -> None:
    """A real RLM run (real containers, the real model HTTP path) on a built-in generated log.

    With no --model it serves a scripted model on 127.0.0.1, so no key is needed.
    """
    import tempfile
    from pathlib import Path

    from rlm_sandbox.cli.execute import private_trace_path
    from rlm_sandbox.testing import ScriptedModelServer, generate_log

    if o["settings"].origin("depth") == "default":
        o["depth"] = 2
    if not o["trace_path"]:
        o["trace_path"] = private_trace_path("demo")
    err_echo = lambda m: click.echo(m, err=True)  # noqa: E731
    path = Path(tempfile.gettempdir()) / f"rlm-sandbox-demo-{size}.log"
    stats = generate_log(path, parse_size(size), seed=7)
    task = 'How many lines contain "ERROR disk"?' if task_kind == "count" else "What is the secret code?"
    truth = str(stats.disk_errors) if task_kind == "count" else (stats.needle or "").split()[-1]
    err_echo(f"demo: {stats.size_bytes / 1e6:.1f} MB log, {stats.lines} lines at {path}")
    err_echo(f"demo: task: {task}  (the true answer is {truth})")
    try:
        if model:
            code = execute(model, sub_model, task, path, o)
        else:
            with ScriptedModelServer(latency_s=latency) as server:
                o["api_base"] = server.url
                err_echo(f"demo: no --model given: a scripted model is served at {server.url}")
                code = execute(server.model_name, None, task, path, o, api_key="sk-scripted-local")
    except RLMSandboxError as exc:
        fail(exc, o["debug"])
    sys.exit(code)
