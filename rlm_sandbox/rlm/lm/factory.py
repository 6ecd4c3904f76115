"""Which client a model string gets: the OpenAI protocol over ``httpx`` where that is what
LiteLLM would speak anyway (no LiteLLM import at all), LiteLLM for every other provider (its
import started at once, in the background)."""

from __future__ import annotations

from typing import Any

from rlm_sandbox.rlm.lm.base import LMClient
from rlm_sandbox.rlm.lm.litellm_client import LiteLLMClient
from rlm_sandbox.rlm.lm.openai_compat import OpenAICompatClient, is_openai_compatible

__all__ = ["make_client", "needs_litellm"]


def needs_litellm(model: str, api_base: str | None = None) -> bool:
    """Whether calls to ``model`` go through LiteLLM (so its import should start now)."""
    return not is_openai_compatible(model, api_base)


def make_client(
    model: str,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    max_retries: int = 4,
    **options: Any,
) -> LMClient:
    """The client for ``model``: :class:`OpenAICompatClient` for ``openai/*`` and OpenAI-compatible
    servers, :class:`LiteLLMClient` (whose import starts in the background) for the rest."""
    cls = LiteLLMClient if needs_litellm(model, api_base) else OpenAICompatClient
    return cls(
        model, api_base=api_base, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, **options
    )
