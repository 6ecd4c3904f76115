"""OpenAI-compatible endpoints over ``httpx``: ``openai/*`` models and any ``--api-base`` server
(vLLM, Ollama, LM Studio, llama.cpp's server, OpenRouter, a gateway, the scripted model).

Why not LiteLLM here: its import costs seconds (7.8 s idle, 18 s busy on a 2-core machine,
BerriAI/litellm#2677) before the first request can leave. Why not the ``openai`` SDK: its
import alone costs 1.1-2.3 s there, most of the budget for a first request within 1.5 s
of process start. ``httpx`` (0.2-0.5 s; already installed as a dependency of both) does
what the protocol needs: one POST per call, pooled keep-alive connections shared by every
thread, proxies from the environment, timeouts.

The behaviour is LiteLLM's, so a run does not change when it takes this path: the same
request body (``max_tokens`` becomes ``max_completion_tokens`` for the o-series and GPT-5
models, as LiteLLM maps it), the key from ``api_key`` or OPENAI_API_KEY (no key at all for a
named server that needs none), the base URL from ``api_base`` or OPENAI_BASE_URL /
OPENAI_API_BASE, costs from LiteLLM's own price map (:mod:`rlm_sandbox.rlm.prices`,
cached prompt tokens at the cache-read rate, the served model's price when the map has one,
as LiteLLM's ``completion_cost`` picks it). Retries, deadlines and messages are the shared
ones of :mod:`rlm_sandbox.rlm.lm.base`.

Everything the server sends is untrusted: the body is read up to a size limit, checked to
be a chat completion, and anything else is reported as a short, sanitised excerpt.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from rlm_sandbox.errors import LMError
from rlm_sandbox.rlm.lm.base import (
    OPENAI_BASE_ENV,
    Failure,
    GaveUp,
    LMResponse,
    Messages,
    RetryPolicy,
    lm_error,
    missing_key,
    scrub,
)
from rlm_sandbox.rlm.lm.openai_wire import (
    checked_payload,
    encode_body,
    retry_after_header,
    take_chunk,
    token_count,
    transport_failures,
)
from rlm_sandbox.rlm.prices import model_entry, price_of
from rlm_sandbox.untrusted_json import valid_text

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_BASE", "OpenAICompatClient", "is_openai_compatible", "request_body"]

DEFAULT_BASE = "https://api.openai.com/v1"
#: Connecting gets at most this long (the OpenAI SDK's default): a connect that hangs is
#: retried while the call's deadline leaves time, whereas waiting for the answer may use all of it.
CONNECT_TIMEOUT_S = 5.0


def _name(model: str) -> str:
    """The model name the server is sent: without the ``openai/`` provider prefix."""
    return model.split("/", 1)[1] if model.startswith("openai/") else model


def is_openai_compatible(model: str, api_base: str | None = None) -> bool:
    """Whether ``model`` is called over the OpenAI protocol without LiteLLM: the ``openai``
    provider (any server), a bare name LiteLLM files under ``openai``, or a bare name LiteLLM
    does not know that is sent to a named server. Models LiteLLM serves through OpenAI's
    Responses API (``mode: responses`` in its price map, e.g. ``o1-pro``) stay with LiteLLM,
    and so does every other provider (``anthropic/``, ``hosted_vllm/``, ``ollama/``, ...)."""
    if "/" in model:
        provider, name = model.split("/", 1)
        if provider != "openai" or name.startswith("responses/"):
            return False
    else:
        name = model
    entry = model_entry(model) if "/" in model else model_entry(name)
    if entry is not None:
        if entry.get("mode") == "responses":
            return False
        if "/" not in model:
            return entry.get("litellm_provider") == "openai" and entry.get("mode") in (None, "chat")
        return True
    return "/" in model or bool(api_base)


def _reasoning_model(name: str) -> bool:
    """LiteLLM's rule for the o-series and GPT-5 models (``OpenAIOSeriesConfig``,
    ``OpenAIGPT5Config``): they take ``max_completion_tokens`` and no temperature but 1."""
    short = name.split("/")[-1]
    if len(short) > 1 and short[0] == "o" and short[1].isdigit():
        entry = model_entry(short)
        return bool(entry and entry.get("litellm_provider") == "openai")
    return any(marker in name for marker in ("gpt-5", "gpt-6")) and "gpt-5-chat" not in short


def request_body(
    model: str,
    messages: Messages,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The chat-completions body LiteLLM sends for these arguments (``drop_params=True``)."""
    name = _name(model)
    body: dict[str, Any] = {
        k: v for k, v in (extra or {}).items() if k not in ("stream", "model", "messages")
    }
    body["model"] = name
    body["messages"] = list(messages)
    reasoning = _reasoning_model(name)
    if temperature is not None and not (reasoning and temperature != 1):
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_completion_tokens" if reasoning else "max_tokens"] = max_tokens
    return body


_PROXY_ENV = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class OpenAICompatClient:
    """A thread-safe client of an OpenAI-compatible chat-completions endpoint (see the module).

    Arguments are those of :class:`~rlm_sandbox.rlm.lm.litellm_client.LiteLLMClient`, so the
    factory can pick either; ``extra`` fields are added to every request body.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
        retry_wait_s: float = 0.2,
        retry_max_wait_s: float = 8.0,
    ) -> None:
        if not model or not isinstance(model, str):
            raise ValueError("model must be a non-empty model string, e.g. openai/gpt-4o-mini")
        if max_retries < 1:
            raise ValueError("max_retries counts attempts and must be >= 1")
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.temperature = temperature
        self.extra: dict[str, Any] = dict(extra or {})
        self.retry_wait_s = retry_wait_s
        self.retry_max_wait_s = retry_max_wait_s
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._aclients: weakref.WeakKeyDictionary[Any, httpx.AsyncClient] = weakref.WeakKeyDictionary()
        # Now, in the thread that makes the run, so the first call has nothing left to import.
        # The clients themselves are made on first use: the engine only ever needs the async
        # one (:meth:`_ahttp`); the sync one serves direct ``completion`` calls.
        import httpx  # noqa: F401

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatClient(model={self.model!r}, api_base={self.api_base!r}, timeout_s={self.timeout_s})"

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.retry_wait_s, self.retry_max_wait_s)

    # ------------------------------------------------------------------ where and who

    def base_url(self) -> str:
        """``api_base``, else OPENAI_BASE_URL / OPENAI_API_BASE, else OpenAI's own API."""
        for value in (self.api_base, *(os.environ.get(n) for n in OPENAI_BASE_ENV)):
            if value and value.strip():
                return value.strip().rstrip("/")
        return DEFAULT_BASE

    def _key(self) -> str | None:
        """The key as LiteLLM would find it: given, LiteLLM's globals when it is loaded, the env."""
        if self._api_key:
            return self._api_key
        litellm = sys.modules.get("litellm")
        for attr in ("api_key", "openai_key"):
            value = getattr(litellm, attr, None) if litellm is not None else None
            if isinstance(value, str) and value.strip():
                return value
        value = os.environ.get("OPENAI_API_KEY", "").strip()
        return value or None

    def check_credentials(self) -> None:
        """Raise :class:`LMError` (kind ``auth``) when a key is certainly missing: no key, and
        no named server that might need none. Nothing is sent."""
        if self._key() is not None:
            return
        name = missing_key(self.model, api_base=self.api_base, api_key=None)
        if name is not None:
            raise lm_error(
                Failure("auth", no_key=True), model=self.model, api_base=None, attempts=0, timeout_s=0
            )

    def prepare(self) -> None:
        """Nothing to prepare: the HTTP client was made with this client."""

    def _http(self) -> httpx.Client:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import httpx

                    # The OpenAI SDK's pool sizes; one client for every thread of the run.
                    self._client = httpx.Client(
                        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                        **self._transport_options(),
                    )
        return self._client

    def _ahttp(self) -> httpx.AsyncClient:
        """The running loop's client: an ``httpx.AsyncClient`` belongs to the loop it was
        first used on (the engine's, or an ``AsyncRLM`` caller's)."""
        import asyncio

        import httpx

        loop = asyncio.get_running_loop()
        with self._client_lock:
            client = self._aclients.get(loop)
            if client is None:
                client = self._aclients[loop] = httpx.AsyncClient(
                    limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                    **self._transport_options(),
                )
        return client

    def _transport_options(self) -> dict[str, Any]:
        """Redirects followed, as the OpenAI SDK does, and TLS verified; except for a plain
        ``http://`` server reached without a proxy (a local vLLM, Ollama, llama.cpp, the
        scripted model): no TLS is ever spoken to it, so none is set up (loading the CA
        bundle is a twentieth of a second of the first call), and its redirects are not
        followed, so no request can leave it for an ``https://`` URL unverified."""
        plain = self.base_url().lower().startswith("http://")
        if plain and not any(os.environ.get(name) for name in _PROXY_ENV):
            return {"verify": False, "follow_redirects": False}
        return {"follow_redirects": True}

    async def aclose(self) -> None:
        """Close the pooled connections, this loop's and the sync client's: the run that
        made this client is over."""
        import asyncio

        with self._client_lock:
            aclient = self._aclients.pop(asyncio.get_running_loop(), None)
        if aclient is not None:
            await aclient.aclose()
        self.close()

    def close(self) -> None:
        """Close the pooled connections (the process's exit does it too)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ calling

    def _request(
        self, messages: Messages, max_tokens: int | None
    ) -> tuple[str, bytes, dict[str, str], str | None]:
        """The URL, body, headers and key of one chat completion (built once, sent by every attempt)."""
        body = request_body(
            self.model, messages, max_tokens=max_tokens, temperature=self.temperature, extra=self.extra
        )
        data = encode_body(body)
        del body
        url = self.base_url() + "/chat/completions"
        key = self._key()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        org = os.environ.get("OPENAI_ORGANIZATION") or os.environ.get("OPENAI_ORG_ID")
        if org and url.startswith(DEFAULT_BASE):
            headers["OpenAI-Organization"] = org
        return url, data, headers, key

    def completion(
        self, messages: Messages, *, timeout_s: float | None = None, max_tokens: int | None = None
    ) -> LMResponse:
        """One chat completion, retried on transient failures within ``timeout_s`` in all."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        url, data, headers, key = self._request(messages, max_tokens)
        start = time.perf_counter()
        try:
            payload, attempts = self.policy.run(
                lambda left: self._attempt(url, data, headers, left, key),
                timeout_s=timeout,
                kind_of=_kind,
                retry_after=_hinted_wait,
            )
        except GaveUp as gave_up:
            raise self._to_lm_error(gave_up, timeout, key) from gave_up.cause
        return self._to_response(payload, time.perf_counter() - start, attempts, key)

    async def acompletion(
        self, messages: Messages, *, timeout_s: float | None = None, max_tokens: int | None = None
    ) -> LMResponse:
        """:meth:`completion` on the event loop: no thread waits for the model."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        url, data, headers, key = self._request(messages, max_tokens)
        start = time.perf_counter()
        try:
            payload, attempts = await self.policy.arun(
                lambda left: self._aattempt(url, data, headers, left, key),
                timeout_s=timeout,
                kind_of=_kind,
                retry_after=_hinted_wait,
            )
        except GaveUp as gave_up:
            raise self._to_lm_error(gave_up, timeout, key) from gave_up.cause
        return self._to_response(payload, time.perf_counter() - start, attempts, key)

    async def _aattempt(
        self, url: str, data: bytes, headers: dict[str, str], left: float, key: str | None
    ) -> dict[str, Any]:
        """:meth:`_attempt` over the loop's ``httpx.AsyncClient``."""
        import httpx

        deadline = time.monotonic() + left
        with transport_failures(key):
            async with self._ahttp().stream(
                "POST",
                url,
                content=data,
                headers=headers,
                timeout=httpx.Timeout(left, connect=min(left, CONNECT_TIMEOUT_S)),
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size = take_chunk(chunks, chunk, size, deadline)
                raw = b"".join(chunks)
                status = response.status_code
                retry_after = retry_after_header(response.headers.get("retry-after"))
                ctype = response.headers.get("content-type", "")
        return checked_payload(status, raw, ctype, retry_after, key)

    def _attempt(
        self, url: str, data: bytes, headers: dict[str, str], left: float, key: str | None
    ) -> dict[str, Any]:
        """One POST within ``left`` seconds: the parsed completion, or a :class:`Failure`."""
        import httpx

        deadline = time.monotonic() + left
        with (
            transport_failures(key),
            self._http().stream(
                "POST",
                url,
                content=data,
                headers=headers,
                timeout=httpx.Timeout(left, connect=min(left, CONNECT_TIMEOUT_S)),
            ) as response,
        ):
            raw = self._read(response, deadline)
            status = response.status_code
            retry_after = retry_after_header(response.headers.get("retry-after"))
            ctype = response.headers.get("content-type", "")
        return checked_payload(status, raw, ctype, retry_after, key)

    @staticmethod
    def _read(response: httpx.Response, deadline: float) -> bytes:
        """The body, up to :data:`~rlm_sandbox.rlm.lm.openai_wire.MAX_RESPONSE_BYTES` and the call's deadline (checked between
        reads: a server that trickles its answer cannot hold the call past it)."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size = take_chunk(chunks, chunk, size, deadline)
        return b"".join(chunks)

    # ------------------------------------------------------------------ results

    def _to_response(
        self, payload: dict[str, Any], latency: float, attempts: int, key: str | None
    ) -> LMResponse:
        message = payload["choices"][0]["message"]
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0
        served = payload.get("model") if isinstance(payload.get("model"), str) else None
        return LMResponse(
            # A lone surrogate ("\ud800" in the JSON) is not text: it would break the trace and
            # the next request. Made valid here, as on the LiteLLM path.
            text=valid_text(message.get("content") or ""),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=self._cost(served, prompt, completion, cached),
            latency_s=latency,
            model=scrub(served, key, 200) if served else self.model,
            attempts=attempts,
        )

    def _cost(self, served: str | None, prompt: int, completion: int, cached: int) -> float:
        """LiteLLM's ``completion_cost``: the served model's price when the map has one, else
        the configured model's, else nothing that can be counted."""
        price = price_of(f"openai/{served}") if served else None
        if price is None:
            price = price_of(self.model)
        return price.cost(prompt, completion, cached) if price is not None else 0.0

    # ------------------------------------------------------------------ errors

    def _to_lm_error(self, gave_up: GaveUp, timeout: float, key: str | None) -> LMError:
        exc = gave_up.cause
        failure = (
            exc if isinstance(exc, Failure) else Failure("other", scrub(f"{type(exc).__name__}: {exc}", key))
        )
        return lm_error(
            failure,
            model=self.model,
            api_base=self.base_url() if (self.api_base or self.base_url() != DEFAULT_BASE) else None,
            attempts=gave_up.attempts,
            timeout_s=timeout,
            deadline=gave_up.deadline,
        )


def _kind(exc: BaseException) -> str:
    return exc.kind if isinstance(exc, Failure) else "other"


def _hinted_wait(exc: BaseException) -> float | None:
    return exc.retry_after_s if isinstance(exc, Failure) else None
