"""The sandbox image: built on first use, tagged by a hash of what goes into it.

The tag is ``rlm-sandbox:<hash>`` over the Dockerfile, the kernel's files and the base's
name, so a changed kernel gets a new image automatically and an unchanged one is reused.
With no registry reachable, the base is built from Debian's packages by
``images/debian-base/build.sh`` (debootstrap + docker import), also once and cached by tag.

A derived image (``image_packages``) is the same recipe on another base: first a package
layer, ``rlm-sandbox-packages:<hash>`` over ``images/packages/packages.Dockerfile``, the base
and the sorted package list (apt in a build with the host's network: the base's Debian
mirror, no registry), then ``sandbox.Dockerfile`` on top of that layer exactly as on the
plain base. So the kernel, the non-root user, the entrypoint and the run-time flags are the
default image's, a kernel change rebuilds only the small kernel layer, and the same package
set (in any order) is built once. Every image built here carries labels saying what it was
built from, which ``rlm-sandbox image ls``/``rm`` (:mod:`.built_images`) read back.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from rlm_sandbox.errors import ImageBuildError
from rlm_sandbox.sandbox.config import OFFLINE_BASE, SandboxConfig
from rlm_sandbox.sandbox.packages import check_package_names

Progress = Callable[[str], None]
REPO = "rlm-sandbox"
PACKAGES_REPO = "rlm-sandbox-packages"
#: Labels of every image built here: its kind ("1" a sandbox image, "packages" a package
#: layer), the image it was built on, the configured base, the package list (sorted, spaces).
LABEL_IMAGE = "rlm-sandbox.image"
LABEL_FROM = "rlm-sandbox.from"
LABEL_BASE = "rlm-sandbox.base"
LABEL_PACKAGES = "rlm-sandbox.packages"
KIND_SANDBOX, KIND_PACKAGES = "1", "packages"
_ROOT = Path(__file__).resolve().parents[2]
_LOCK_PATH = "/tmp/rlm-sandbox-image.lock"


def _data_file(repo_rel: str, packaged: str) -> Path:
    """A file of the checkout, or its copy packaged into the wheel."""
    candidate = _ROOT / repo_rel
    if candidate.exists():
        return candidate
    path = Path(str(resources.files("rlm_sandbox") / "_data" / packaged))
    if not path.exists():
        raise ImageBuildError(f"{repo_rel} is missing from this installation")
    return path


def dockerfile() -> bytes:
    return _data_file("sandbox.Dockerfile", "sandbox.Dockerfile").read_bytes()


def packages_dockerfile() -> bytes:
    return _data_file("images/packages/packages.Dockerfile", "packages.Dockerfile").read_bytes()


def base_build_script() -> Path:
    return _data_file("images/debian-base/build.sh", "debian-base-build.sh")


def kernel_files() -> dict[str, bytes]:
    pkg = resources.files("rlm_sandbox.kernel")
    return {
        name: (pkg / name).read_bytes()
        for name in (
            "kernel.py",
            "loop.py",
            "protocol.py",
            "repl.py",
            "seccomp_filter.py",
            "streams.py",
            "supervisor.py",
        )
    }


def image_tag(base: str) -> str:
    digest = hashlib.sha256()
    digest.update(dockerfile())
    for name, data in sorted(kernel_files().items()):
        digest.update(name.encode() + b"\0" + data)
    digest.update(base.encode())
    return f"{REPO}:{digest.hexdigest()[:16]}"


def packages_tag(packages: Iterable[str], base: str) -> str:
    """The package layer's tag: the same set of names in any order, on the same base and
    recipe, is the same layer. Raises ConfigError for a name that is not a package name."""
    names = check_package_names(packages)
    digest = hashlib.sha256()
    digest.update(packages_dockerfile() + b"\0" + base.encode() + b"\0")
    digest.update("\n".join(names).encode())
    return f"{PACKAGES_REPO}:{digest.hexdigest()[:16]}"


def sandbox_tag(base: str, packages: Iterable[str] = ()) -> str:
    """The sandbox image for ``base`` plus ``packages`` (none: the default image)."""
    names = check_package_names(packages)
    return image_tag(packages_tag(names, base) if names else base)


def configured_tag(config: SandboxConfig) -> str:
    """The image a sandbox with ``config`` runs, whether it is built yet or not."""
    return config.image or sandbox_tag(config.base_image, config.image_packages)


def _context_tar(dockerfile_bytes: bytes | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if dockerfile_bytes is not None:  # the package layer needs its Dockerfile only
            entries = {"Dockerfile": dockerfile_bytes}
        else:
            entries = {"Dockerfile": dockerfile()} | {f"kernel/{k}": v for k, v in kernel_files().items()}
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _has_image(client, tag: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.api.inspect_image(tag)
        return True
    except ImageNotFound:
        return False


def build_base(
    client, tag: str = OFFLINE_BASE, progress: Progress | None = None, force: bool = False
) -> None:
    if not force and _has_image(client, tag):
        return
    say = progress or (lambda _m: None)
    say(f"building the offline base {tag} from Debian packages (about 40 s, once)")
    cmd = ["bash", str(base_build_script()), tag] + (["--force"] if force else [])
    # The script says what it is doing (debootstrap, import): passed on as it happens, so a
    # first build is never minutes of silence; the last lines explain a failure.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines = [*lines[-14:], raw.rstrip("\n")]
        if raw.startswith("debian-base: "):
            say(raw.strip())
    if proc.wait() != 0:
        tail = "\n".join(lines)
        raise ImageBuildError(f"building the base image {tag} failed:\n{tail}")


def image_if_built(client, config: SandboxConfig) -> str | None:
    """The image ``ensure_image`` would return when nothing needs building; else None."""
    if config.image:
        return config.image if _has_image(client, config.image) else None
    tag = sandbox_tag(config.base_image, check_package_names(config.image_packages))
    return tag if _has_image(client, tag) else None


def ensure_image(client, config: SandboxConfig, progress: Progress | None = None, force: bool = False) -> str:
    """Return a usable image tag, building the base, the package layer (``image_packages``)
    and the sandbox image if needed. A built image costs one inspect: no build, no lock."""
    if config.image:
        if not _has_image(client, config.image):
            raise ImageBuildError(
                f"sandbox image {config.image!r} does not exist", hint="build it, or unset image"
            )
        return config.image
    packages = check_package_names(config.image_packages)  # again: a model_construct'ed config
    tag = sandbox_tag(config.base_image, packages)
    if not force and _has_image(client, tag):
        return tag
    with open(_LOCK_PATH, "w") as lock:  # one build at a time, across processes too
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _has_image(client, tag):
            return tag
        if not _has_image(client, config.base_image):
            if config.base_image == OFFLINE_BASE:
                build_base(client, config.base_image, progress)
            else:
                _pull(client, config.base_image, progress)
        built_on = config.base_image
        if packages:
            built_on = packages_tag(packages, config.base_image)
            if force or not _has_image(client, built_on):
                _build_packages(client, config.base_image, packages, built_on, progress, fresh=force)
        _build(client, built_on, tag, progress, _labels(KIND_SANDBOX, built_on, config.base_image, packages))
    return tag


def _labels(kind: str, built_on: str, base: str, packages: tuple[str, ...]) -> dict[str, str]:
    return {LABEL_IMAGE: kind, LABEL_FROM: built_on, LABEL_BASE: base, LABEL_PACKAGES: " ".join(packages)}


def _build_packages(
    client, base: str, packages: tuple[str, ...], tag: str, progress: Progress | None, fresh: bool = False
) -> None:
    """apt-get install ``packages`` on ``base``. The build has the host's network: the
    engine's default bridge may be missing (no ``docker0`` on these machines), and apt only
    talks to the Debian mirror in the base's sources.list. The names were checked against
    Debian's rules, so the unquoted ``$PACKAGES`` in the RUN line splits into names only.
    ``fresh`` (``image build --force``) skips the engine's build cache: apt runs again."""
    say = progress or (lambda _m: None)
    say(f"building the package layer {tag} on {base}: apt-get install {' '.join(packages)}")
    _run_build(
        client,
        tag,
        progress,
        fileobj=_context_tar(packages_dockerfile()),
        buildargs={"BASE": base, "PACKAGES": " ".join(packages)},
        network_mode="host",
        labels=_labels(KIND_PACKAGES, base, base, packages),
        nocache=fresh,
        hint=(
            "check the names (packages.debian.org, the base's release) and that the base's Debian "
            "mirror answers from this machine; the log's last lines are above"
        ),
    )


def _pull(client, base: str, progress: Progress | None) -> None:
    from docker.errors import DockerException

    if progress:
        progress(f"pulling base image {base}")
    try:
        client.images.pull(base)
    except DockerException as exc:
        raise ImageBuildError(
            f"cannot pull base image {base!r}: {exc}",
            hint=f"no registry reachable? use the offline base ({OFFLINE_BASE})",
        ) from None


def _build(
    client, base: str, tag: str, progress: Progress | None, labels: dict[str, str] | None = None
) -> None:
    say = progress or (lambda _m: None)
    say(f"building sandbox image {tag} on {base}")
    _run_build(
        client,
        tag,
        progress,
        fileobj=_context_tar(),
        buildargs={"BASE": base},
        network_mode="none",
        labels=labels or _labels(KIND_SANDBOX, base, base, ()),
    )


def _build_failure(error: str, log: list[str]) -> str:
    """What went wrong, readable: the step's exit code (not its whole shell text), the
    errors apt printed (``E: ...``), then the last lines of the log."""
    error = re.sub(r"The command '.*' returned", "the RUN step returned", error.strip(), flags=re.S)
    text = "".join(log[-40:])
    apt = [m.strip() for m in re.findall(r"E: [^\n]*?(?=E: |\n|$)", text)]
    head = f"{'; '.join(dict.fromkeys(apt))} ({error})" if apt else error
    tail = (line if len(line) <= 160 else line[:157].rstrip() + "...\n" for line in log[-10:])
    return head + "\n" + "".join(tail)


def _run_build(
    client,
    tag: str,
    progress: Progress | None,
    *,
    fileobj: io.BytesIO,
    buildargs: dict[str, str],
    network_mode: str,
    labels: dict[str, str],
    hint: str | None = None,
    nocache: bool = False,
) -> None:
    from docker.errors import DockerException

    say = progress or (lambda _m: None)
    log: list[str] = []
    try:
        stream = client.api.build(
            fileobj=fileobj,
            custom_context=True,
            tag=tag,
            buildargs=buildargs,
            rm=True,
            forcerm=True,
            network_mode=network_mode,
            decode=True,
            labels=labels,
            nocache=nocache,
        )
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError(
                    f"building {tag} failed: {_build_failure(chunk['error'], log)}", hint=hint
                )
            line = chunk.get("stream") or chunk.get("status") or ""
            if line.strip():
                log.append(line)
                say(line.rstrip())
    except DockerException as exc:
        raise ImageBuildError(f"building {tag} failed: {exc}", hint=hint) from None
    if not _has_image(client, tag):
        raise ImageBuildError(f"building {tag} finished but the image is missing:\n" + "".join(log[-10:]))
