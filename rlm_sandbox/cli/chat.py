"""``rlm-sandbox chat``: several questions over one input, one container and one REPL.

Standard input is the conversation: one question per line. What is not a question (``/help``,
``/cost``, ``/trace``, ``/quit``, ``exit``, ``quit``, end of input) is handled here and never
sent to the model, so it costs nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from rlm_sandbox.cli.execute import build_config, note_project_api_base, report_failure
from rlm_sandbox.cli.options import MODEL_FLAGS, budget_options, setting_options
from rlm_sandbox.cli.output import console, fail, use_live_view
from rlm_sandbox.errors import ConfigError, RLMSandboxError
from rlm_sandbox.safe_text import json_text, text, write_answer

QUIT = frozenset({"/quit", "/exit", "exit", "quit"})
HELP = (
    "commands (handled here, never sent to the model):\n"
    "  /help          this list\n"
    "  /cost          what the session has used so far\n"
    "  /trace         where the session's trace is\n"
    "  /quit, /exit, exit, quit, Ctrl-D   end the session (its container is removed)\n"
    "anything else is a question about the input; the REPL and its variables carry over"
)


@click.command("chat")
@setting_options(*MODEL_FLAGS)
@click.option(
    "-i",
    "--input",
    "input_paths",
    multiple=True,
    required=True,
    help="the input file the questions are about (not '-': standard input is the conversation)",
)
@budget_options
def chat(model: str | None, sub_model: str | None, input_paths: tuple[str, ...], **o: Any) -> None:
    """Ask questions about one input, one per line; the REPL carries over between them.

    Commands: /help, /cost (what the session has used), /trace (where the trace is), /quit
    (or exit, quit, Ctrl-D). They are answered here and never sent to the model.
    """
    from rlm_sandbox.cli.execute import default_trace
    from rlm_sandbox.input_check import only_one_input
    from rlm_sandbox.inputs import open_input
    from rlm_sandbox.rlm.api import RLM
    from rlm_sandbox.trace.view import warning_printer

    if not model:
        raise click.UsageError(
            "Missing option '--model' (or set model in rlm-sandbox.toml, or RLM_SANDBOX_MODEL)."
        )
    err = console(stderr=True)
    try:
        input_path = only_one_input(input_paths)
        if input_path == "-":
            raise ConfigError(
                "chat reads its questions from standard input, so the input cannot come from there too",
                hint="save the input to a file and give it with -i FILE",
            )
        context = open_input(input_path)
        run_id = None
        if not o["trace_path"]:
            run_id, o["trace_path"] = default_trace("chat", "session")
        config = build_config(o)
        note_project_api_base(config, o.get("settings"))
        rlm = RLM(model=model, sub_model=sub_model, config=config)
        rlm.listeners.append(warning_printer(err))
        live = None
        if use_live_view(err) and not o["as_json"]:
            from rlm_sandbox.trace.live import LiveTree

            live = LiveTree(err, verbose=o["verbose"])
            rlm.listeners.append(live.on_event)
        interactive = sys.stdin.isatty()
        with rlm.session(context=context, run_id=run_id) as session:
            err.print(text(banner(input_path or "", context)), highlight=False)
            while True:
                if interactive:
                    err.print("[bold]?[/] ", end="")
                line = sys.stdin.readline()
                if not line:  # end of input (Ctrl-D)
                    if interactive:
                        err.print()
                    break
                question = line.strip()
                if not question:
                    continue
                local = _local_command(question, session, config.trace, err)
                if local == "quit":
                    break
                if local == "done":
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
    err.print(text(f"session ended; trace: {config.trace}", "dim"), highlight=False)


def _local_command(question: str, session: Any, trace: Any, err: Any) -> str | None:
    """A line answered here, never sent to the model: ``"quit"``, ``"done"`` (a command was
    answered), or None for a question."""
    command = question.lower()
    if command in QUIT:
        return "quit"
    if command == "/help":
        err.print(text(HELP), highlight=False)
        return "done"
    if command == "/cost":
        t = session.totals()
        toks = t["tokens"]["prompt"] + t["tokens"]["completion"]
        click.echo(
            f"{t['questions']} questions, {t['lm_calls']} LM calls, {toks} tokens, "
            f"${t['cost_usd']:.4f}, {t['nodes']} nodes"
        )
        return "done"
    if command == "/trace":
        write_answer(trace)
        return "done"
    if _looks_like_a_command(question):
        err.print(text(f"unknown command {question}: /help lists them (nothing was sent)"), highlight=False)
        return "done"
    return None


def banner(name: str, context: Any) -> str:
    """What the session holds and how to leave, said once at the start (on stderr)."""
    import os

    from rlm_sandbox.input_check import BinaryInput

    source = context.source if isinstance(context, BinaryInput) else context
    size = os.path.getsize(source) if isinstance(source, os.PathLike) else None
    held = f"{name} ({_size(size)})" if size is not None else name
    if isinstance(context, BinaryInput):
        held += ", as bytes"
    return (
        f"chat over {held}, loaded once into one sandbox; one question per line. "
        "/help lists the commands; /quit, exit or Ctrl-D ends the session."
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _looks_like_a_command(line: str) -> bool:
    """``/word``: a command this chat does not know, not a question (``/var/log/x?`` is one)."""
    return line.startswith("/") and line[1:].isalpha()
