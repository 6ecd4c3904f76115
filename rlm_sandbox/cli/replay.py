"""``rlm-sandbox replay TRACE -i INPUT``: run a recorded run again from its recorded answers.

No model is called and no key is needed: a server on 127.0.0.1 answers each request the
recording made with the recorded response, while the code runs in fresh containers. The
report (stdout) says whether the run did the same thing, and where it first did not.

Exit codes: 0 identical, 1 diverged, 2 usage (no such trace, a trace from a version
without request digests, bad input), 4 the replay itself could not run (sandbox).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from rlm_sandbox.cli.options import RUN_FLAGS, setting_options
from rlm_sandbox.errors import RLMSandboxError

REPLAY_FLAGS = tuple(n for n in RUN_FLAGS if n not in ("api_base", "trace", "depth_models"))
"""Every setting of ``run`` except where the model calls and the trace go (the replay's
own server, and its own --trace) and the models per level (the server answers them all)."""


@click.command("replay")
@click.argument("trace_file", metavar="TRACE", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-i",
    "--input",
    "input_path",
    required=True,
    help="the recorded run's input ('-' for standard input): traces do not hold inputs",
)
@click.option("--task", default=None, help="the task, if not the recorded one (traces cut it at 2000 chars)")
@click.option(
    "--trace", "new_trace", default=None, help="where to write the replay's trace (default: a temp file)"
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout and nothing else")
@click.option("--debug", is_flag=True, help="show tracebacks")
@setting_options(*REPLAY_FLAGS)
def replay(
    trace_file: Path,
    input_path: str,
    task: str | None,
    new_trace: str | None,
    as_json: bool,
    debug: bool,
    **o: Any,
) -> None:
    """Replay the run recorded in TRACE with fresh containers and report where it diverges.

    Needs the same input the run had, given the same way (a file, or '-' if it came on
    standard input: the model is told the size of a file only). The trace supplies the
    recorded model answers and nothing else: every limit, the tenant and the sandbox
    settings are yours (flags, RLM_SANDBOX_* variables, rlm-sandbox.toml, the defaults of
    `run`). The recorded depth and steps are used when your settings allow them.
    Exit 0: identical; 1: diverged; 2: usage error; 4: the replay could not run.
    """
    from rich.console import Console

    from rlm_sandbox.cli.options import resolve_settings
    from rlm_sandbox.cli.output import fail, fast_exit
    from rlm_sandbox.inputs import open_input
    from rlm_sandbox.replay import load_recording, run_replay
    from rlm_sandbox.safe_text import line
    from rlm_sandbox.settings import build_rlm_config
    from rlm_sandbox.trace.view import TraceView

    err = Console(stderr=True)
    try:
        loaded = resolve_settings(click.get_current_context(), o)
        recording = load_recording(trace_file)
        context = open_input(input_path)
        base = build_rlm_config(loaded.settings.model_dump())
        recorded = recording.start.get("image_packages") or []
        recorded_packages = [str(p) for p in recorded] if isinstance(recorded, list) else [str(recorded)]
        if recorded_packages != list(base.sandbox.image_packages):
            # Not taken from the trace (a file is not trusted to choose what runs in the sandbox).
            shown = " ".join(recorded_packages)[:200] or "none"
            err.print(
                line(
                    ("note:", "yellow"),
                    f" the recorded run's image packages were: {shown}; this replay uses the settings' "
                    "(--image-packages is a setting: RLM_SANDBOX_IMAGE_PACKAGES)",
                ),
                soft_wrap=True,
            )
        if task is None and len(recording.task) >= 2000:
            err.print("[yellow]note:[/] the recorded task may be cut at 2000 characters; give --task if so")
        target = new_trace or _temp_trace()
        listeners = () if as_json else (TraceView(err, quiet=True).on_event,)
        if not as_json:
            err.print(
                f"replaying {len(recording.calls)} recorded model calls of {trace_file} "
                "(no model, no key) in fresh containers"
            )
        report = run_replay(
            recording,
            context,
            trace=target,
            base_config=base,
            origin=loaded.origin,
            task=task,
            listeners=listeners,
        )
    except RLMSandboxError as exc:
        fail(exc, debug)
    code = report.exit_code
    if report.status_replayed == "sandbox_error" and report.status_recorded != "sandbox_error":
        code = 4
    if as_json:
        from rlm_sandbox.safe_text import json_text

        click.echo(json_text(report.to_json()))
    else:
        _print_report(Console(highlight=False, soft_wrap=True), report)
    fast_exit(code)
    sys.exit(code)


def _temp_trace() -> str:
    # A trace is never written over an existing file: a fresh private directory, not mkstemp.
    return str(Path(tempfile.mkdtemp(prefix="rlm-sandbox-replay-")) / "trace.jsonl")


def _print_report(out: Any, report: Any) -> None:
    """The report for a person. Recorded and replayed text came from cells and models (and
    the trace from anywhere): every piece of it is shown through safe_text, never as markup."""
    from rlm_sandbox.safe_text import line

    c = report.counts
    if report.identical:
        out.print(
            line(("identical", "bold green"), f": the replay did what {report.recorded_trace} recorded")
        )
    else:
        out.print(
            line(
                ("diverged", "bold red"),
                f": {len(report.divergences)} difference(s) from {report.recorded_trace}",
            )
        )
    out.print(
        line(
            f"  requests: {c['requests']} ({c['matched_exact']} exact, {c['unknown_requests']} unknown) "
            f"of {c['recorded_calls']} recorded"
        )
    )
    out.print(
        line(
            f"  nodes: {c['nodes_replayed']} replayed, {c['nodes_recorded']} recorded; cells: "
            f"{c['cells_replayed']} replayed, {c['cells_recorded']} recorded, {c['cells_differing']} differ"
        )
    )
    out.print(
        line(
            f"  answer: {report.answer_replayed!r} ({report.status_replayed}); recorded "
            f"{report.answer_recorded!r} ({report.status_recorded})"
        )
    )
    first = report.first
    if first is not None:
        where = ", ".join(
            f"{k} {v}"
            for k, v in (
                ("node", first.node),
                ("replayed as", first.replay_node),
                ("depth", first.depth),
                ("step", first.step),
                ("cell", first.index),
            )
            if v is not None
        )
        out.print(line(("first divergence", "bold"), f": {first.kind}" + (f" at {where}" if where else "")))
        out.print(line(f"  {first.detail}"))
        for label, text in (("recorded", first.recorded), ("replayed", first.replayed)):
            if text is not None:
                body = str(text).replace("\n", "\n    ")
                out.print(line(f"  {label}:\n    {body}"))
        rest = report.divergences[1:]
        for d in rest[:10]:
            out.print(line(f"  then {d.kind}: {d.detail}"))
        if len(rest) > 10:
            out.print(line(f"  ... and {len(rest) - 10} more (see --json)"))
    out.print(line(f"  replay trace: {report.trace}"))
