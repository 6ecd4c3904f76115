"""The Docker backend: hardened containers, one per sandbox, through docker-py's low-level API.

Every default here is the safe one (see DESIGN.md, "Security defaults"); each was checked on
Debian's docker.io 20.10 with cgroup v1. The container gets nothing of the host: no network,
no environment variables beyond three fixed harmless ones, no capabilities, and no mount but
one: on an engine of this machine, the sandbox's own input file, read-only (a private file
this process made for it and fills only with the input it is sent anyway; see
:mod:`rlm_sandbox.sandbox.input_file`).
"""

from __future__ import annotations

import os
import threading
import time

from rlm_sandbox.errors import EngineUnavailable, SandboxError, SandboxStartError
from rlm_sandbox.kernel import protocol as P
from rlm_sandbox.sandbox.config import SandboxConfig

from .attach import attach
from .backend import LABEL, ExitInfo, SandboxInfo, Started

DEFAULT_URL = "unix:///var/run/docker.sock"
SANDBOX_UID = "10001:10001"
# The only environment a sandbox gets. Nothing is copied from the host: API keys stay home.
SANDBOX_ENV = {"HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()
_mounts_refused: dict[str, str] = {}
"""Engines that refused the input file's mount (one in a VM behind a local socket): why."""


def engine_url(config_url: str | None = None) -> str:
    return config_url or os.environ.get("DOCKER_HOST") or DEFAULT_URL


def docker_client(url: str | None = None):  # -> docker.DockerClient
    """One client per engine URL for the whole process: connection pools are shared."""

    import docker
    from docker.errors import DockerException

    key = engine_url(url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            try:
                from .engines import docker_tls_config

                tls = docker_tls_config(key)
                client = docker.DockerClient(base_url=key, max_pool_size=128, timeout=60, tls=tls or False)
                client.ping()
            except DockerException as exc:
                raise EngineUnavailable(f"no Docker engine answers at {key}: {exc}") from None
            except OSError as exc:
                raise EngineUnavailable(f"no Docker engine answers at {key}: {exc}") from None
            _clients[key] = client
        return client


def can_mount_input(url: str) -> bool:
    """Only an engine on this machine sees this machine's files: one behind a unix socket
    (a socket forwarded from elsewhere refuses the mount, or its kernel cannot read it, and
    loads stream)."""
    return url.startswith("unix://") and url not in _mounts_refused


def hardened_host_config(api, config: SandboxConfig, input_path: str | None = None) -> dict:
    from docker.types import LogConfig, Mount, Ulimit

    kwargs: dict = dict(
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={config.tmpfs_size},mode=1777"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit=config.memory,
        memswap_limit=config.memory,
        pids_limit=config.effective_pids(),
        nano_cpus=int(config.cpus * 1e9),
        ulimits=[Ulimit(name="nofile", soft=config.nofile, hard=config.nofile)],
        ipc_mode="private",
        shm_size="16m",
        # PID 1 is the image's own supervisor (rlm_sandbox/kernel/supervisor.py): it reaps as
        # Docker's init did and also ends the container when the controller's stream goes.
        init=False,
        privileged=False,
        # Frames are not logs: nothing the sandbox prints is kept on the host's disk.
        log_config=LogConfig(type="none"),
    )
    if input_path is not None:
        kwargs["mounts"] = [Mount(target=P.INPUT_FILE, source=input_path, type="bind", read_only=True)]
    if config.runtime:
        kwargs["runtime"] = config.runtime
    return api.create_host_config(**kwargs)


class DockerBackend:
    name = "docker"

    def __init__(self, url: str | None = None) -> None:
        self.url = engine_url(url)
        self.client = docker_client(self.url)
        self.api = self.client.api

    def ensure_image(self, config: SandboxConfig, progress: object = None) -> str:
        from .image import ensure_image

        return ensure_image(self.client, config, progress=progress)

    def start(
        self, config: SandboxConfig, image: str, labels: dict[str, str], input_path: str | None = None
    ) -> Started:
        if input_path is None or not can_mount_input(self.url):
            return self._start(config, image, labels, None)
        try:
            return self._start(config, image, labels, input_path)
        except SandboxStartError as exc:
            if "mount" not in str(exc).lower():
                raise
            # An engine that cannot mount this machine's file (a VM, a socket forwarded from
            # elsewhere): its sandboxes stream their input from now on.
            _mounts_refused[self.url] = str(exc)
            return self._start(config, image, labels, None)

    def _start(
        self, config: SandboxConfig, image: str, labels: dict[str, str], input_path: str | None
    ) -> Started:
        from docker.errors import APIError, DockerException, ImageNotFound

        t0 = time.perf_counter()

        try:
            created = self.api.create_container(
                image=image,
                user=SANDBOX_UID,
                stdin_open=True,  # with detach=False this also sets StdinOnce: the engine closes
                detach=False,  # stdin when the controller's connection goes; PID 1 then ends all
                tty=False,
                environment=dict(SANDBOX_ENV),
                labels=labels,
                network_disabled=True,
                working_dir="/tmp",
                hostname="sandbox",
                host_config=hardened_host_config(self.api, config, input_path),
            )
        except ImageNotFound:
            raise SandboxStartError(
                f"sandbox image {image!r} is missing", hint="run `rlm-sandbox image build`"
            ) from None
        except APIError as exc:
            raise SandboxStartError(
                f"the engine refused to create a sandbox: {exc.explanation or exc}"
            ) from None
        except (DockerException, OSError) as exc:
            raise EngineUnavailable(f"the Docker engine failed while creating a sandbox: {exc}") from None
        cid = created["Id"]
        from .registry import live

        live.add(self, cid)
        try:
            stream = attach(self.url, cid, self.api.api_version, timeout_s=config.start_timeout)
            try:
                self.api.start(cid)
            except BaseException:
                stream.close()
                raise
        except APIError as exc:
            self.remove(cid)
            msg = str(exc.explanation or exc)
            hint = None
            if config.runtime and "runtime" in msg.lower():
                hint = f"the engine has no runtime {config.runtime!r}; run scripts/ensure-docker.sh or drop --runtime"
            raise SandboxStartError(f"the sandbox did not start: {msg}", hint=hint) from None
        except BaseException:
            self.remove(cid)
            raise
        return Started(
            id=cid, stream=stream, start_s=time.perf_counter() - t0, input_file=input_path is not None
        )

    def exit_info(self, sandbox_id: str, wait_s: float = 0.0) -> ExitInfo:
        from docker.errors import DockerException, NotFound

        deadline = time.monotonic() + wait_s
        while True:
            try:
                state = self.api.inspect_container(sandbox_id)["State"]
            except NotFound:
                return ExitInfo(exists=False)
            except (DockerException, OSError) as exc:
                return ExitInfo(exists=False, error=f"engine error: {exc}")
            running = bool(state.get("Running"))
            if not running or time.monotonic() >= deadline:
                return ExitInfo(
                    exists=True,
                    running=running,
                    exit_code=None if running else state.get("ExitCode"),
                    oom_killed=bool(state.get("OOMKilled")),
                    error=state.get("Error") or "",
                )
            time.sleep(0.05)

    def kill(self, sandbox_id: str) -> None:
        from docker.errors import DockerException

        try:
            self.api.kill(sandbox_id)
        except (DockerException, OSError):
            pass

    def remove(self, sandbox_id: str) -> bool:
        """Force-remove; True if it was there. Never raises: cleanup must not fail cleanup."""
        from docker.errors import DockerException, NotFound

        from .registry import live

        try:
            self.api.remove_container(sandbox_id, force=True, v=True)
            return True
        except NotFound:
            return False
        except (DockerException, OSError):
            return False
        finally:
            live.discard(self, sandbox_id)

    def list(self, labels: dict[str, str]) -> list[SandboxInfo]:
        from docker.errors import DockerException

        filters = [LABEL] + [f"{k}={v}" for k, v in labels.items()]
        try:
            rows = self.api.containers(all=True, filters={"label": filters})
        except (DockerException, OSError) as exc:
            raise SandboxError(f"cannot list sandboxes: {exc}") from None
        return [
            SandboxInfo(
                id=r["Id"],
                name=(r.get("Names") or ["?"])[0].lstrip("/"),
                status=r.get("State", "") or r.get("Status", ""),
                labels=r.get("Labels") or {},
            )
            for r in rows
        ]

    def runtimes(self) -> list[str]:
        try:
            return sorted((self.api.info().get("Runtimes") or {}).keys())
        except Exception:
            return []
