"""``rlm-sandbox chat``: several questions over one input, one container and one REPL."""

from __future__ import annotations

import sys
from typing import Any

import click

from rlm_sandbox.cli.execute import build_config, note_project_api_base, private_trace_path, report_failure
from rlm_sandbox.cli.options import MODEL_FLAGS, budget_options, setting_options
from rlm_sandbox.cli.output import fail, use_live_view
from rlm_sandbox.errors import RLMSandboxError
from rlm_sandbox.safe_text import json_text, text, write_answer


@click.command("chat")
@setting_options(*MODEL_FLAGS)
@click.option("-i", "--input", "input_path", required=True, help="the input file the questions are about")
@budget_options
def chat(model: str | None, sub_model: str | None, input_path: str, **o: Any) -> None:
    """Ask questions about one input, one per line; the REPL carries over between them.

    Commands: /cost (what the session has used), /trace (where the trace is), /quit.
    """

    from rich.console import Console

    from rlm_sandbox.inputs import open_input
    from rlm_sandbox.rlm.api import RLM

    if not model:
        raise click.UsageError(
            "Missing option '--model' (or set model in rlm-sandbox.toml, or RLM_SANDBOX_MODEL)."
        )
    err = Console(stderr=True)
    if not o["trace_path"]:
        o["trace_path"] = private_trace_path("chat")
    config = build_config(o)
    note_project_api_base(config, o.get("settings"))
    rlm = RLM(model=model, sub_model=sub_model, config=config)
    live = None
    if use_live_view(err) and not o["as_json"]:
        from rlm_sandbox.trace.live import LiveTree

        live = LiveTree(err, verbose=o["verbose"])
        rlm.listeners.append(live.on_event)
    interactive = sys.stdin.isatty()
    try:
        with rlm.session(context=open_input(input_path)) as session:
            while True:
                if interactive:
                    err.print("[bold]?[/] ", end="")
                line = sys.stdin.readline()
                if not line or line.strip() == "/quit":
                    break
                question = line.strip()
                if not question:
                    continue
                if question == "/cost":
                    t = session.totals()
                    toks = t["tokens"]["prompt"] + t["tokens"]["completion"]
                    click.echo(
                        f"{t['questions']} questions, {t['lm_calls']} LM calls, {toks} tokens, "
                        f"${t['cost_usd']:.4f}, {t['nodes']} nodes"
                    )
                    continue
                if question == "/trace":
                    write_answer(config.trace)
                    continue
                if live is not None:
                    with live:
                        result = session.ask(question)
                else:
                    result = session.ask(question)
                if o["as_json"]:
                    click.echo(json_text(result.to_json()))
                elif result.ok or result.fallback:
                    write_answer(result.answer)
                report_failure(err, result)
    except RLMSandboxError as exc:
        fail(exc, o["debug"])
    err.print(text(f"session ended; trace: {config.trace}", "dim"))
