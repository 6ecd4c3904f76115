"""The same scripted conversation through both paths gives the same requests, usage and cost.

The OpenAI-compatible path is ``openai/gpt-4o-mini`` with ``api_base`` (httpx, no LiteLLM);
the LiteLLM path is ``litellm_proxy/gpt-4o-mini`` with the same ``api_base``: a provider
LiteLLM routes itself (not through the fast path) that speaks the OpenAI protocol to the
server, and that LiteLLM prices as gpt-4o-mini. Both hit a scripted server that serves the
name ``gpt-4o-mini``, so the cost is LiteLLM's real price and not zero.
"""

from __future__ import annotations

from typing import Any

import pytest

from rlm_sandbox.rlm.lm import LiteLLMClient, OpenAICompatClient, make_client, preload_litellm
from rlm_sandbox.testing import ScriptedModelServer, sequence_policy

TURNS = [
    ("Look at the first lines of the log.", None),
    ("Count the disk errors in what you printed.", 256),
    ("Give the final answer.", 64),
]
REPLIES = ["I will print the head.\n```repl\nprint(context[:200])\n```", "There are 3 so far.", "FINAL(3)"]


def converse(model: str) -> tuple[list[dict[str, Any]], list[tuple[int, int, float, str]], type]:
    """Three turns of one conversation; the bodies the server received and what each call cost."""
    with ScriptedModelServer(sequence_policy(*REPLIES), served_name="gpt-4o-mini") as server:
        client = make_client(model, api_base=server.url, api_key=server.api_key)
        messages: list[dict[str, str]] = [{"role": "system", "content": "You are an RLM."}]
        calls = []
        for question, max_tokens in TURNS:
            messages.append({"role": "user", "content": question})
            resp = client.completion(messages, max_tokens=max_tokens)
            messages.append({"role": "assistant", "content": resp.text})
            calls.append((resp.prompt_tokens, resp.completion_tokens, resp.cost_usd, resp.text))
        return server.requests.bodies, calls, type(client)


def test_the_same_conversation_through_both_paths() -> None:
    preload_litellm()
    fast_bodies, fast_calls, fast_type = converse("openai/gpt-4o-mini")
    slow_bodies, slow_calls, slow_type = converse("litellm_proxy/gpt-4o-mini")
    assert fast_type is OpenAICompatClient and slow_type is LiteLLMClient
    assert len(fast_bodies) == len(TURNS)
    assert fast_bodies == slow_bodies  # byte for byte what the server was sent
    assert [c[3] for c in fast_calls] == REPLIES
    for fast, slow in zip(fast_calls, slow_calls, strict=True):
        assert fast[:2] == slow[:2]  # usage per call
        assert fast[2] == pytest.approx(slow[2], rel=1e-12) and fast[2] > 0  # LiteLLM's price
    assert fast_bodies[1]["max_tokens"] == 256 and "max_tokens" not in fast_bodies[0]
