"""The model clients: one interface (:class:`LMClient`), two paths under it.

``openai/*`` models and OpenAI-compatible ``--api-base`` servers are called over ``httpx``
(:mod:`.openai_compat`), without importing LiteLLM; every other provider goes through
LiteLLM (:mod:`.litellm_client`), imported in the background from the moment a run knows
it needs it. :func:`make_client` picks; :mod:`.base` holds what both share (the response,
the retry policy with its overall deadline, the error messages, the keys' names).
Importing this package imports neither LiteLLM nor httpx.
"""

from rlm_sandbox.rlm.lm.base import LMClient, LMResponse, RetryPolicy
from rlm_sandbox.rlm.lm.factory import make_client, needs_litellm
from rlm_sandbox.rlm.lm.litellm_client import LiteLLMClient, litellm_loaded, preload_litellm, start_preload
from rlm_sandbox.rlm.lm.openai_compat import OpenAICompatClient

__all__ = [
    "LMClient",
    "LMResponse",
    "LiteLLMClient",
    "OpenAICompatClient",
    "RetryPolicy",
    "litellm_loaded",
    "make_client",
    "needs_litellm",
    "preload_litellm",
    "start_preload",
]
