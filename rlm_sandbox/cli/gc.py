"""``rlm-sandbox gc``: remove the containers a dead controller left behind."""

from __future__ import annotations

import sys

import click

from rlm_sandbox.errors import RLMSandboxError
from rlm_sandbox.safe_text import visible


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="list what would be removed, remove nothing")
@click.option("--tenant", default=None, help="only this tenant's containers")
@click.option("--run", "run_id", default=None, help="only this run's containers")
@click.option("--all", "include_live", is_flag=True, help="also containers of controllers still running")
@click.option(
    "--engine", "engines", multiple=True, help="clean this engine (repeatable; default: the configured ones)"
)
def gc(
    dry_run: bool, tenant: str | None, run_id: str | None, include_live: bool, engines: tuple[str, ...]
) -> None:
    """Remove sandbox containers left behind by controllers that died (and the input
    files of those that died while loading one).

    Every engine named by --engine is cleaned (default: the engines of the settings, else
    the local one); one that does not answer is reported and the others are still cleaned.
    """
    from rlm_sandbox.sandbox.engines import EngineSpec, register
    from rlm_sandbox.sandbox.gc import collect_garbage

    urls: list[str | None] = list(engines)
    if not urls:
        from rlm_sandbox.settings import Settings

        urls = list(Settings().engines) or [None]
    verb = "would remove" if dry_run else "removed"
    failed = 0
    for text in urls:
        backend = None
        where = ""
        try:
            if text is not None:
                from rlm_sandbox.sandbox.docker_backend import DockerBackend

                spec = EngineSpec.parse(text)
                register(spec)
                backend, where = DockerBackend(spec.url), f" on {spec.url}"
            report = collect_garbage(
                backend, tenant=tenant, run_id=run_id, include_live=include_live, dry_run=dry_run
            )
        except RLMSandboxError as exc:
            click.echo(f"error{where}: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            failed += 1
            continue
        for info in report.removed:
            labels = info.labels  # set by whoever created the container: shown, never acted on
            click.echo(
                visible(
                    f"{verb} {info.id[:12]} ({info.status}){where} run={labels.get('rlm-sandbox.run', '?')} "
                    f"tenant={labels.get('rlm-sandbox.tenant', '?')}"
                )
            )
        click.echo(
            f"{verb} {len(report.removed)} container(s){where}; kept {len(report.kept)} of live controllers"
        )
    from rlm_sandbox.sandbox.input_file import remove_orphans

    orphans = remove_orphans(dry_run=dry_run)
    if orphans:
        click.echo(f"{verb} {len(orphans)} input file(s) of controllers that died: {', '.join(orphans)}")
    if failed:
        sys.exit(4)
