"""``rlm-sandbox config show|trust|untrust``: the effective settings, and which project files
the user trusts.

With settings spread over flags, ``RLM_SANDBOX_*`` variables and two files, "why is depth 3?"
needs an answer that does not involve reading all of them. API keys are not settings and are
never shown; a password inside a URL is masked. A project file is untrusted until the user
says otherwise (``config trust``): ``show`` says which of its values were left out, and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rlm_sandbox.cli.options import FLAGS, resolve_settings, setting_options, trust_option


@click.group()
def config() -> None:
    """Inspect the settings run/demo would use (flags, RLM_SANDBOX_*, rlm-sandbox.toml)."""


@config.command("show")
@setting_options(*FLAGS)
@trust_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def show(as_json: bool, **flags: Any) -> None:
    """Print every effective setting and its source.

    Precedence, highest first: a flag given here, RLM_SANDBOX_<NAME>, the project's
    rlm-sandbox.toml, the user's ($XDG_CONFIG_HOME/rlm-sandbox/rlm-sandbox.toml), the default.
    A project file you have not trusted may only tighten your own settings: what it may not
    set is listed as ignored.
    """
    from rlm_sandbox.settings import user_config_file

    # An invalid setting raises ConfigError: the CLI's group prints it and exits 2.
    loaded = resolve_settings(click.get_current_context(), flags, announce=False)
    files = {kind: str(path) for kind, path in loaded.files}
    trust = loaded.trust
    if as_json:
        out = {
            "settings": {name: {"value": value, "source": src} for name, value, src in loaded.rows()},
            "files": {"project": files.get("project"), "user": files.get("user")},
            "project_trust": trust.to_json() if trust is not None else None,
            "ignored": [item.to_json() for item in loaded.ignored],
        }
        click.echo(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    from rlm_sandbox.safe_text import text

    table = Table(title="rlm-sandbox settings", title_justify="left")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    for name, value, src in loaded.rows():
        style = "dim" if src == "default" else None
        # Values come from files a stranger may have written: plain text, never markup.
        table.add_row(name, text("-" if value is None else str(value)), text(src), style=style)
    console = Console(highlight=False)
    console.print(table)
    if trust is None:
        console.print(f"project file: none ({Path('rlm-sandbox.toml')} here or up to the project root)")
    else:
        console.print(text(f"project file: {trust.path}, {trust.describe()}"))
    for item in loaded.ignored:
        console.print(text(f"  {item.line()}", "yellow"))
    console.print(text(f"user file: {files.get('user', f'none ({user_config_file()})')}"))


def _project_path(directory: str | None, *, must_exist: bool = True) -> Path:
    from rlm_sandbox.errors import ConfigError
    from rlm_sandbox.settings import FILE_NAME, project_config_file

    where = Path(directory or ".")
    if not where.is_dir():
        raise ConfigError(f"{where} is not a directory", hint="give the project's directory, e.g. .")
    path = project_config_file(where)
    if path is not None:
        return path
    if not must_exist:
        return where.resolve() / FILE_NAME
    raise ConfigError(
        f"no {FILE_NAME} in {where.resolve()} or up to its project root",
        hint="run it in the project's directory, or give that directory",
    )


@config.command("trust")
@click.argument("directory", required=False, metavar="[DIR]")
def trust(directory: str | None) -> None:
    """Trust the rlm-sandbox.toml of DIR (default: here) as if you wrote it.

    Its settings then apply like your own, including where the model calls, the trace and
    the containers go. The record holds the file's path and a hash of its content: once
    the file changes, it is untrusted again. Read the file before you trust it.
    """
    from rlm_sandbox.project_trust import read_project_file, record_trust

    project = read_project_file(_project_path(directory))
    store = record_trust(project)
    click.echo(f"trusted {project.path} (sha256 {project.digest[:16]}...), recorded in {store}")
    keys = ", ".join(repr(k) for k in sorted(project.data)) or "nothing"
    click.echo(f"it sets {keys}; once the file changes it is untrusted again", err=True)


@config.command("untrust")
@click.argument("directory", required=False, metavar="[DIR]")
def untrust(directory: str | None) -> None:
    """Forget that you trusted the rlm-sandbox.toml of DIR (default: here)."""
    from rlm_sandbox.project_trust import forget_trust

    path = _project_path(directory, must_exist=False)
    if forget_trust(path):
        click.echo(f"untrusted {path}: it may only tighten your settings again")
    else:
        click.echo(f"{path} was not trusted; nothing to do")
