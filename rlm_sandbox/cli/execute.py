"""What ``run`` and ``demo`` share: options -> RLMConfig -> a run -> output.

Only the answer (or, with ``--json``, one JSON object) goes to stdout; everything a person
reads while waiting goes to stderr. The exit code is the outcome's, from
:data:`rlm_sandbox.errors.EXIT_CODES`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any

import click

from rlm_sandbox.cli.github import commands_stopped as github_commands_stopped
from rlm_sandbox.cli.output import console, fast_exit, use_live_view
from rlm_sandbox.errors import EXIT_CODES
from rlm_sandbox.rlm.result import RLMResult
from rlm_sandbox.safe_text import json_text, line, text, visible, write_answer


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
    run_id: str | None = None,
) -> int:
    """Run once and report; returns the exit code."""
    err = console(stderr=True)
    config = build_config(o)
    note_project_api_base(config, o.get("settings"))
    note_project_lm_cache(config, o.get("settings"))
    if config.sandbox.backend == "local":
        err.print(
            "[bold red]warning:[/] --backend local runs model-written code on this machine with NO "
            "sandbox: no container, your user's rights, your network and files"
        )
    github = o.get("format") == "github" and not o["as_json"]
    with github_commands_stopped() if github else nullcontext():
        # The input's warnings (skipped files, bytes) are the run's: warning_printer says them.
        code = _build_and_run(model, sub_model, task, context, o, err, config, api_key, tools, output, run_id)
    result = code if isinstance(code, RLMResult) else None
    if result is None:
        return int(code)
    if github:
        _github_report(result, context, task, err)
    fast_exit(result.exit_code)
    return result.exit_code


def _build_and_run(
    model: str,
    sub_model: str | None,
    task: str,
    context: Any,
    o: dict[str, Any],
    err: Any,
    config: Any,
    api_key: str | None,
    tools: dict[str, Any] | None,
    output: Any,
    run_id: str | None,
) -> RLMResult | int:
    from rlm_sandbox.rlm.api import RLM
    from rlm_sandbox.trace.view import TraceView, warning_printer

    rlm = RLM(model=model, sub_model=sub_model, config=config, api_key=api_key, tools=tools)
    if tools:
        err.print(
            line(
                ("note:", "yellow"),
                f" tools {', '.join(sorted(tools))} run on this machine, with your rights",
            )
        )
    rlm.listeners.append(warning_printer(err))  # in every mode, --json too: stderr is free
    live = None
    if not o["as_json"] and use_live_view(err):
        from rlm_sandbox.trace.live import LiveTree

        live = LiveTree(err, verbose=o["verbose"])
        rlm.listeners.append(live.on_event)
    elif o["verbose"]:
        rlm.listeners.append(TraceView(err).on_event)
    elif not o["as_json"]:
        rlm.listeners.append(TraceView(err, quiet=True).on_event)
    return _run_and_report(rlm, err, live, context, task, output, o, run_id)


def _run_and_report(
    rlm: Any, err: Any, live: Any, context: Any, task: str, output: Any, o: dict[str, Any], run_id: str | None
) -> RLMResult | int:
    """Run, then print the answer, its citations and the outcome; the result (or the exit
    code of an interrupted run)."""
    try:
        if live is not None:
            with live:
                result = rlm.run(context=context, task=task, output=output, run_id=run_id)
        else:
            result = rlm.run(context=context, task=task, output=output, run_id=run_id)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: the run was stopped and every container removed")
        if o["as_json"]:
            click.echo(json.dumps({"answer": None, "status": "error", "error": "interrupted"}))
        return EXIT_CODES["interrupted"]
    if o["as_json"]:
        click.echo(json_text(result.to_json()))
    elif result.ok:
        write_answer(result.answer)
        _print_citations(result, err)
    report_failure(err, result)
    if not o["as_json"]:
        toks = result.tokens["prompt"] + result.tokens["completion"]
        err.print(
            text(
                f"{result.status} in {result.wall_s:.2f} s: {result.steps} steps, {result.lm_calls} LM calls, "
                f"{toks} tokens, ${result.cost_usd:.4f}, {result.nodes} nodes, {result.containers} containers"
                + (f", {result.lm_cache_hits} answered from the cache" if result.lm_cache_hits else "")
                + (f"; trace: {result.trace}" if result.trace else ""),
                "dim",
            )
        )
    return result


#: Citations printed under the answer; all of them are in --json.
CITATIONS_SHOWN = 50


def _print_citations(result: Any, err: Any) -> None:
    """Under the answer, ``file:line: text`` for each verified citation (the line as it is
    in the input, read on this host); refused ones on stderr with the reason."""
    from rlm_sandbox.cli.github import printable

    shown = 0
    for c in result.citations:
        where = f"{printable(c.file or '<context>', 300)}:{c.line}"
        if c.verified:
            if shown < CITATIONS_SHOWN:
                click.echo(f"{where}: {printable(c.text or '', 300)}")
            shown += 1
        else:
            err.print(
                line(("citation refused", "yellow"), f" {where}: {printable(c.reason or '', 300)}"),
                soft_wrap=True,
            )
    if shown > CITATIONS_SHOWN:
        err.print(text(f"... and {shown - CITATIONS_SHOWN} more verified citations (see --json)", "dim"))


def _github_report(result: Any, context: Any, task: str, err: Any) -> None:
    """The citations as workflow annotations (commands are back on), the step summary."""
    from rlm_sandbox.cli.github import annotations, append_summary

    for command in annotations(result.citations, context, result.warnings):
        click.echo(command)
    if not result.ok:
        from rlm_sandbox.cli.github import annotation, printable

        click.echo(annotation("error", printable(f"{result.status}: {result.error}", 1000)))
    try:
        path = append_summary(task, result)
    except OSError as exc:
        err.print(line(("warning:", "yellow"), f" could not write the step summary: {exc}"))
        return
    if path:
        err.print(text(f"summary appended to {path}", "dim"))


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


def note_project_lm_cache(config: Any, loaded: Any) -> None:
    """A project file's ``lm_cache`` applies only when the user trusts that file; even then,
    say so: the cache stores the prompts (slices of the input) and its entries answer the
    model's requests, so whoever owns that directory reads the one and can plant the other."""
    origin = loaded.origin("lm_cache") if loaded is not None else "default"
    if config.lm_cache and origin.startswith("project file"):
        click.echo(
            f"note: the model-response cache {visible(config.lm_cache)!r} comes from the trusted "
            f"{origin}; it stores your prompts, and its entries answer the model's requests",
            err=True,
        )


def default_trace(command: str, kind: str = "run") -> tuple[str, str]:
    """``(run id, trace path)`` for a command that writes a trace unasked (demo, chat,
    replay): a new file named by the run id in the user's private trace directory, said on
    stderr so the user knows where their data went."""
    from rlm_sandbox.rlm.run_setup import new_run_id
    from rlm_sandbox.safe_text import visible
    from rlm_sandbox.trace.writer import default_trace_path

    run_id = new_run_id(kind)
    path = default_trace_path(command, run_id)
    click.echo(f"{command}: the trace goes to {visible(str(path))}", err=True)
    return run_id, str(path)
