"""How the CLI talks to a person: typed errors as one line and a hint with the status's exit
code (and, under ``--json``, as a JSON object on stdout too), consoles that wrap only at a
terminal, the live view only at a terminal, and a fast exit once everything is written."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from rlm_sandbox import sizes
from rlm_sandbox.errors import RLMSandboxError, exit_code

if TYPE_CHECKING:
    from rich.console import Console

#: Set by the command group when ``--json`` is on the command line: errors are then also one
#: JSON object on stdout, so a program reading stdout always gets JSON, even for a usage error.
_json_errors = False
#: Columns a console uses when its stream is not a terminal: nothing a pipe gets is wrapped.
UNWRAPPED_WIDTH = 100_000


def json_errors(enabled: bool) -> None:
    global _json_errors
    _json_errors = enabled


def echo_json_error(status: str, error: str, hint: str | None) -> None:
    """``{"status", "error", "hint"}`` on stdout, when ``--json`` was asked for."""
    if _json_errors:
        from rlm_sandbox.safe_text import json_text

        click.echo(json_text({"status": status, "error": error, "hint": hint or None}))


def fail(exc: RLMSandboxError, debug: bool) -> NoReturn:
    """Print a typed error as a person can act on it and exit with its status's code."""
    if debug:
        import traceback

        traceback.print_exc()
    from rlm_sandbox.safe_text import visible

    echo_json_error(exc.status, exc.message, exc.hint)
    click.echo(f"error: {visible(exc.message)}", err=True)  # may quote a kernel or a model
    if exc.hint:
        click.echo(f"hint: {visible(exc.hint)}", err=True)
    sys.exit(exit_code(exc.status))


def usage_hint(exc: click.ClickException) -> str:
    """What to do about one of click's own usage errors: the command's --help."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "rlm-sandbox"
    return f"see `{where} --help`"


def console(*, stderr: bool = False, **kwargs: Any) -> Console:
    """A rich console that wraps lines only at a terminal: into a pipe or a file every line
    is written whole (rich would wrap at 80 columns when it cannot see a terminal), while a
    person at a terminal gets the layout of their window."""
    from rich.console import Console

    out = Console(stderr=stderr, **kwargs)
    if not out.is_terminal and "width" not in kwargs:
        out.width = UNWRAPPED_WIDTH
    return out


def parse_size(text: str) -> int:
    """``4m``, ``100m``, ``1g`` as bytes (:func:`rlm_sandbox.sizes.parse_size`), for a flag."""
    try:
        return int(sizes.parse_size(text))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size like 4m or 1g") from None


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
