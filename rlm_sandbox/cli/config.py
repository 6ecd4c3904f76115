"""``rlm-sandbox config show``: every effective setting and where it came from.

With settings spread over flags, ``RLM_SANDBOX_*`` variables and two files, "why is depth 3?"
needs an answer that does not involve reading all of them. API keys are not settings and are
never shown; a password inside a URL is masked.
"""

from __future__ import annotations

import json
from typing import Any

import click

from rlm_sandbox.cli.options import FLAGS, resolve_settings, setting_options


@click.group()
def config() -> None:
    """Inspect the settings run/demo would use (flags, RLM_SANDBOX_*, rlm-sandbox.toml)."""


@config.command("show")
@setting_options(*FLAGS)
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def show(as_json: bool, **flags: Any) -> None:
    """Print every effective setting and its source.

    Precedence, highest first: a flag given here, RLM_SANDBOX_<NAME>, the project's
    rlm-sandbox.toml, the user's ($XDG_CONFIG_HOME/rlm-sandbox/rlm-sandbox.toml), the default.
    """
    from rlm_sandbox.settings import config_files, user_config_file

    # An invalid setting raises ConfigError: the CLI's group prints it and exits 2.
    loaded = resolve_settings(click.get_current_context(), flags)
    files = {kind: str(path) for kind, path in config_files()}
    if as_json:
        out = {
            "settings": {name: {"value": value, "source": src} for name, value, src in loaded.rows()},
            "files": {"project": files.get("project"), "user": files.get("user")},
        }
        click.echo(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rlm-sandbox settings", title_justify="left")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    for name, value, src in loaded.rows():
        style = "dim" if src == "default" else None
        table.add_row(name, "-" if value is None else str(value), src, style=style)
    console = Console()
    console.print(table)
    console.print(
        f"project file: {files.get('project', 'none (rlm-sandbox.toml here or up to the project root)')}"
    )
    console.print(f"user file: {files.get('user', f'none ({user_config_file()})')}")
