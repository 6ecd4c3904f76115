"""What a run is made of before it starts: its id, its set-up, its model-response cache.

Why it is its own module: ``RLM`` builds a :class:`RunSetup` once and every run or session
opens from it (:meth:`rlm_sandbox.rlm.run.Run.begin`); the CLI and the MCP server only need
:func:`new_run_id`, and importing it from here does not load the run's lifecycle.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlm_sandbox.errors import ConfigError

if TYPE_CHECKING:
    from rlm_sandbox.rlm.config import RLMConfig
    from rlm_sandbox.rlm.models import ModelRouter
    from rlm_sandbox.rlm.tools import ToolSet
    from rlm_sandbox.sandbox.backend import Backend
    from rlm_sandbox.trace.writer import Listener


def new_run_id(kind: str = "run") -> str:
    """A run's id: its kind, when it began (sortable), and a random part (unique)."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RunSetup:
    """What a run (or a session) is made of before it has a task: built once by ``RLM``."""

    config: RLMConfig
    make_models: Callable[[], ModelRouter]
    tools: ToolSet
    listeners: Sequence[Listener] = ()
    model: str | None = None
    sub_model: str | None = None
    backend: Backend | None = None  # None: the engine the sandbox config names (Docker)


def open_cache(config: RLMConfig) -> Any:
    """The run's model-response cache, when ``lm_cache`` names a directory."""
    if not config.lm_cache:
        return None
    from rlm_sandbox.rlm.lm_cache import LMCache

    try:
        return LMCache(config.lm_cache, config.lm_cache_max_bytes)
    except OSError as exc:
        raise ConfigError(
            f"cannot use {config.lm_cache} as the model-response cache: {exc.strerror or exc}",
            hint="give --lm-cache a directory you can write (it is created if missing)",
        ) from None
