"""``rlm-sandbox trace show|summary|html FILE``: read a run's trace after the fact.

A trace is a file a person points at by hand, often one of a crashed run, so a wrong path
or a file that is not a trace ends in one line and a hint (exit 2), never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from rlm_sandbox.trace.model import RunTrace
from rlm_sandbox.trace.tree import TraceFileError, load

FILE = click.argument("file", type=click.Path(dir_okay=True, path_type=Path))


def _usage_error(message: str, hint: str) -> NoReturn:
    from rlm_sandbox.safe_text import visible

    click.echo(f"error: {visible(message)}", err=True)
    click.echo(f"hint: {visible(hint)}", err=True)
    sys.exit(2)


def _load(path: Path, *, for_terminal: bool = True) -> RunTrace:
    """The trace, with every string made visible for the terminal views (a trace is written
    by cells and models: its text is shown, never acted on); the HTML page escapes its own."""
    from rlm_sandbox.safe_text import visible_data

    try:
        return load(path, clean=visible_data if for_terminal else None)
    except TraceFileError as exc:
        _usage_error(exc.message, exc.hint)


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


@click.group("trace")
def trace_group() -> None:
    """Read a run's trace (the JSON-lines file of --trace): tree, cost tables, HTML page."""


@trace_group.command("show")
@FILE
@click.option("--node", "node_id", default=None, help="show only this node and what it spawned")
def show_command(file: Path, node_id: str | None) -> None:
    """The run as a tree: each node's status, steps, tokens, cost, time, cells and answer."""
    from rlm_sandbox.trace.render import show

    run = _load(file)
    if node_id is not None and run.find(node_id) is None:
        known = ", ".join(n.id for n in run.walk()) or "none"
        _usage_error(f"no node {node_id!r} in {file}", f"the trace's nodes are: {known}")
    _console().print(show(run, node_id))


@trace_group.command("summary")
@FILE
def summary_command(file: Path) -> None:
    """Totals per depth and per model, the slowest cells, budget stops and errors."""
    from rlm_sandbox.trace.render import summary

    _console().print(summary(_load(file)))


@trace_group.command("html")
@FILE
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="where to write the page (default: FILE with .html)",
)
def html_command(file: Path, output: Path | None) -> None:
    """One self-contained HTML page: collapsible node tree and a timeline (no network needed)."""
    from rlm_sandbox.trace.html import render_html

    run = _load(file, for_terminal=False)
    target = output or file.with_suffix(".html")
    try:
        target.write_text(render_html(run), encoding="utf-8")
    except OSError as exc:
        _usage_error(f"cannot write {target}: {exc.strerror or exc}", "pick a writable path with -o")
    click.echo(str(target))
