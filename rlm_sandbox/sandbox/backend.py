"""The one small interface a container engine implements; everything above is engine-agnostic.

A backend starts a hardened sandbox and hands back its byte stream (already attached, so no
byte the kernel writes at start is lost), reports why a sandbox exited, kills and removes
it, and lists or removes sandboxes by label (for ``gc``). Docker is the first backend; a
Kubernetes one would map the same calls onto pods and their attach stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from rlm_sandbox.sandbox.config import SandboxConfig

from .attach import AttachStream

LABEL = "rlm-sandbox"
LABEL_RUN = "rlm-sandbox.run"
LABEL_NODE = "rlm-sandbox.node"
LABEL_TENANT = "rlm-sandbox.tenant"
LABEL_OWNER = "rlm-sandbox.owner"


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
