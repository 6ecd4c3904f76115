"""The ``rlm-sandbox`` command group: a registry of commands, each imported only when it runs.

``rlm-sandbox --help`` lists the commands from the registry's one-line summaries without
importing any of them, so it stays fast however heavy a command's own imports are (docker,
LiteLLM, pydantic-settings). Whatever goes wrong reaches a person as one line and a hint.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from rlm_sandbox.cli.output import echo_json_error, fail, json_errors, usage_hint
from rlm_sandbox.errors import RLMSandboxError

#: name -> (module, attribute, summary for --help). One line per command; the order is --help's.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("rlm_sandbox.cli.run", "run", "Answer TASK over a large input with a Recursive Language Model."),
    "chat": (
        "rlm_sandbox.cli.chat",
        "chat",
        "Ask questions about one input, one per line; the REPL carries over.",
    ),
    "demo": ("rlm_sandbox.cli.demo", "demo", "A real RLM run on a built-in generated log (no key needed)."),
    "trace": ("rlm_sandbox.cli.trace", "trace_group", "Read a run's trace: tree, cost tables, HTML page."),
    "mcp": (
        "rlm_sandbox.cli.mcp_command",
        "mcp",
        "Serve the rlm_query tool to an MCP client (an agent) on stdio.",
    ),
    "replay": (
        "rlm_sandbox.cli.replay",
        "replay",
        "Run a recorded run again from its recorded model answers.",
    ),
    "serve": (
        "rlm_sandbox.cli.serve",
        "serve",
        "Serve runs over HTTP for several tenants (OpenAI-compatible too).",
    ),
    "config": ("rlm_sandbox.cli.config", "config", "Inspect the settings run/demo would use."),
    "doctor": (
        "rlm_sandbox.cli.doctor",
        "doctor",
        "Check that a run would work here, with a fix for each problem.",
    ),
    "gc": ("rlm_sandbox.cli.gc", "gc", "Remove sandbox containers left behind by controllers that died."),
    "image": ("rlm_sandbox.cli.image", "image", "Build, list and remove the sandbox images."),
}


class CommandRegistry(click.Group):
    """Commands found in :data:`COMMANDS` and imported on use (pip's layout, on click)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        module, attr, _summary = entry
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, summary) for name, (_m, _a, summary) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        """``--json`` anywhere on the line makes every error a JSON object on stdout as well
        (it is known before click parses anything, so click's own usage errors get one too)."""
        argv = list(args) if args is not None else sys.argv[1:]
        json_errors("--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv)
        return super().main(argv, *rest, **kwargs)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.ClickException as exc:
            _click_error_json(exc)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        """Typed errors as one line and a hint, never a traceback, unless asked for one
        (``--debug`` anywhere on the line, or RLM_SANDBOX_DEBUG=1)."""
        debug = "--debug" in sys.argv[1:] or os.environ.get("RLM_SANDBOX_DEBUG", "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as exc:  # a usage error of a subcommand
            _click_error_json(exc)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except RLMSandboxError as exc:
            fail(exc, debug)
        except Exception as exc:
            if debug:
                raise
            from rlm_sandbox.safe_text import visible

            hint = "rerun with --debug for the traceback, and please report it"
            echo_json_error("error", f"unexpected {type(exc).__name__}: {exc}", hint)
            click.echo(f"error: unexpected {type(exc).__name__}: {visible(exc)}", err=True)
            click.echo(f"hint: {hint}", err=True)
            sys.exit(1)


def _click_error_json(exc: click.exceptions.ClickException) -> None:
    """click prints its own message on stderr (with the usage line); under ``--json`` stdout
    gets the same error as JSON."""
    status = "usage" if exc.exit_code == 2 else "error"
    echo_json_error(status, exc.format_message(), usage_hint(exc))


@click.group(cls=CommandRegistry, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rlm-sandbox")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Recursive Language Models whose code runs in hardened Docker containers.

    Nothing is imported here: a run starts LiteLLM's import itself, and only when one of its
    models needs LiteLLM (see rlm_sandbox.rlm.lm), once the settings say which models."""
    if ctx.invoked_subcommand == "run" and _may_prestart():
        # Before `run` reads its settings (click parses them next): a child starts the
        # root's container meanwhile, on the other core (rlm_sandbox/sandbox/prestart.py).
        from rlm_sandbox.rlm.run_setup import new_run_id
        from rlm_sandbox.sandbox import prestart

        prestart.fork(new_run_id())


def _may_prestart() -> bool:
    """Only in a process started as ``rlm-sandbox run`` (not click's in-process test runner,
    whose argv is another program's); not for help, the local backend or several engines
    (the child would find out too, later), nor when ``RLM_SANDBOX_PRESTART=0``."""
    args = sys.argv[1:]
    if (
        "run" not in args
        or os.environ.get("RLM_SANDBOX_PRESTART", "1") == "0"
        or {"-h", "--help"} & set(args)
    ):
        return False
    return not any(a.startswith(("--engine", "--backend")) for a in args)


if __name__ == "__main__":
    main()
