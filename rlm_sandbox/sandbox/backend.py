"""The one small interface a container engine implements; everything above is engine-agnostic.

A backend starts a hardened sandbox and hands back its byte stream (already attached, so no
byte the kernel writes at start is lost), reports why a sandbox exited, kills and removes
it, and lists or removes sandboxes by label (for ``gc``). Docker is the first backend; a
Kubernetes one would map the same calls onto pods and their attach stream.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from rlm_sandbox.sandbox.config import SandboxConfig

from .attach import AttachStream

LABEL = "rlm-sandbox"
LABEL_RUN = "rlm-sandbox.run"
LABEL_NODE = "rlm-sandbox.node"
LABEL_TENANT = "rlm-sandbox.tenant"
LABEL_OWNER = "rlm-sandbox.owner"


def sandbox_labels(config: SandboxConfig, owner_pid: int | None = None) -> dict[str, str]:
    """The labels of a sandbox's container: what ``gc`` and the budgets find it by."""
    return {
        **config.labels,
        LABEL: "1",
        LABEL_RUN: config.run_id or "adhoc",
        LABEL_NODE: config.node_id or uuid.uuid4().hex[:12],
        LABEL_TENANT: config.tenant,
        LABEL_OWNER: owner_label(owner_pid),
    }


def owner_label(pid: int | None = None) -> str:
    """Who owns a container (``gc`` keeps those of live owners): this process, or ``pid``."""
    import socket

    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid)}"


def process_start_ticks(pid: int) -> str:
    """A pid's start time in clock ticks: a pid reused by another process gets a new one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().rsplit(b")", 1)[1].split()
        return stat[19].decode()
    except (OSError, IndexError):
        return "0"


@dataclass(slots=True)
class Started:
    id: str
    stream: AttachStream
    start_s: float
    input_file: bool = False  # the input file asked for is mounted (sandbox/input_file.py)


@dataclass(slots=True)
class ExitInfo:
    exists: bool
    running: bool = False
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""


@dataclass(slots=True)
class SandboxInfo:
    id: str
    name: str
    status: str
    labels: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def start(
        self, config: SandboxConfig, image: str, labels: dict[str, str], input_path: str | None = None
    ) -> Started:
        """Start a hardened sandbox; ``input_path``, when the backend can, is mounted
        read-only at the kernel's input file (``Started.input_file`` says if it was)."""
        ...

    def exit_info(self, sandbox_id: str, wait_s: float = 0.0) -> ExitInfo: ...

    def kill(self, sandbox_id: str) -> None: ...

    def remove(self, sandbox_id: str) -> bool: ...

    def list(self, labels: dict[str, str]) -> list[SandboxInfo]: ...

    def ensure_image(self, config: SandboxConfig, progress: object = None) -> str: ...
