"""What ``run`` and ``demo`` share: options -> RLMConfig -> a run -> output.

Only the answer (or, with ``--json``, one JSON object) goes to stdout; everything a person
reads while waiting goes to stderr. The exit code is the outcome's, from
:data:`rlm_sandbox.errors.EXIT_CODES`.
"""

from __future__ import annotations

import json
from typing import Any

import click

from rlm_sandbox.cli.output import fast_exit, use_live_view
from rlm_sandbox.errors import EXIT_CODES
from rlm_sandbox.safe_text import json_text, line, text, write_answer


def build_config(o: dict[str, Any]) -> Any:
    """The run's RLMConfig from the effective values in ``o`` (a command may have changed
    some, as ``demo`` does) and the tenant tables of the settings."""
    from pydantic import ValidationError

    from rlm_sandbox.cli.options import PARAM_TO_FIELD
    from rlm_sandbox.settings import Settings, build_rlm_config, describe_error

    loaded = o.get("settings")
    values = loaded.settings.model_dump() if loaded is not None else Settings.model_construct().model_dump()
    values |= {field: o[param] for param, field in PARAM_TO_FIELD.items() if param in o}
    try:
        config = build_rlm_config(values)
        if o.get("backend", "docker") != "docker":
            # validated, not copied: the local backend refuses what it cannot do (image_packages)
            config.sandbox = type(config.sandbox).model_validate(
                config.sandbox.model_dump() | {"backend": o["backend"]}
            )
        return config
    except ValidationError as exc:
        origin = loaded.origin if loaded is not None else (lambda *_p: "default")
        raise describe_error(exc, origin) from None


def execute(
    model: str,
    sub_model: str | None,
    task: str,
    context: Any,
    o: dict[str, Any],
    api_key: str | None = None,
    *,
    tools: dict[str, Any] | None = None,
    output: Any = None,
) -> int:
    """Run once and report; returns the exit code."""
    from rich.console import Console

    from rlm_sandbox.rlm.api import RLM
    from rlm_sandbox.trace.view import TraceView

    err = Console(stderr=True)
    config = build_config(o)
    note_project_api_base(config, o.get("settings"))
    if config.sandbox.backend == "local":
        err.print(
            "[bold red]warning:[/] --backend local runs model-written code on this machine with NO "
            "sandbox: no container, your user's rights, your network and files"
        )
    rlm = RLM(model=model, sub_model=sub_model, config=config, api_key=api_key, tools=tools)
    if tools:
        err.print(
            line(
                ("note:", "yellow"),
                f" tools {', '.join(sorted(tools))} run on this machine, with your rights",
            )
        )
    live = None
    if not o["as_json"] and use_live_view(err):
        from rlm_sandbox.trace.live import LiveTree

        live = LiveTree(err, verbose=o["verbose"])
        rlm.listeners.append(live.on_event)
    elif o["verbose"]:
        rlm.listeners.append(TraceView(err).on_event)
    elif not o["as_json"]:
        rlm.listeners.append(TraceView(err, quiet=True).on_event)
    try:
        if live is not None:
            with live:
                result = rlm.run(context=context, task=task, output=output)
        else:
            result = rlm.run(context=context, task=task, output=output)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: the run was stopped and every container removed")
        if o["as_json"]:
            click.echo(json.dumps({"answer": None, "status": "error", "error": "interrupted"}))
        return EXIT_CODES["interrupted"]
    if o["as_json"]:
        click.echo(json_text(result.to_json()))
    elif result.ok:
        write_answer(result.answer)
    report_failure(err, result)
    if not o["as_json"]:
        toks = result.tokens["prompt"] + result.tokens["completion"]
        err.print(
            text(
                f"{result.status} in {result.wall_s:.2f} s: {result.steps} steps, {result.lm_calls} LM calls, "
                f"{toks} tokens, ${result.cost_usd:.4f}, {result.nodes} nodes, {result.containers} containers"
                + (f"; trace: {result.trace}" if result.trace else ""),
                "dim",
            )
        )
    fast_exit(result.exit_code)
    return result.exit_code


def report_failure(err: Any, result: Any) -> None:
    """The status, error and hint of a run that did not answer. The error may carry what a
    kernel wrote to its diagnostic stream: shown as text, never as markup or escapes."""
    if result.ok:
        return
    label = result.status + (f" ({result.budget})" if result.budget else "")
    err.print(line((label, "red"), f": {result.error}"), soft_wrap=True)
    if result.hint:
        err.print(line(f"hint: {result.hint}"), soft_wrap=True)


def note_project_api_base(config: Any, loaded: Any) -> None:
    """A project file's ``api_base`` applies only when the user trusts that file; even then,
    say every time that the key goes to a server that file chose."""
    from rlm_sandbox.settings import redact_url

    origin = loaded.origin("api_base") if loaded is not None else "default"
    if config.api_base and origin.startswith("project file"):
        click.echo(
            f"note: the model server {redact_url(config.api_base)!r} comes from the trusted "
            f"{origin}; your provider's API key is sent there",
            err=True,
        )


def private_trace_path(command: str) -> str:
    """Where a command writes its trace when none is given: a new directory only this user
    can enter, so no other user of a shared /tmp can put a file or a link there first."""
    import tempfile
    from pathlib import Path

    return str(Path(tempfile.mkdtemp(prefix=f"rlm-sandbox-{command}-")) / "trace.jsonl")
