"""One exception tree for the whole engine, so callers catch what they can act on.

::

    RLMSandboxError                 anything raised on purpose by rlm_sandbox (status "error")
    ├── ConfigError                 a setting is invalid; nothing was started ("usage")
    ├── SandboxError                the sandbox or its engine failed ("sandbox_error")
    │   ├── EngineUnavailable       no Docker engine answers
    │   ├── ImageBuildError         the sandbox image could not be built
    │   ├── SandboxStartError       a container did not start (or its runtime is missing)
    │   ├── SandboxCrashed          the container exited (OOM, signal, exit code)
    │   ├── CellTimeout             a cell did not yield within timeout + grace: killed
    │   ├── ProtocolViolation       the kernel sent something it must not: killed
    │   ├── HostMemoryExceeded      its requests would make the host hold too much: killed
    │   └── SandboxClosed           the sandbox was used after it was closed
    ├── LMError                     the model failed after retries ("lm_error")
    ├── RunCancelled                the caller cancelled the run ("cancelled")
    ├── BudgetExhausted             a shared budget ran out ("budget_exhausted")
    │   └── InputTooLarge           the input (decompressed) passed --max-input-bytes
    └── AnswerInvalid               a typed answer never matched its schema ("answer_invalid")

Every error carries a ``status`` (the ``status`` of ``--json``), and the process exit code of
each status is defined once, in :data:`EXIT_CODES`. Every message says what happened and,
where there is one, what to change (``hint``). Fields are declared in ``__init__``; nothing
is attached to an exception from outside.
"""

from __future__ import annotations

from typing import ClassVar

#: The exit code of every outcome, for the CLI and for ``RLMResult.exit_code``.
EXIT_CODES: dict[str, int] = {
    "ok": 0,  # answered
    "error": 1,  # an unexpected failure (a bug of ours)
    "usage": 2,  # a usage or configuration error: nothing was started
    "budget_exhausted": 3,  # a budget ran out (the answer may be a fallback)
    "sandbox_error": 4,  # a sandbox or its engine failed
    "lm_error": 5,  # the model failed after retries
    "answer_invalid": 6,  # a typed answer (--schema) never matched its schema
    "interrupted": 130,  # Ctrl-C: the run was stopped and its containers removed
    "cancelled": 130,  # cancelled by its caller (an asyncio task, DELETE /v1/runs/ID): stopped, cleaned up
}


def exit_code(status: str) -> int:
    """The process exit code of an outcome (``RLMResult.status`` or ``RLMSandboxError.status``)."""
    return EXIT_CODES.get(status, EXIT_CODES["error"])


class RLMSandboxError(Exception):
    """Base of every error this package raises on purpose."""

    hint: str = ""
    status: ClassVar[str] = "error"

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

    status = "usage"


class SandboxError(RLMSandboxError):
    """The sandbox or the engine under it failed; the container is gone."""

    status = "sandbox_error"


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
        self.exit_code = exit_code  # the container's, not this process's


class CellTimeout(SandboxError):
    """A cell ran past its limit and the kernel did not yield within the grace period."""

    hint = "raise cell_timeout (--cell-timeout) or make the cell do less; the namespace was lost"


class ProtocolViolation(SandboxError):
    """The kernel sent a frame that breaks the protocol (size, schema, type, id, flood)."""

    hint = "the code in the sandbox tampered with the kernel's channel; the container was killed"


class HostMemoryExceeded(SandboxError):
    """The host would have to hold more of a sandbox's requests than its bounds allow: killed.

    ``setting`` names the bound that could not be honoured (``max_held_bytes``,
    ``max_run_held_bytes`` or ``held_stall_timeout``); ``needed`` and ``limit`` are bytes."""

    def __init__(
        self,
        message: str,
        *,
        setting: str,
        needed: int | None = None,
        limit: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint or f"raise {setting} if the cell legitimately needs this")
        self.setting = setting
        self.needed = needed
        self.limit = limit


class SandboxClosed(SandboxError):
    hint = "create a new Sandbox; a closed one cannot be reused"


class LMError(RLMSandboxError):
    """The model call failed after retries (auth, provider, network, bad model name).

    ``kind`` says what a caller can do about it (``auth``, ``not_found``, ``bad_request``,
    ``bad_response`` (the server answered something that is not a chat completion),
    ``bad_config`` (the server's URL is unusable), ``timeout``, ``rate_limit``,
    ``connection``, ``server``, ``other``) and decides retries: only ``rate_limit``,
    ``timeout``, ``connection`` and ``server`` are retried. ``attempts`` is 0 when the call
    was refused before any request (a key that is not set).
    """

    status = "lm_error"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        kind: str = "other",
        attempts: int = 1,
        status_code: int | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind
        self.attempts = attempts
        self.status_code = status_code
        self.model = model


class BudgetExhausted(RLMSandboxError):
    """A budget shared by the recursion tree ran out; ``budget`` names which.

    ``fallback_answer`` is the model's best answer from what it found, when the root was
    asked for one after the stop (see :mod:`rlm_sandbox.rlm.fallback`)."""

    status = "budget_exhausted"

    def __init__(
        self, budget: str, message: str, *, hint: str | None = None, fallback_answer: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.budget = budget
        self.fallback_answer = fallback_answer


def format_bytes(n: float) -> str:
    """``8 GiB``, ``512 MiB``, ``1.5 KiB``, ``300 B``: a size as people read it."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(n)} B"


class InputTooLarge(BudgetExhausted):
    """The input became larger than the cap on it (``--max-input-bytes``, or the tenant's):
    a file too large, or a compressed one that decompressed past it (a gzip bomb). The load
    stopped there: the container never held more than the cap. ``file`` names the input
    that crossed it, ``cap`` is the cap in bytes. No fallback answer is asked for."""

    def __init__(self, file: str, cap: int, source: str = "--max-input-bytes") -> None:
        super().__init__(
            "max_input_bytes",
            f"the input passed its cap of {format_bytes(cap)} ({source}) at {file}; "
            "the load was stopped there",
            hint="raise --max-input-bytes if the input is really that large, or give fewer "
            "files (--glob); a small compressed file that decompresses past it is a bomb",
        )
        self.file = file
        self.cap = cap


class RunCancelled(RLMSandboxError):
    """The run was cancelled by its caller (an asyncio task cancelled, ``DELETE
    /v1/runs/ID``): its cells were interrupted, its calls abandoned, its containers removed."""

    status = "cancelled"


class AnswerInvalid(RLMSandboxError):
    """The model's answer still did not match the schema after the allowed retries."""

    status = "answer_invalid"
    hint = "loosen the schema, raise --schema-retries (schema_retries), or use a stronger model"


def outcome_of(exc: BaseException) -> tuple[str, str | None]:
    """``(status, budget)`` of an exception: what ``--json`` says of a run it ended."""
    if isinstance(exc, BudgetExhausted):
        return exc.status, exc.budget
    if isinstance(exc, RLMSandboxError) and exc.status != "usage":
        return exc.status, None
    return "error", None
