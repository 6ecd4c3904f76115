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
        prestart.child_start(
            lambda: _root_sandbox_config(o, model, sub_model, inputs, globs, tools_spec),
            lambda: _root_preload(inputs, globs, o),
        )  # never returns
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
    finally:
        prestart.abandon()  # a container the run did not take is removed by its child
    sys.exit(code)


def _root_sandbox_config(
    o: dict[str, Any],
    model: str | None,
    sub_model: str | None,
    inputs: tuple[str, ...],
    globs: tuple[str, ...],
    tools_spec: str | None,
) -> Any:
    """In the prestart child: the sandbox configuration the run will give its root, by the
    run's own code; None when the run would not start a container of its own for it, or
    would stop before any container starts (no model, a missing key, an input past the cap
    or empty), or when the child should not import the user's code (--tools)."""
    from rlm_sandbox.cli.execute import build_config
    from rlm_sandbox.inputs import checked_inputs, collect_inputs
    from rlm_sandbox.rlm.lm.base import missing_key

    if not model or tools_spec:
        return None
    config = build_config(o)
    if config.engines or config.sandbox.backend != "docker":
        return None
    names = {model, sub_model or model, *config.depth_models.values()}
    if any(missing_key(name, api_base=config.api_base, api_key=None) for name in names):
        return None
    if inputs and "-" not in inputs:
        try:
            with collect_inputs(inputs, globs) as found:
                found.bound(*config.input_cap()).check_known_sizes()
                checked_inputs(found)
        except Exception:
            return None
    return config.node_sandbox_config(prestart_run_id(), "root", None)


def _root_preload(inputs: tuple[str, ...], globs: tuple[str, ...], o: dict[str, Any]) -> Any:
    """In the prestart child: the input the run will load, when it is one plain file (its
    absolute path, ``str`` or ``bytes`` as the run decides it, and the cap on the input);
    None for anything else (the run loads it itself)."""
    from rlm_sandbox.cli.execute import build_config
    from rlm_sandbox.input_check import BinaryInput
    from rlm_sandbox.inputs import InputSet, checked_inputs, collect_inputs

    if len(inputs) != 1 or globs or inputs[0] == "-":
        return None
    with collect_inputs(inputs, globs) as found:
        checked = checked_inputs(found)
        if isinstance(checked, BinaryInput) and isinstance(checked.source, os.PathLike):
            path, kind = checked.source, "bytes"
        elif isinstance(checked, InputSet) and checked.simple_path() is not None:
            path, kind = checked.simple_path(), "str"
        else:
            return None
    cap, _source = build_config(o).input_cap()
    return os.path.abspath(path), kind, cap


def prestart_run_id() -> str:
    from rlm_sandbox.sandbox import prestart

    run_id = prestart.run_id()
    assert run_id is not None
    return run_id
