"""rlm-sandbox: Recursive Language Models whose code runs in hardened containers.

Names are imported lazily so that ``import rlm_sandbox`` (and the CLI's ``--help``) stays
fast: docker-py and LiteLLM are loaded only when something needs them.
"""

from __future__ import annotations

from rlm_sandbox.lazy_names import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "Sandbox": "rlm_sandbox.sandbox.core",
    "ExecResult": "rlm_sandbox.sandbox.core",
    "SandboxConfig": "rlm_sandbox.sandbox.config",
    "collect_garbage": "rlm_sandbox.sandbox.gc",
    "GCReport": "rlm_sandbox.sandbox.gc",
    "RLM": "rlm_sandbox.rlm.api",
    "RecursiveLanguageModel": "rlm_sandbox.rlm.api",
    "RLMConfig": "rlm_sandbox.rlm.config",
    "RLMResult": "rlm_sandbox.rlm.result",
    "Session": "rlm_sandbox.rlm.session",
    "AsyncRLM": "rlm_sandbox.rlm.aio",
    "AsyncSession": "rlm_sandbox.rlm.aio",
    "Cancellation": "rlm_sandbox.rlm.outcome",
    "LiteLLMClient": "rlm_sandbox.rlm.lm",
    "InputSet": "rlm_sandbox.inputs",
    "collect_inputs": "rlm_sandbox.inputs",
    "Citation": "rlm_sandbox.rlm.citations",
}
_ERRORS = [
    "RLMSandboxError",
    "ConfigError",
    "SandboxError",
    "EngineUnavailable",
    "ImageBuildError",
    "SandboxStartError",
    "SandboxCrashed",
    "CellTimeout",
    "ProtocolViolation",
    "HostMemoryExceeded",
    "SandboxClosed",
    "LMError",
    "BudgetExhausted",
    "InputTooLarge",
    "AnswerInvalid",
    "RunCancelled",
    "EXIT_CODES",
]
for _name in _ERRORS:
    _EXPORTS[_name] = "rlm_sandbox.errors"

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
