"""What one Docker engine says about itself, for ``doctor``: its version, cgroup support and
runtimes, whether an image exists, and the settings it really gave a container.

``doctor`` must not depend on Docker's client library (the sandbox package is the only one
that imports ``docker``), so it reads an engine through this small object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlm_sandbox.errors import EngineUnavailable

#: Seconds a doctor's request may take: a hung engine must not hang the doctor.
FACTS_TIMEOUT_S = 10


@dataclass
class EngineFacts:
    url: str
    version: str
    api_version: str
    info: dict[str, Any]
    client: Any  # docker.DockerClient: for the sandbox package's own helpers only

    @classmethod
    def read(cls, url: str, timeout: float = FACTS_TIMEOUT_S) -> EngineFacts:
        """Ask the engine at ``url``; :class:`EngineUnavailable` when it does not answer."""
        import docker

        try:
            client = docker.DockerClient(base_url=url, timeout=timeout)
            version = client.version()
            info = client.info()
        except Exception as exc:  # docker-py raises DockerException, requests' errors, OSError
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise EngineUnavailable(f"no engine answers at {url}: {reason}") from None
        return cls(url, str(version.get("Version", "?")), str(version.get("ApiVersion", "?")), info, client)

    @property
    def runtimes(self) -> list[str]:
        return sorted((self.info.get("Runtimes") or {}).keys())

    def image_exists(self, tag: str) -> bool:
        from docker.errors import ImageNotFound

        try:
            self.client.api.inspect_image(tag)
            return True
        except ImageNotFound:
            return False

    def host_config(self, container_id: str) -> dict[str, Any]:
        """The HostConfig the engine applied to a container (what ``docker inspect`` shows)."""
        return dict(self.client.api.inspect_container(container_id)["HostConfig"])
