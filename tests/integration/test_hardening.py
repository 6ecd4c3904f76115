"""What the engine was told: every security default of a sandbox, read back with ``docker inspect``."""

from __future__ import annotations

import ast
import json
import os
import uuid
from typing import Any

import pytest

from rlm_sandbox import Sandbox, SandboxConfig
from rlm_sandbox.sandbox.backend import owner_label
from rlm_sandbox.sandbox.docker_backend import docker_client

pytestmark = pytest.mark.docker

ALLOWED_ENV = {"HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "PATH"}
INSIDE_ENV = ALLOWED_ENV | {"HOSTNAME"}  # the engine adds the container hostname


def _bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(float(size[:-1]) * units[size[-1]]) if size[-1] in units else int(size)


@pytest.mark.timeout(600)  # the derived-image case may build it first (about 30 s here, more when busy)
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"memory": "300m", "pids": 77, "cpus": 0.5, "nofile": 128, "tmpfs_size": "8m", "tenant": "acme"},
        {"image_packages": "derived"},  # a derived image (image_packages): the same flags hold
    ],
    ids=["defaults", "custom", "derived-image"],
)
def test_container_is_hardened(
    sandbox_config: SandboxConfig,
    run_id: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    overrides: dict[str, Any],
) -> None:
    if overrides.get("image_packages") == "derived":  # built once, removed at the session's end
        overrides = {"image_packages": list(request.getfixturevalue("test_image_packages"))}
    marker = f"marker-{uuid.uuid4().hex}"
    monkeypatch.setenv("RLM_HARDENING_MARKER", marker)
    monkeypatch.setenv("OPENAI_API_KEY", marker)
    cfg = SandboxConfig.model_validate({**sandbox_config.model_dump(), "node_id": "node-7", **overrides})
    with Sandbox(cfg) as sb:
        assert sb.id is not None
        info = docker_client().api.inspect_container(sb.id)
        host, conf = info["HostConfig"], info["Config"]

        # No network at all.
        assert host["NetworkMode"] == "none"
        assert conf.get("NetworkDisabled") is True
        assert not (info["NetworkSettings"].get("Networks") or {}).get("bridge")
        assert not host.get("PortBindings") and not host.get("PublishAllPorts")
        assert not host.get("ExtraHosts")

        # Read-only root, a small noexec tmpfs, nothing of the host mounted but the sandbox's
        # own input file (read-only, in a private directory this process made for it).
        assert host["ReadonlyRootfs"] is True
        assert set(host["Tmpfs"]) == {"/tmp"}
        opts = host["Tmpfs"]["/tmp"].split(",")
        assert {"noexec", "nosuid", "nodev", f"size={cfg.tmpfs_size}"} <= set(opts)
        assert not host.get("Binds") and not host.get("VolumesFrom") and not conf.get("Volumes")
        assert sb._input_file is not None
        (mount,) = info["Mounts"]
        assert mount["Type"] == "bind" and mount["RW"] is False
        assert (mount["Source"], mount["Destination"]) == (sb._input_file.path, "/run/rlm-input")
        assert host["Mounts"] == [
            {"Target": "/run/rlm-input", "Source": sb._input_file.path, "Type": "bind", "ReadOnly": True}
        ]
        spool = os.stat(os.path.dirname(sb._input_file.path))
        assert spool.st_mode & 0o777 == 0o700 and spool.st_uid == os.getuid()
        assert not host.get("Devices")

        # No privileges.
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
        assert "no-new-privileges" in host["SecurityOpt"]
        assert not any("unconfined" in opt for opt in host["SecurityOpt"])  # default seccomp/AppArmor
        assert host["Privileged"] is False
        user = conf["User"]
        assert user and user.split(":")[0] not in ("", "0", "root")
        assert not host.get("GroupAdd")
        # Namespaces of its own.
        assert host["IpcMode"] == "private"
        assert host.get("PidMode", "") == "" and host.get("UTSMode", "") == ""
        assert host.get("UsernsMode", "") != "host"

        # Limits.
        assert host["Memory"] == _bytes(cfg.memory) and host["MemorySwap"] == host["Memory"]
        assert not host.get("OomKillDisable")
        assert host["PidsLimit"] == cfg.effective_pids()
        assert host["NanoCpus"] == int(cfg.cpus * 1e9)
        assert {"Name": "nofile", "Soft": cfg.nofile, "Hard": cfg.nofile} in host["Ulimits"]
        # PID 1 is the image's supervisor, not Docker's init: it reaps, and it ends the
        # container when the controller's stream goes (rlm_sandbox/kernel/supervisor.py).
        assert not host.get("Init")
        assert conf["Entrypoint"][-1] == "/opt/rlm-kernel/supervisor.py", conf["Entrypoint"]

        # Nothing the sandbox prints is logged on the host.
        assert host["LogConfig"]["Type"] == "none"

        # Nothing of the host's environment.
        env = dict(e.split("=", 1) for e in conf["Env"])
        assert set(env) <= ALLOWED_ENV, env
        assert "RLM_HARDENING_MARKER" not in env and "OPENAI_API_KEY" not in env
        assert marker not in json.dumps(info)
        assert env["HOME"] == "/tmp"

        # Labels for gc: the run, the node, the tenant and the owning controller.
        labels = conf["Labels"]
        assert labels["rlm-sandbox"] == "1"
        assert labels["rlm-sandbox.run"] == run_id
        assert labels["rlm-sandbox.node"] == "node-7"
        assert labels["rlm-sandbox.tenant"] == cfg.tenant
        assert labels["rlm-sandbox.owner"] == owner_label()

        # The stream the host talks over: stdin attached, no tty, EOF on controller death.
        assert conf["OpenStdin"] is True and conf["StdinOnce"] is True and conf["Tty"] is False

        # And from the inside, the kernel agrees.
        r = sb.execute(
            "import os\n"
            "st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
            "print(os.getuid(), st['CapEff'].strip(), st['NoNewPrivs'].strip(), st['Seccomp'].strip())\n"
            "print(sorted(os.environ))\n"
            "print(os.getppid(), open('/proc/1/cmdline').read().split(chr(0))[-2])\n"
            "print(st['Seccomp_filters'].strip() if 'Seccomp_filters' in st else '?')"
        )
        assert r.ok, r
        uid_line, env_line, pid1_line, filters = r.stdout.splitlines()
        assert uid_line == f"{user.split(':')[0]} 0000000000000000 1 2"
        assert set(ast.literal_eval(env_line)) <= INSIDE_ENV, env_line
        assert pid1_line == "1 /opt/rlm-kernel/supervisor.py", pid1_line
        # The engine's seccomp profile and the supervisor's own (where the kernel says).
        assert filters in ("2", "?"), filters
