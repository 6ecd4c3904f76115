"""The sandbox image: built on first use, tagged by a hash of what goes into it.

The tag is ``rlm-sandbox:<hash>`` over the Dockerfile, the kernel's files and the base's
name, so a changed kernel gets a new image automatically and an unchanged one is reused.
With no registry reachable, the base is built from Debian's packages by
``images/debian-base/build.sh`` (debootstrap + docker import), also once and cached by tag.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import subprocess
import tarfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from rlm_sandbox.errors import ImageBuildError
from rlm_sandbox.sandbox.config import OFFLINE_BASE, SandboxConfig

Progress = Callable[[str], None]
REPO = "rlm-sandbox"
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


def base_build_script() -> Path:
    return _data_file("images/debian-base/build.sh", "debian-base-build.sh")


def kernel_files() -> dict[str, bytes]:
    pkg = resources.files("rlm_sandbox.kernel")
    return {
        name: (pkg / name).read_bytes()
        for name in ("kernel.py", "loop.py", "protocol.py", "repl.py", "streams.py", "supervisor.py")
    }


def image_tag(base: str) -> str:
    digest = hashlib.sha256()
    digest.update(dockerfile())
    for name, data in sorted(kernel_files().items()):
        digest.update(name.encode() + b"\0" + data)
    digest.update(base.encode())
    return f"{REPO}:{digest.hexdigest()[:16]}"


def _context_tar() -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
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
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise ImageBuildError(f"building the base image {tag} failed:\n{tail}")


def ensure_image(client, config: SandboxConfig, progress: Progress | None = None, force: bool = False) -> str:
    """Return a usable image tag, building the base and the sandbox image if needed."""
    if config.image:
        if not _has_image(client, config.image):
            raise ImageBuildError(
                f"sandbox image {config.image!r} does not exist", hint="build it, or unset image"
            )
        return config.image
    tag = image_tag(config.base_image)
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
        _build(client, config.base_image, tag, progress)
    return tag


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


def _build(client, base: str, tag: str, progress: Progress | None) -> None:
    from docker.errors import DockerException

    say = progress or (lambda _m: None)
    say(f"building sandbox image {tag} on {base}")
    log: list[str] = []
    try:
        stream = client.api.build(
            fileobj=_context_tar(),
            custom_context=True,
            tag=tag,
            buildargs={"BASE": base},
            rm=True,
            forcerm=True,
            network_mode="none",
            decode=True,
            labels={"rlm-sandbox.image": "1"},
        )
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError(
                    f"building {tag} failed: {chunk['error'].strip()}\n" + "".join(log[-10:])
                )
            line = chunk.get("stream") or chunk.get("status") or ""
            if line.strip():
                log.append(line)
                say(line.rstrip())
    except DockerException as exc:
        raise ImageBuildError(f"building {tag} failed: {exc}") from None
    if not _has_image(client, tag):
        raise ImageBuildError(f"building {tag} finished but the image is missing:\n" + "".join(log[-10:]))
