"""How the CLI talks to a person: typed errors as one line and a hint with the status's exit
code, the live view only at a terminal, and a fast exit once everything is written."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from rlm_sandbox.errors import RLMSandboxError, exit_code


def fail(exc: RLMSandboxError, debug: bool) -> NoReturn:
    """Print a typed error as a person can act on it and exit with its status's code."""
    if debug:
        import traceback

        traceback.print_exc()
    from rlm_sandbox.safe_text import visible

    click.echo(f"error: {visible(exc.message)}", err=True)  # may quote a kernel or a model
    if exc.hint:
        click.echo(f"hint: {visible(exc.hint)}", err=True)
    sys.exit(exit_code(exc.status))


def parse_size(text: str) -> int:
    """``4m``, ``100m``, ``1g`` as bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    mult = units.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in units else t) * mult)
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
