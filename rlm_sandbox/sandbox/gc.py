"""Remove what a dead controller left behind, found by the labels every container carries.

A container belongs to a live controller when its owner label names this host and a pid
that still runs with the same start time; everything else with our label is garbage.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from .backend import LABEL_OWNER, LABEL_TENANT, Backend, SandboxInfo, process_start_ticks


@dataclass(slots=True)
class GCReport:
    removed: list[SandboxInfo] = field(default_factory=list)
    kept: list[SandboxInfo] = field(default_factory=list)
    dry_run: bool = False


def owner_alive(owner: str) -> bool:
    try:
        host, pid_s, ticks = owner.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True  # another machine's controller: not ours to judge
    return process_start_ticks(pid) == ticks and ticks != "0"


def collect_garbage(
    backend: Backend | None = None,
    *,
    tenant: str | None = None,
    run_id: str | None = None,
    include_live: bool = False,
    dry_run: bool = False,
) -> GCReport:
    """Remove sandboxes whose controller is gone (or all of them with ``include_live``)."""
    if backend is None:
        from .docker_backend import DockerBackend

        backend = DockerBackend()
    labels: dict[str, str] = {}
    if tenant:
        labels[LABEL_TENANT] = tenant
    if run_id:
        labels["rlm-sandbox.run"] = run_id
    report = GCReport(dry_run=dry_run)
    for info in backend.list(labels):
        if not include_live and owner_alive(info.labels.get(LABEL_OWNER, "")):
            report.kept.append(info)
            continue
        if dry_run or backend.remove(info.id):
            report.removed.append(info)
    return report
