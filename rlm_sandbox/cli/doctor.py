"""``rlm-sandbox doctor``: one line per check, a fix for each that is not fine.

Exit 0 when nothing a run needs is wrong (warnings included), 1 otherwise, 2 for invalid
settings. The checks themselves live in :mod:`rlm_sandbox.doctor`.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from rlm_sandbox.cli.options import setting_options, trust_option

DOCTOR_FLAGS = (
    "model",
    "sub_model",
    "api_base",
    "runtime",
    "memory",
    "cpus",
    "docker_url",
    "image_packages",
    "engines",
    "tenant",
)
STYLE = {"ok": "green", "fail": "red", "warn": "yellow", "skip": "dim"}


@click.command()
@setting_options(*DOCTOR_FLAGS)
@trust_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def doctor(as_json: bool, **flags: Any) -> None:
    """Check the engine, a hardened sandbox start, gVisor, the image, leftovers, the model's
    key and the model server; say how to fix what is wrong.

    The settings checked are those `run` would use (flags here, RLM_SANDBOX_*, rlm-sandbox.toml).
    """
    from rich.console import Console

    from rlm_sandbox.cli.options import resolve_settings
    from rlm_sandbox.doctor import MARK, CheckResult, run_checks
    from rlm_sandbox.safe_text import json_text, line

    # An invalid setting raises ConfigError: the CLI's group prints it and exits 2.
    loaded = resolve_settings(click.get_current_context(), flags)
    out = Console(highlight=False, soft_wrap=True)

    def show(r: CheckResult) -> None:
        # Details quote engines, servers and settings files: shown as text, never markup or escapes.
        fix = (("  fix:", "dim"), f" {r.fix}") if r.fix and r.status != "ok" else ()
        out.print(line((MARK[r.status], STYLE[r.status]), " ", (r.name, "bold"), f": {r.detail}", *fix))

    results = run_checks(loaded, on_result=None if as_json else show)
    failed = [r for r in results if r.failed]
    if as_json:
        click.echo(json_text({"ok": not failed, "checks": [r.to_json() for r in results]}))
    elif failed:
        out.print(f"[red]{len(failed)} problem(s) would stop a run[/]")
    else:
        warned = sum(r.status == "warn" for r in results)
        out.print("[green]ready[/]" + (f" ({warned} warning(s))" if warned else ""))
    sys.exit(1 if failed else 0)
