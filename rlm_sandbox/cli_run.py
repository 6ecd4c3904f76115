"""``rlm-sandbox run`` and ``rlm-sandbox demo``: options -> RLMConfig -> a run -> output.

Only the answer (or, with ``--json``, one JSON object) goes to stdout; everything a person
reads while waiting goes to stderr. Exit codes: 0 answered, 2 usage, 3 budget, 4 sandbox,
5 model.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from rlm_sandbox.errors import ConfigError, RLMSandboxError


def budget_options(f: Callable) -> Callable:
    opts = [
        click.option(
            "--max-steps", type=click.IntRange(1, 1000), default=12, show_default=True, help="steps per node"
        ),
        click.option(
            "--depth",
            "--max-depth",
            "depth",
            type=click.IntRange(1, 16),
            default=1,
            show_default=True,
            help="levels of RLM nodes (1 = the paper's setting)",
        ),
        click.option(
            "--max-lm-calls",
            type=click.IntRange(1),
            default=500,
            show_default=True,
            help="model calls, whole run",
        ),
        click.option(
            "--max-tokens",
            type=click.IntRange(1),
            default=None,
            help="tokens (prompt + completion), whole run",
        ),
        click.option(
            "--max-cost", type=click.FloatRange(min=0, min_open=True), default=None, help="USD, whole run"
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=1800,
            show_default=True,
            help="wall-time budget, seconds",
        ),
        click.option(
            "--max-containers",
            type=click.IntRange(1),
            default=16,
            show_default=True,
            help="containers alive at once",
        ),
        click.option(
            "--max-concurrency",
            type=click.IntRange(1),
            default=16,
            show_default=True,
            help="sub-calls in flight per node",
        ),
        click.option(
            "--cell-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=60,
            show_default=True,
            help="seconds per cell",
        ),
        click.option("--memory", default="1g", show_default=True, help="memory limit per container"),
        click.option("--runtime", default=None, help="container runtime, e.g. runsc (gVisor)"),
        click.option(
            "--tenant", default="default", show_default=True, help="tenant label for containers and trace"
        ),
        click.option("--api-base", default=None, help="OpenAI-compatible server URL"),
        click.option(
            "--trace",
            "trace_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="write the trace (JSON lines)",
        ),
        click.option("-v", "--verbose", is_flag=True, help="show the trace as it happens"),
        click.option(
            "--json", "as_json", is_flag=True, help="print one JSON object on stdout and nothing else"
        ),
        click.option("--debug", is_flag=True, help="show tracebacks"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_config(o: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from rlm_sandbox.config import SandboxConfig
    from rlm_sandbox.rlm import RLMConfig

    try:
        sandbox = SandboxConfig(
            cell_timeout=o["cell_timeout"], memory=o["memory"], runtime=o["runtime"], tenant=o["tenant"]
        )
        return RLMConfig(
            max_steps=o["max_steps"],
            depth=o["depth"],
            max_lm_calls=o["max_lm_calls"],
            max_tokens=o["max_tokens"],
            max_cost=o["max_cost"],
            timeout=o["timeout"],
            max_containers=o["max_containers"],
            max_concurrency=o["max_concurrency"],
            api_base=o["api_base"],
            tenant=o["tenant"],
            trace=o["trace_path"],
            sandbox=sandbox,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def execute(
    model: str, sub_model: str | None, task: str, context: Any, o: dict[str, Any], api_key: str | None = None
) -> int:
    """Run once and report; returns the exit code."""
    from rich.console import Console

    from rlm_sandbox.rlm import RLM
    from rlm_sandbox.view import TraceView

    err = Console(stderr=True)
    config = build_config(o)
    rlm = RLM(model=model, sub_model=sub_model, config=config, api_key=api_key)
    live = None
    if not o["as_json"] and use_live_view(err):
        from rlm_sandbox.live import LiveTree

        live = LiveTree(err, verbose=o["verbose"])
        rlm.listeners.append(live.on_event)
    elif o["verbose"]:
        rlm.listeners.append(TraceView(err).on_event)
    elif not o["as_json"]:
        rlm.listeners.append(TraceView(err, quiet=True).on_event)
    try:
        if live is not None:
            with live:
                result = rlm.run(context=context, task=task)
        else:
            result = rlm.run(context=context, task=task)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: the run was stopped and every container removed")
        if o["as_json"]:
            click.echo(json.dumps({"answer": None, "status": "error", "error": "interrupted"}))
        return 130
    if o["as_json"]:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
    elif result.ok:
        click.echo(result.answer)
    if not result.ok:
        label = result.status + (f" ({result.budget})" if result.budget else "")
        err.print(f"[red]{label}[/]: {result.error}")
        if result.hint:
            err.print(f"hint: {result.hint}")
    if not o["as_json"]:
        toks = result.tokens["prompt"] + result.tokens["completion"]
        err.print(
            f"[dim]{result.status} in {result.wall_s:.2f} s: {result.steps} steps, {result.lm_calls} LM calls, "
            f"{toks} tokens, ${result.cost_usd:.4f}, {result.nodes} nodes, {result.containers} containers"
            + (f"; trace: {result.trace}" if result.trace else "")
            + "[/]"
        )
    fast_exit(result.exit_code)
    return result.exit_code


def use_live_view(err: Any) -> bool:
    """The live tree redraws in place: only for a person at a terminal, never into a pipe or
    a log file (``RLM_SANDBOX_NO_LIVE=1`` turns it off, e.g. for screen readers)."""
    if os.environ.get("RLM_SANDBOX_NO_LIVE", "") not in ("", "0"):
        return False
    try:
        return sys.stdout.isatty() and err.is_terminal
    except (AttributeError, ValueError):
        return False


def fast_exit(code: int) -> None:
    """End a finished CLI run at once: everything is written and every container removed.

    Python's normal shutdown with LiteLLM loaded takes most of a second here (thousands of
    modules to finalise); a user waiting on ``rlm-sandbox run`` gains nothing from it. Only
    used on a real process's stdout, never inside click's test runner.
    """
    try:
        sys.stdout.fileno()
        sys.stdout.flush()
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        return
    from rlm_sandbox.sandbox.registry import live

    live.remove_all()
    os._exit(code)


def fail(exc: RLMSandboxError, debug: bool) -> None:
    """Print a typed error as a person can act on it and exit with its code."""
    from rlm_sandbox.errors import BudgetExhausted, LMError, SandboxError

    if debug:
        import traceback

        traceback.print_exc()
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    code = (
        2
        if isinstance(exc, ConfigError)
        else 3
        if isinstance(exc, BudgetExhausted)
        else 4
        if isinstance(exc, SandboxError)
        else 5
        if isinstance(exc, LMError)
        else 1
    )
    sys.exit(code)
