"""Shared fixtures. Docker tests need a real engine: in CI a missing engine fails, never skips."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))


def _engine_error() -> str | None:
    try:
        from rlm_sandbox.sandbox.docker_backend import docker_client

        docker_client()
        return None
    except Exception as exc:
        return str(exc)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    error = _engine_error()
    if error is None:
        return
    unavailable(f"no Docker engine ({error}); run scripts/ensure-docker.sh")


@pytest.fixture(scope="session")
def sandbox_image(docker_engine: None) -> str:
    """Build (once) the default sandbox image so no test pays for it."""
    from rlm_sandbox.sandbox.config import SandboxConfig
    from rlm_sandbox.sandbox.docker_backend import docker_client
    from rlm_sandbox.sandbox.image import ensure_image

    return ensure_image(docker_client(), SandboxConfig())


#: The package list tests build derived images with: small, real, pure Python. The images
#: carry it as their ``rlm-sandbox.packages`` label, which is how they are removed after.
TEST_IMAGE_PACKAGES = ("python3-tabulate",)


def remove_test_images() -> list[str]:
    """Remove every image built for TEST_IMAGE_PACKAGES (the derived images and their
    package layer), through the same code as ``rlm-sandbox image rm``; the tags removed."""
    from rlm_sandbox.sandbox.built_images import list_images, plan_removal, remove_images
    from rlm_sandbox.sandbox.config import SandboxConfig
    from rlm_sandbox.sandbox.docker_backend import docker_client

    client = docker_client()
    ours = [i for i in list_images(client, SandboxConfig()) if i.packages == TEST_IMAGE_PACKAGES]
    if not ours:
        return []
    done = remove_images(client, plan_removal(ours, [i.tag for i in ours]))
    assert not done.kept, f"test images kept: {done.kept}"
    return [i.tag for i in done.remove]


@pytest.fixture(scope="session")
def test_image_packages(sandbox_image: str) -> Iterator[tuple[str, ...]]:
    """TEST_IMAGE_PACKAGES, and at the end of the session no image built with them."""
    yield TEST_IMAGE_PACKAGES
    remove_test_images()


@pytest.fixture
def run_id(sandbox_image: str) -> Iterator[str]:
    """A fresh run label; after the test, no container of that run may be left."""
    rid = f"test-{uuid.uuid4().hex[:10]}"
    yield rid
    left = containers_of(rid)
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
    assert not left, f"containers left behind by run {rid}: {left}"


def _labelled(label: str, value: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=rlm-sandbox.{label}={value}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def containers_of(run: str) -> list[str]:
    """Every container (running or not) of one run."""
    return _labelled("run", run)


def tenant_containers(tenant: str) -> list[str]:
    """Every container (running or not) of one tenant."""
    return _labelled("tenant", tenant)


def unavailable(message: str) -> NoReturn:
    """A tool a test needs is missing: a failure in CI (which installs it), else a skip."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def sandbox_config(run_id: str):
    from rlm_sandbox.sandbox.config import SandboxConfig

    return SandboxConfig(run_id=run_id, cell_timeout=20)


@pytest.fixture
def scripted() -> Iterator:
    """A factory of scripted model servers on 127.0.0.1, closed after the test."""
    from rlm_sandbox.testing import ScriptedModelServer

    servers: list[ScriptedModelServer] = []

    def make(policy=None, latency_s: float = 0.0) -> ScriptedModelServer:
        server = ScriptedModelServer(policy, latency_s=latency_s).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def gen_log(tmp_path_factory: pytest.TempPathFactory):
    """Generated logs with known answers, cached per size for the session."""
    from rlm_sandbox.testing import generate_log

    cache: dict[tuple[int, int], object] = {}
    base = tmp_path_factory.mktemp("logs")

    def make(size: int, seed: int = 1):
        key = (size, seed)
        if key not in cache:
            cache[key] = generate_log(base / f"log-{size}-{seed}.txt", size, seed=seed)
        return cache[key]

    return make
