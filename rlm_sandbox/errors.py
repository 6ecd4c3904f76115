"""One exception tree for the whole engine, so callers catch what they can act on.

::

    RLMSandboxError                 anything raised on purpose by rlm_sandbox
    ├── ConfigError                 a setting is invalid (usage error, exit 2)
    ├── SandboxError                the sandbox or its engine failed (exit 4)
    │   ├── EngineUnavailable       no Docker engine answers
    │   ├── ImageBuildError         the sandbox image could not be built
    │   ├── SandboxStartError       a container did not start (or its runtime is missing)
    │   ├── SandboxCrashed          the container exited (OOM, signal, exit code)
    │   ├── CellTimeout             a cell did not yield within timeout + grace: killed
    │   ├── ProtocolViolation       the kernel sent something it must not: killed
    │   └── SandboxClosed           the sandbox was used after it was closed
    ├── LMError                     the model failed after retries (exit 5)
    └── BudgetExhausted             a shared budget ran out (exit 3)

Every message says what happened and, where there is one, what to change (``hint``).
"""

from __future__ import annotations


class RLMSandboxError(Exception):
    """Base of every error this package raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        base = self.message
        return f"{base} (hint: {self.hint})" if self.hint else base


class ConfigError(RLMSandboxError):
    """A setting or argument is invalid; nothing was started."""


class SandboxError(RLMSandboxError):
    """The sandbox or the engine under it failed; the container is gone."""


class EngineUnavailable(SandboxError):
    hint = "start a Docker engine (scripts/ensure-docker.sh) or point DOCKER_HOST at one"


class ImageBuildError(SandboxError):
    hint = "run `rlm-sandbox image build` to see the full build log"


class SandboxStartError(SandboxError):
    """A container could not be created or started."""


class SandboxCrashed(SandboxError):
    """The container exited while we needed it; ``reason`` says why (OOM, exit code)."""

    def __init__(
        self, message: str, *, reason: str = "", exit_code: int | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.exit_code = exit_code


class CellTimeout(SandboxError):
    """A cell ran past its limit and the kernel did not yield within the grace period."""

    hint = "raise cell_timeout (--cell-timeout) or make the cell do less; the namespace was lost"


class ProtocolViolation(SandboxError):
    """The kernel sent a frame that breaks the protocol (size, schema, type, id, flood)."""

    hint = "the code in the sandbox tampered with the kernel's channel; the container was killed"


class SandboxClosed(SandboxError):
    hint = "create a new Sandbox; a closed one cannot be reused"


class LMError(RLMSandboxError):
    """The model call failed after retries (auth, provider, network, bad model name)."""


class BudgetExhausted(RLMSandboxError):
    """A budget shared by the recursion tree ran out; ``budget`` names which."""

    def __init__(self, budget: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.budget = budget
