"""``GET /healthz``: could a run start now? The Docker engine answers and the sandbox image
is there. 200 when both hold, else 503 with what is missing (for a load balancer, and for
a person). The image is built in the background when the service starts, as ``run`` would
build it on first use; until it is there the service is not healthy.
"""

from __future__ import annotations

from typing import Any

from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.readiness import build_image, readiness


def check(sandbox: SandboxConfig) -> dict[str, Any]:
    """Blocking (Docker's client is): call it in a worker thread."""
    return readiness(sandbox)


def ensure_image(sandbox: SandboxConfig) -> str | None:
    """Build the image if it is missing; the error, if it could not."""
    return build_image(sandbox)
