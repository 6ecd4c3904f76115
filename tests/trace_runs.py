"""Real runs (real containers, the scripted model on loopback) whose traces the trace tools read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.result import RLMResult

COUNT = 'How many lines contain "ERROR disk"?'


def traced_run(server: Any, context: Any, trace: Path, run_id: str, **cfg: Any) -> RLMResult:
    """One run with its trace written to ``trace``; ``cfg`` overrides RLMConfig fields."""
    config = RLMConfig(api_base=server.url, lm_retries=3, trace=str(trace), **cfg)
    rlm = RLM(model=server.model_name, config=config, api_key=server.api_key)
    return rlm.run(context=context, task=COUNT, run_id=run_id)
