"""Could a sandbox start now? The engine answers and the image is there: what a service's
health check asks, answered by the layer that owns Docker (nothing above ``sandbox/``
imports docker)."""

from __future__ import annotations

from typing import Any

from rlm_sandbox.sandbox.config import SandboxConfig


def readiness(sandbox: SandboxConfig) -> dict[str, Any]:
    """``{"engine": {...}, "image": {...}, "status": "ok"|"fail"}``. Blocking (Docker's
    client is): call it in a worker thread."""
    from rlm_sandbox.sandbox.docker_backend import docker_client
    from rlm_sandbox.sandbox.image import configured_tag

    report: dict[str, Any] = {"engine": {"ok": False}, "image": {"ok": False, "tag": configured_tag(sandbox)}}
    try:
        client = docker_client(sandbox.docker_url)
        client.ping()
        report["engine"] = {"ok": True}
    except Exception as exc:
        report["engine"] = {"ok": False, "error": f"no Docker engine answers: {type(exc).__name__}"}
        return report | {"status": "fail"}
    try:
        client.api.inspect_image(report["image"]["tag"])
        report["image"]["ok"] = True
    except Exception:
        report["image"]["error"] = "not built yet (the service builds it at start)"
    ok = report["engine"]["ok"] and report["image"]["ok"]
    return report | {"status": "ok" if ok else "fail"}


def build_image(sandbox: SandboxConfig) -> str | None:
    """Build the image if it is missing; the error, if it could not."""
    from rlm_sandbox.sandbox.docker_backend import docker_client
    from rlm_sandbox.sandbox.image import ensure_image

    try:
        ensure_image(docker_client(sandbox.docker_url), sandbox)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
