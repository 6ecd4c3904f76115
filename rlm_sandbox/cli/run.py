"""``rlm-sandbox run``: answer a task over an input with a Recursive Language Model."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from rlm_sandbox.cli.execute import execute
from rlm_sandbox.cli.options import MODEL_FLAGS, budget_options, setting_options
from rlm_sandbox.cli.output import fail
from rlm_sandbox.errors import ConfigError, RLMSandboxError


@click.command("run")
@setting_options(*MODEL_FLAGS)
@click.option("--task", required=True, help="what to find or compute over the input")
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    help="a file, a directory (walked) or '-' for standard input; repeatable; .gz .bz2 .xz .zst "
    "are decompressed (absent: standard input)",
)
@click.option(
    "--glob",
    "globs",
    multiple=True,
    help="keep only the files of a directory that match (repeatable): *.log, or a path with /",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "github"]),
    default="text",
    show_default=True,
    help="github: citations as workflow annotations, and a summary in $GITHUB_STEP_SUMMARY",
)
@click.option(
    "--tools",
    "tools_spec",
    default=None,
    help="module:attr of host functions the code may call (they run on THIS machine, with your rights)",
)
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON Schema file the answer must match (it is checked and sent back to fix)",
)
@budget_options
def run(
    model: str | None,
    sub_model: str | None,
    task: str,
    inputs: tuple[str, ...],
    globs: tuple[str, ...],
    output_format: str,
    tools_spec: str | None,
    schema_path: str | None,
    **o: Any,
) -> None:
    """Answer TASK over a large input with a Recursive Language Model.

    Every option except --task, --input, --glob and the output flags can also come from
    RLM_SANDBOX_* variables or rlm-sandbox.toml (see `rlm-sandbox config show`).
    """
    from rlm_sandbox.sandbox import prestart

    if prestart.in_child():
        prestart.child_start(lambda: _root_sandbox_config(o))  # never returns
    from rlm_sandbox.inputs import StreamInput, checked_inputs, collect_inputs

    if not model:
        raise click.UsageError(
            "Missing option '--model' (or set model in rlm-sandbox.toml, or RLM_SANDBOX_MODEL)."
        )
    try:
        tools, output = None, None
        if tools_spec:
            from rlm_sandbox.rlm.tools import load_tools

            # --tools mymodule:TOOLS from the current project: that module only, the
            # directory never goes on sys.path (it would shadow every later import).
            tools = load_tools(tools_spec, directory=os.getcwd())
        if schema_path:
            import json

            try:
                output = json.loads(Path(schema_path).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ConfigError(f"{schema_path} is not JSON: {exc}") from None
        if (not inputs or "-" in inputs) and (sys.stdin is None or sys.stdin.isatty()):
            raise ConfigError(
                "no input: give -i FILE (or a directory) or pipe the input on standard input",
                hint="e.g. cat big.log | rlm-sandbox run ...",
            )
        o["format"] = output_format
        stdin = (
            StreamInput(sys.stdin.buffer) if sys.stdin is not None and (not inputs or "-" in inputs) else None
        )
        with collect_inputs(inputs, globs, stdin=stdin) as found:
            context = checked_inputs(found)  # an empty input refused, a binary one kept as bytes
            code = execute(
                model, sub_model, task, context, o, tools=tools, output=output, run_id=prestart.run_id()
            )
    except RLMSandboxError as exc:
        fail(exc, o["debug"])
    sys.exit(code)


def _root_sandbox_config(o: dict[str, Any]) -> Any:
    """In the prestart child: the sandbox configuration the run will give its root, by the
    run's own code (None when the run would not start a container of its own for it)."""
    from rlm_sandbox.cli.execute import build_config

    config = build_config(o)
    if config.engines or config.sandbox.backend != "docker":
        return None
    return config.node_sandbox_config(prestart_run_id(), "root", None)


def prestart_run_id() -> str:
    from rlm_sandbox.sandbox import prestart

    run_id = prestart.run_id()
    assert run_id is not None
    return run_id
