"""``rlm-sandbox image build``: build the sandbox image (also done on first use)."""

from __future__ import annotations

import sys

import click


@click.group("image")
def image() -> None:
    """Build or inspect the sandbox image."""


@image.command("build")
@click.option("--base", default=None, help="base image (default: the offline Debian base)")
@click.option("--force", is_flag=True, help="rebuild even if the image exists")
def image_build(base: str | None, force: bool) -> None:
    """Build the sandbox image (and the offline base) if missing; print its tag."""
    from rich.console import Console

    from rlm_sandbox.errors import RLMSandboxError
    from rlm_sandbox.sandbox.config import SandboxConfig
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


@image.command("tag")
@click.option("--base", default=None, help="base image (default: the offline Debian base)")
def image_tag_command(base: str | None) -> None:
    """Print the tag the sandbox image has (a hash of the kernel, the Dockerfile and the base),
    without building or asking an engine: a CI cache key, and what to `docker save`."""
    from rlm_sandbox.sandbox.config import SandboxConfig
    from rlm_sandbox.sandbox.image import image_tag

    cfg = SandboxConfig(base_image=base) if base else SandboxConfig()
    click.echo(cfg.image or image_tag(cfg.base_image))
