"""``rlm-sandbox image build|tag|ls|rm``: the sandbox images this package builds.

``build`` builds what a run would use (the default image, or the derived one for
``image_packages``); runs also build it on first use. ``tag`` prints the tag of that image
without building it (a CI cache key). ``ls`` lists every image built here
(never anything else on the engine) and ``rm`` removes them, never one a container uses.
Everything that talks to the engine is in :mod:`rlm_sandbox.sandbox`; this module parses,
calls it and prints.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import click

from rlm_sandbox.cli.options import resolve_settings, setting_options

IMAGE_FLAGS = ("image_packages", "docker_url")


@click.group("image")
def image() -> None:
    """Build, list and remove the sandbox images."""


def _sandbox_config(flags: dict[str, Any], base: str | None = None) -> Any:
    """The sandbox settings a run would use (flags here, RLM_SANDBOX_*, rlm-sandbox.toml)."""
    loaded = resolve_settings(click.get_current_context(), flags)
    config = loaded.settings.rlm_config().sandbox
    if base:
        config = type(config).model_validate(config.model_dump() | {"base_image": base})
    return config


@image.command("build")
@click.option("--base", default=None, help="base image (default: the offline Debian base)")
@click.option("--force", is_flag=True, help="rebuild even if the image exists")
@setting_options(*IMAGE_FLAGS)
def image_build(base: str | None, force: bool, **flags: Any) -> None:
    """Build the sandbox image a run would use (with --image-packages: the derived image)
    and what it is built on, if missing; print its tag."""
    from rlm_sandbox.cli.output import console
    from rlm_sandbox.safe_text import text
    from rlm_sandbox.sandbox.built_images import build_configured_image

    err = console(stderr=True)
    cfg = _sandbox_config(flags, base)
    # A typed error (bad engine, failed build) reaches the group: one line, a hint, its exit code.
    if err.is_terminal:
        with err.status("checking the sandbox image") as status:
            tag = build_configured_image(cfg, progress=lambda m: status.update(text(m[:100])), force=force)
    else:  # a log (scripts/setup.sh, CI): a spinner shows nothing there, lines do
        tag = build_configured_image(cfg, progress=ProgressLines(err), force=force)
    click.echo(tag)


class ProgressLines:
    """Build progress as lines, for a stream that is not a terminal: each step of ours and of
    the Dockerfile at once, the build's own output (apt, pip) at most every few seconds."""

    EVERY_S = 5.0
    STEPS = ("building ", "pulling ", "debian-base: ", "Step ", "sending ", "sent ")

    def __init__(self, err: Any) -> None:
        self.err = err
        self.last = float("-inf")

    def __call__(self, message: str) -> None:
        import time

        from rlm_sandbox.safe_text import line

        now = time.monotonic()
        if message.startswith(self.STEPS) or now - self.last >= self.EVERY_S:
            self.last = now
            self.err.print(line(("image:", "cyan"), f" {message.strip()[:200]}"), highlight=False)


@image.command("tag")
@click.option("--base", default=None, help="base image (default: the offline Debian base)")
@setting_options(*IMAGE_FLAGS)
def image_tag_command(base: str | None, **flags: Any) -> None:
    """Print the tag of the image a run would use (a hash of the kernel, the Dockerfile, the
    base and the packages), without building it or asking an engine: a CI cache key, and
    the name to `docker save`."""
    from rlm_sandbox.sandbox.image import configured_tag

    click.echo(configured_tag(_sandbox_config(flags, base)))


@image.command("ls")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
@setting_options(*IMAGE_FLAGS)
def image_ls(as_json: bool, **flags: Any) -> None:
    """List the images rlm-sandbox built: tag, packages, size, age, and which one a run
    would use now (default). "packages" rows are the apt layer a derived image is built on."""
    from rlm_sandbox.sandbox.built_images import list_built_images

    images = list_built_images(_sandbox_config(flags))
    if as_json:
        click.echo(json.dumps({"images": [i.to_json() for i in images]}))
        return
    if not images:
        click.echo("no images built yet (a run builds the one it needs; or: rlm-sandbox image build)")
        return
    rows = [
        (
            i.tag,
            i.kind,
            " ".join(i.packages) or "-",
            f"{i.size / 1e6:.0f} MB",
            dt.datetime.fromtimestamp(i.created).strftime("%Y-%m-%d %H:%M"),
            ", ".join(
                n
                for n, on in (
                    ("default", i.default),
                    ("stale", i.stale),
                    (f"in use ({i.in_use})", bool(i.in_use)),
                )
                if on
            ),
        )
        for i in images
    ]
    head = ("TAG", "KIND", "PACKAGES", "SIZE", "CREATED", "")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    for row in [head, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@image.command("rm")
@click.argument("tags", nargs=-1, metavar="[TAG]...")
@click.option("--all", "everything", is_flag=True, help="every image rlm-sandbox built")
@click.option("--stale", is_flag=True, help="images no current kernel or recipe would build")
@click.option("--dry-run", is_flag=True, help="say what would be removed, remove nothing")
@setting_options("docker_url")
def image_rm(tags: tuple[str, ...], everything: bool, stale: bool, dry_run: bool, **flags: Any) -> None:
    """Remove images rlm-sandbox built: TAG... (as `image ls` shows them), --all or --stale.

    An image a container uses is never removed (it is named, with why); a derived image
    takes its package layer with it unless another image is built on that layer. Exit 1
    when a TAG asked for was kept.
    """
    from rlm_sandbox.sandbox.built_images import check_removal_request, remove_built_images

    # A bad request is a ConfigError (exit 2) before the engine is asked anything.
    check_removal_request(tags, everything=everything, stale=stale)
    done = remove_built_images(
        _sandbox_config(flags), tags, everything=everything, stale=stale, dry_run=dry_run
    )
    verb = "would remove" if dry_run else "removed"
    for i in done.remove:
        click.echo(f"{verb} {i.tag} ({i.kind}, {' '.join(i.packages) or 'no packages'})")
    for i, why in done.kept:
        click.echo(f"kept {i.tag}: {why}", err=True)
    click.echo(f"{verb} {len(done.remove)} image(s)" + (f", kept {len(done.kept)}" if done.kept else ""))
    if tags and done.kept:
        sys.exit(1)
