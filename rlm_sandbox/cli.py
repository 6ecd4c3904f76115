"""The ``rlm-sandbox`` command. Heavy imports (docker, LiteLLM) happen inside commands only,
so ``--help``, ``gc`` and ``doctor`` start fast."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rlm-sandbox")
def main() -> None:
    """Recursive Language Models whose code runs in hardened Docker containers."""


@main.group()
def image() -> None:
    """Build or inspect the sandbox image."""


@image.command("build")
@click.option("--base", default=None, help="base image (default: the offline Debian base)")
@click.option("--force", is_flag=True, help="rebuild even if the image exists")
def image_build(base: str | None, force: bool) -> None:
    """Build the sandbox image (and the offline base) if missing; print its tag."""
    from rich.console import Console

    from rlm_sandbox.config import SandboxConfig
    from rlm_sandbox.errors import RLMSandboxError
    from rlm_sandbox.sandbox.docker_backend import docker_client
    from rlm_sandbox.sandbox.image import ensure_image

    err = Console(stderr=True)
    cfg = SandboxConfig(base_image=base) if base else SandboxConfig()
    try:
        with err.status("checking the sandbox image") as status:
            tag = ensure_image(
                docker_client(cfg.docker_url), cfg, progress=lambda m: status.update(m[:100]), force=force
            )
    except RLMSandboxError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(4)
    click.echo(tag)


@main.command()
@click.option("--dry-run", is_flag=True, help="list what would be removed, remove nothing")
@click.option("--tenant", default=None, help="only this tenant's containers")
@click.option("--run", "run_id", default=None, help="only this run's containers")
@click.option("--all", "include_live", is_flag=True, help="also containers of controllers still running")
def gc(dry_run: bool, tenant: str | None, run_id: str | None, include_live: bool) -> None:
    """Remove sandbox containers left behind by controllers that died."""
    from rlm_sandbox.errors import RLMSandboxError
    from rlm_sandbox.sandbox.gc import collect_garbage

    try:
        report = collect_garbage(tenant=tenant, run_id=run_id, include_live=include_live, dry_run=dry_run)
    except RLMSandboxError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(4)
    verb = "would remove" if dry_run else "removed"
    for info in report.removed:
        labels = info.labels
        click.echo(
            f"{verb} {info.id[:12]} ({info.status}) run={labels.get('rlm-sandbox.run', '?')} "
            f"tenant={labels.get('rlm-sandbox.tenant', '?')}"
        )
    click.echo(f"{verb} {len(report.removed)} container(s); kept {len(report.kept)} of live controllers")


if __name__ == "__main__":
    main()
