"""A model client that plays a scripted policy in-process: no HTTP server, no LiteLLM.

With :class:`~rlm_sandbox.sandbox.fake.FakeBackend` it runs the whole controller in a unit
test: the same policies as the scripted server (``rlm_policy`` really chunks ``context`` and
fans out with ``llm_query_batched``), the same token counts the server reports, and the cost
LiteLLM's price map gives the model name (``openai/gpt-4o`` costs money, ``scripted`` is
free). A policy's :class:`HTTPReply` becomes the :class:`LMError` a real client raises for
that status, so failure paths are testable too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from rlm_sandbox.errors import LMError
from rlm_sandbox.rlm.lm import LMResponse
from rlm_sandbox.rlm.prices import price_of
from rlm_sandbox.testing.policies import messages_of, rlm_policy
from rlm_sandbox.testing.replies import HTTPReply, Policy

#: What a status means to the engine (the kind decides retries and hints).
_KINDS = {401: "auth", 403: "auth", 404: "not_found", 400: "bad_request", 408: "timeout", 429: "rate_limit"}


def estimate_tokens(text: str) -> int:
    """The scripted server's count: about four characters a token, at least one."""
    return max(1, (len(text) + 3) // 4)


class ScriptedClient:
    """``completion(messages, ...)`` answers from ``policy``; every request is kept."""

    def __init__(
        self, policy: Policy = rlm_policy, *, model: str = "scripted", latency_s: float = 0.0
    ) -> None:
        self.model = model
        self.policy = policy
        self.latency_s = latency_s
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def completion(
        self, messages: list[dict[str, str]], *, timeout_s: float | None = None, max_tokens: int | None = None
    ) -> LMResponse:
        t0 = time.perf_counter()
        request = self._record(messages, max_tokens)
        if self.latency_s:
            time.sleep(self.latency_s if timeout_s is None else min(self.latency_s, timeout_s))
        return self._answer(request, messages, timeout_s, t0)

    def _record(self, messages: list[dict[str, str]], max_tokens: int | None) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        with self._lock:
            self.requests.append(request)
        return request

    def _answer(
        self, request: dict[str, Any], messages: list[dict[str, str]], timeout_s: float | None, t0: float
    ) -> LMResponse:
        if self.latency_s and timeout_s is not None and self.latency_s > timeout_s:
            raise LMError(f"model {self.model!r} did not answer within {timeout_s:g} s", kind="timeout")
        reply = self.policy(request)
        if isinstance(reply, HTTPReply):
            kind = _KINDS.get(reply.status, "server" if reply.status >= 500 else "bad_request")
            error = reply.body.get("error") if isinstance(reply.body, dict) else None
            message = str(
                error.get("message", f"status {reply.status}") if isinstance(error, dict) else reply.status
            )
            raise LMError(
                f"scripted {reply.status}: {message}", kind=kind, status_code=reply.status, model=self.model
            )
        prompt = estimate_tokens("".join(m["content"] for m in messages_of(request)))
        completion = estimate_tokens(reply)
        price = price_of(self.model)
        cost = price.cost(prompt, completion) if price is not None else 0.0
        return LMResponse(reply, prompt, completion, cost, time.perf_counter() - t0, self.model)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)


class AsyncScriptedClient(ScriptedClient):
    """A :class:`ScriptedClient` with ``acompletion``: the engine awaits it on its loop, as it
    does the HTTP clients, so no thread waits for it (its ``latency_s`` is slept on the loop).
    Its policy runs on the loop: it must not block."""

    async def acompletion(
        self, messages: list[dict[str, str]], *, timeout_s: float | None = None, max_tokens: int | None = None
    ) -> LMResponse:
        t0 = time.perf_counter()
        request = self._record(messages, max_tokens)
        if self.latency_s:
            await asyncio.sleep(self.latency_s if timeout_s is None else min(self.latency_s, timeout_s))
        return self._answer(request, messages, timeout_s, t0)
