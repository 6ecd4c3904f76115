"""A scripted model server and a long-lived service for the tests of ``rlm-sandbox serve``;
tests that stop their service start one of their own (``fresh_service``)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm_sandbox.testing import ScriptedModelServer

from .harness import Service, containers_with, policy, start_service

#: Tenants of the shared service: limits the tests check are held.
TENANTS = {
    "a": {"max_runs": 4, "max_queued": 10, "max_containers": 3},
    "b": {"max_runs": 2, "max_queued": 10},
    "c": {"max_runs": 3, "max_queued": 10},
    "small": {"max_runs": 1, "max_queued": 1, "max_input_bytes": "1m"},
}
#: A project file in the service's working directory, trusted with --trust-project: its
#: tenant must still get nowhere.
INTRUDER_TOKEN = "tok-intruder-from-a-project-file"
PROJECT_FILE = """
depth = 1
[tenants.intruder]
token_sha256 = "{digest}"
max_runs = 100
"""


@pytest.fixture(scope="session")
def model_server() -> Iterator[ScriptedModelServer]:
    server = ScriptedModelServer(policy).start()
    yield server
    server.close()


def _stop(service: Service) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        service.stop(signal.SIGTERM, timeout=60)
    if service.proc.poll() is None:
        service.proc.kill()
    for name in service.tenants.values():
        assert containers_with("rlm-sandbox.tenant", name) == [], f"containers of tenant {name} left"


@pytest.fixture(scope="session")
def service(
    sandbox_image: str, model_server: ScriptedModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    import hashlib

    tmp = tmp_path_factory.mktemp("serve")
    project = tmp / "project"
    project.mkdir()
    (project / ".git").mkdir()
    digest = hashlib.sha256(INTRUDER_TOKEN.encode()).hexdigest()
    (project / "rlm-sandbox.toml").write_text(PROJECT_FILE.format(digest=digest))
    svc = start_service(tmp, model_server, TENANTS, args=("--trust-project",), cwd=project)
    yield svc
    _stop(svc)


@pytest.fixture
def fresh_service(sandbox_image: str, model_server: ScriptedModelServer, tmp_path: Path) -> Iterator:
    started: list[Service] = []

    def make(tenants: dict, **kw) -> Service:
        svc = start_service(tmp_path, model_server, tenants, **kw)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        _stop(svc)
