"""What ``rlm-sandbox image ls`` and ``image rm`` see: the images this package built.

An image is ours when it carries the ``rlm-sandbox.image`` label (:mod:`.image` sets it on
every sandbox image and package layer it builds); nothing else on the engine is listed or
ever removed. For each one: its package list, size, age, whether it is the image the current
settings would run (the default), whether it is stale (the recipe it was built from now
gives another tag: the kernel, a Dockerfile or the package recipe changed), and how many
containers use it. Sandbox images built before these labels existed are read as what they
were: the default recipe on the offline base.

:func:`plan_removal` decides, without touching the engine, what a removal request takes:
never an image a container uses, never a package layer another image is built on, and a
sandbox image takes its package layer with it when nothing else is built on that layer.
:func:`remove_images` then carries the plan out. Only this package talks to Docker.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rlm_sandbox.errors import ConfigError, RLMSandboxError
from rlm_sandbox.sandbox.config import OFFLINE_BASE, SandboxConfig
from rlm_sandbox.sandbox.image import (
    KIND_PACKAGES,
    LABEL_BASE,
    LABEL_FROM,
    LABEL_IMAGE,
    LABEL_PACKAGES,
    Progress,
    configured_tag,
    ensure_image,
    packages_tag,
    sandbox_tag,
)


@dataclass(frozen=True)
class BuiltImage:
    """One image we built, as ``image ls`` shows it."""

    tag: str
    id: str
    kind: str  # "sandbox" (what a container runs) or "packages" (the apt layer under one)
    packages: tuple[str, ...]
    built_on: str
    size: int
    created: float  # epoch seconds
    default: bool = False
    stale: bool = False
    in_use: int = 0  # containers (any state) made from it

    def to_json(self) -> dict[str, object]:
        return {
            "tag": self.tag,
            "id": self.id,
            "kind": self.kind,
            "packages": list(self.packages),
            "built_on": self.built_on,
            "size_bytes": self.size,
            "created": dt.datetime.fromtimestamp(self.created, dt.UTC).isoformat(timespec="seconds"),
            "default": self.default,
            "stale": self.stale,
            "in_use": self.in_use,
        }


@dataclass
class RemovalPlan:
    """What a removal request takes (``remove``) and what it leaves, with why (``kept``)."""

    remove: list[BuiltImage] = field(default_factory=list)
    kept: list[tuple[BuiltImage, str]] = field(default_factory=list)


def _expected_tag(kind: str, base: str, packages: tuple[str, ...]) -> str | None:
    """The tag the recipe an image was built from gives today (None: not a valid recipe)."""
    try:
        if kind == "packages":
            return packages_tag(packages, base)
        return sandbox_tag(base, packages)
    except RLMSandboxError:
        return None


def describe(rows: Iterable[dict], containers: Iterable[dict], config: SandboxConfig) -> list[BuiltImage]:
    """Our images among ``rows`` (the engine's image list), with what ``image ls`` shows.
    Pure: the engine's answers go in, so the rules can be tested without an engine."""
    current = configured_tag(config)
    uses: dict[str, int] = {}
    for c in containers:
        uses[c.get("ImageID", "")] = uses.get(c.get("ImageID", ""), 0) + 1
    out: list[BuiltImage] = []
    for row in rows:
        labels = row.get("Labels") or {}
        if LABEL_IMAGE not in labels:
            continue
        kind = "packages" if labels[LABEL_IMAGE] == KIND_PACKAGES else "sandbox"
        packages = tuple(labels.get(LABEL_PACKAGES, "").split())
        base = labels.get(LABEL_BASE) or OFFLINE_BASE  # built before the labels: the default recipe
        expected = _expected_tag(kind, base, packages)
        for tag in row.get("RepoTags") or ():
            if tag == "<none>:<none>":
                continue
            out.append(
                BuiltImage(
                    tag=tag,
                    id=row.get("Id", ""),
                    kind=kind,
                    packages=packages,
                    built_on=labels.get(LABEL_FROM) or base,
                    size=int(row.get("Size") or 0),
                    created=float(row.get("Created") or 0),
                    default=kind == "sandbox" and tag == current,
                    stale=tag != expected and tag != current,
                    in_use=uses.get(row.get("Id", ""), 0),
                )
            )
    out.sort(key=lambda i: (i.kind != "sandbox", not i.default, i.stale, -i.created, i.tag))
    return out


def check_removal_request(tags: Sequence[str], *, everything: bool, stale: bool) -> None:
    """Exactly one of TAG..., --all, --stale: checked before the engine is asked anything."""
    if sum((bool(tags), everything, stale)) != 1:
        raise ConfigError(
            "say what to remove: TAG..., --all or --stale (exactly one of them)",
            hint="rlm-sandbox image ls shows the tags",
        )


def plan_removal(
    images: Sequence[BuiltImage],
    tags: Sequence[str] = (),
    *,
    everything: bool = False,
    stale: bool = False,
) -> RemovalPlan:
    """Which of ``images`` to remove for ``image rm TAG...``, ``--all`` or ``--stale``
    (exactly one of them). A TAG is a tag ``image ls`` shows, or the part after its colon.
    Raises :class:`ConfigError` for a bad request or a TAG that is not one of ours, before
    anything is removed."""
    check_removal_request(tags, everything=everything, stale=stale)
    by_tag = {i.tag: i for i in images}
    chosen: list[BuiltImage] = []
    if tags:
        unknown = []
        for asked in tags:
            hits = [i for i in images if asked in (i.tag, i.tag.partition(":")[2])]
            if not hits:
                unknown.append(asked)
            chosen.extend(h for h in hits if h not in chosen)
        if unknown:
            raise ConfigError(
                f"not an image rlm-sandbox built: {', '.join(unknown)}",
                hint="rlm-sandbox image ls shows the tags (other images are never removed here)",
            )
    else:
        chosen = [i for i in images if everything or i.stale]

    plan = RemovalPlan()
    going: set[str] = set()
    for image in chosen:
        if image.kind == "sandbox":
            if image.in_use:
                plan.kept.append((image, f"in use by {image.in_use} container(s)"))
            else:
                going.add(image.tag)
    # A package layer goes when asked for, or with the last image built on it (except in a
    # --stale sweep: a current layer is the cache that makes the next build of that package
    # set take seconds); never while an image that stays is built on it.
    layers = [i for i in images if i.kind == "packages"]
    for layer in layers:
        users = [i.tag for i in images if i.built_on == layer.tag and i.tag != layer.tag]
        staying = [u for u in users if u not in going]
        asked = layer in chosen
        orphaned = bool(users) and not staying and not stale
        if not (asked or orphaned):
            continue
        if layer.in_use:
            plan.kept.append((layer, f"in use by {layer.in_use} container(s)"))
        elif staying:
            plan.kept.append((layer, f"{', '.join(staying)} is built on it"))
        else:
            going.add(layer.tag)
    plan.remove = [by_tag[t] for t in going]
    plan.remove.sort(key=lambda i: (i.kind != "sandbox", i.tag))  # images before their layers
    return plan


# ---- the engine


def list_images(client, config: SandboxConfig) -> list[BuiltImage]:
    """Every image we built on the engine of ``client``, described for ``config``."""
    from docker.errors import DockerException

    try:
        rows = client.api.images(filters={"label": LABEL_IMAGE})
        containers = client.api.containers(all=True)
    except DockerException as exc:
        from rlm_sandbox.errors import EngineUnavailable

        raise EngineUnavailable(f"cannot list images: {exc}") from None
    return describe(rows, containers, config)


def remove_images(client, plan: RemovalPlan) -> RemovalPlan:
    """Carry out ``plan``; an image the engine refuses to remove (a container started
    meanwhile) moves to ``kept`` with the engine's reason. Returns what really happened."""
    from docker.errors import APIError, ImageNotFound

    done = RemovalPlan(kept=list(plan.kept))
    for image in plan.remove:
        try:
            client.api.remove_image(image.tag)
            done.remove.append(image)
        except ImageNotFound:
            done.remove.append(image)  # gone already: what was asked holds
        except APIError as exc:
            reason = str(exc.explanation or exc)
            done.kept.append((image, f"the engine refused: {reason}"))
    return done


def image_status(client, config: SandboxConfig) -> tuple[str, bool, int]:
    """``(tag, built, stale)`` for doctor: the configured image's tag, whether it exists,
    and how many of our images are stale."""
    from docker.errors import ImageNotFound

    tag = configured_tag(config)
    try:
        client.api.inspect_image(tag)
        built = True
    except ImageNotFound:
        built = False
    stale = 0 if config.image else sum(i.stale for i in list_images(client, config))
    return tag, built, stale


# ---- for the CLI, which names an engine by its URL and never holds a Docker client


def _client(config: SandboxConfig):
    from rlm_sandbox.sandbox.docker_backend import docker_client

    return docker_client(config.docker_url)


def build_configured_image(
    config: SandboxConfig, *, progress: Progress | None = None, force: bool = False
) -> str:
    """The image a run with ``config`` would use, built if missing (``image build``)."""
    return ensure_image(_client(config), config, progress=progress, force=force)


def list_built_images(config: SandboxConfig) -> list[BuiltImage]:
    """``image ls``: the images rlm-sandbox built on the configured engine."""
    return list_images(_client(config), config)


def remove_built_images(
    config: SandboxConfig, tags: Sequence[str], *, everything: bool, stale: bool, dry_run: bool
) -> RemovalPlan:
    """``image rm``: what was (or, with ``dry_run``, would be) removed and what was kept."""
    client = _client(config)
    plan = plan_removal(list_images(client, config), tags, everything=everything, stale=stale)
    return plan if dry_run else remove_images(client, plan)
