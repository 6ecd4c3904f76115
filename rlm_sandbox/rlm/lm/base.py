"""What every model client shares: the interface the engine calls, the answer it gets back,
the retry policy, the error mapping and the keys' names.

Two clients implement :class:`LMClient`: :class:`~rlm_sandbox.rlm.lm.openai_compat.OpenAICompatClient`
speaks the OpenAI chat-completions protocol over ``httpx`` (``openai/*`` models, any
OpenAI-compatible ``--api-base`` server: no LiteLLM import, so the first request leaves in
a fraction of a second), and :class:`~rlm_sandbox.rlm.lm.litellm_client.LiteLLMClient`
reaches every other provider through LiteLLM. Above them the engine sees one interface, and
what a user sees of a failure is decided here, once, for both:

- **retries** (:class:`RetryPolicy`): only for what a retry can fix (rate limits, timeouts,
  connection failures, 5xx), exponential backoff with jitter, the provider's Retry-After
  honoured, and the call's ``timeout_s`` an overall deadline: every attempt and every wait
  together stay inside it;
- **errors** (:func:`lm_error`): one :class:`~rlm_sandbox.errors.LMError` with a ``kind`` a
  caller can act on, a message that says what came back and from where, and a hint that fits
  it (a refused key names the variable to set; garbage from a server is not "wait and run
  again");
- **keys** (:func:`key_env`, :func:`missing_key`): the environment variable a provider's
  key is read from, so a missing key is found before any container starts, and never a key's
  value in any message (:func:`scrub`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from rlm_sandbox.errors import LMError

__all__ = [
    "RETRYABLE_KINDS",
    "Failure",
    "GaveUp",
    "LMClient",
    "LMResponse",
    "Messages",
    "RetryPolicy",
    "excerpt",
    "key_env",
    "lm_error",
    "missing_key",
    "provider_of",
    "scrub",
    "shown_url",
]

Messages = Sequence[dict[str, str]]
T = TypeVar("T")


@dataclass
class LMResponse:
    """One model answer with what it cost, so budgets and the trace can account for it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    """Wall time of the whole call, retries and backoff included: what the caller waited."""
    model: str
    attempts: int = 1
    """How many HTTP attempts it took (1 when the first one succeeded)."""


@runtime_checkable
class LMClient(Protocol):
    """What the engine needs of a model client; one instance serves every concurrent call.

    ``completion`` makes one chat completion, retried on transient failures, within
    ``timeout_s`` seconds in all (attempts and backoff together; None: the client's own
    limit); ``max_tokens`` bounds the completion and is sent to the provider when given.
    It returns an :class:`LMResponse` or raises :class:`~rlm_sandbox.errors.LMError`.
    """

    model: str

    def completion(
        self, messages: Messages, *, timeout_s: float | None = None, max_tokens: int | None = None
    ) -> LMResponse: ...


# --------------------------------------------------------------------------- failures

#: Kinds a retry can fix. Everything else fails at once: a second try of a refused key, a
#: bad request or a server that answers garbage costs time and says nothing new.
RETRYABLE_KINDS = frozenset({"rate_limit", "timeout", "connection", "server"})


@dataclass
class Failure(Exception):
    """One failed attempt, classified: what the retry policy and :func:`lm_error` read.

    ``detail`` is already scrubbed and short; ``retry_after_s`` is the provider's Retry-After;
    ``denied`` marks a 403 (the key is valid but may not use this model)."""

    kind: str
    detail: str = ""
    status_code: int | None = None
    retry_after_s: float | None = None
    denied: bool = False
    context_window: bool = False
    no_key: bool = False  # refused before any request: the key's variable is not set
    key_sent: bool | None = None  # whether the refused request carried a key (None: unknown)

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


class GaveUp(Exception):
    """The retry policy stopped: ``cause`` is the last attempt's exception."""

    def __init__(self, cause: BaseException, attempts: int, deadline: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.attempts = attempts
        self.deadline = deadline  # True when the overall deadline, not the attempt count, stopped it


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, backoff and an overall deadline for one call.

    ``attempts`` is the total number of attempts for a transient failure (so 1 means no
    retry). ``wait_s`` is the first backoff, doubling up to ``max_wait_s``, with jitter so
    that many threads hit by one rate limit do not retry in lockstep; a Retry-After from the
    provider lengthens the wait (up to ``max_wait_s``). No wait and no attempt reaches past
    the deadline: an attempt is given the time left as its own timeout, and when the time
    left cannot cover the next wait, the policy gives up with the last failure.
    """

    attempts: int = 4
    wait_s: float = 0.2
    max_wait_s: float = 8.0

    def _retrying(
        self,
        timeout_s: float,
        kind_of: Callable[[BaseException], str],
        retry_after: Callable[[BaseException], float | None],
    ) -> dict[str, Any]:
        """tenacity's arguments for this policy: the same for the sync and the async call."""
        from tenacity import (
            RetryCallState,
            retry_if_exception,
            stop_after_attempt,
            stop_before_delay,
            wait_exponential_jitter,
        )

        backoff = wait_exponential_jitter(multiplier=self.wait_s, max=self.max_wait_s, jitter=self.wait_s)

        def wait(state: RetryCallState) -> float:
            delay = backoff(state)
            exc = state.outcome.exception() if state.outcome is not None else None
            hinted = retry_after(exc) if exc is not None else None
            if hinted is not None:
                delay = max(delay, min(hinted, self.max_wait_s))
            return delay

        return {
            # No wait that ends past the deadline (less a moment for a useful attempt after it).
            "stop": stop_after_attempt(self.attempts) | stop_before_delay(max(0.0, timeout_s - 0.05)),
            "wait": wait,
            "retry": retry_if_exception(lambda exc: kind_of(exc) in RETRYABLE_KINDS),
            "reraise": True,
        }

    def run(
        self,
        attempt: Callable[[float], T],
        *,
        timeout_s: float,
        kind_of: Callable[[BaseException], str],
        retry_after: Callable[[BaseException], float | None] = lambda exc: None,
    ) -> tuple[T, int]:
        """``attempt(seconds_left)`` until it returns; ``(result, attempts)``, or :class:`GaveUp`."""
        from tenacity import Retrying

        deadline = time.monotonic() + timeout_s
        count = 0

        def call() -> T:
            nonlocal count
            count += 1
            return attempt(max(deadline - time.monotonic(), 0.001))

        try:
            return Retrying(**self._retrying(timeout_s, kind_of, retry_after))(call), count
        except Exception as exc:
            cut = count < self.attempts and kind_of(exc) in RETRYABLE_KINDS
            raise GaveUp(exc, count, deadline=cut) from exc

    async def arun(
        self,
        attempt: Callable[[float], Awaitable[T]],
        *,
        timeout_s: float,
        kind_of: Callable[[BaseException], str],
        retry_after: Callable[[BaseException], float | None] = lambda exc: None,
    ) -> tuple[T, int]:
        """:meth:`run` for an awaitable ``attempt``: the waits between attempts are slept on
        the loop."""
        from tenacity import AsyncRetrying

        deadline = time.monotonic() + timeout_s
        count = 0

        async def call() -> T:
            nonlocal count
            count += 1
            return await attempt(max(deadline - time.monotonic(), 0.001))

        try:
            return await AsyncRetrying(**self._retrying(timeout_s, kind_of, retry_after))(call), count
        except Exception as exc:
            cut = count < self.attempts and kind_of(exc) in RETRYABLE_KINDS
            raise GaveUp(exc, count, deadline=cut) from exc


# --------------------------------------------------------------------------- keys

# Providers whose key LiteLLM reads from exactly these variables (any one of them is enough;
# the first is the one to name). Only providers whose credentials cannot come from anywhere
# else are listed: for them a missing key is certain before any request. Bedrock, Vertex,
# Azure, Anthropic (workload identity) and local providers have other ways in, so for them
# the provider's own 401/403 is the signal. tests/unit/test_lm_base.py checks this table
# against LiteLLM's ``validate_environment``.
KEY_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "groq": ("GROQ_API_KEY",),
    "mistral": ("MISTRAL_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "together_ai": ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY", "TOGETHER_AI_API_KEY"),
    "cerebras": ("CEREBRAS_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY", "OR_API_KEY"),
}
# Variables named in hints only (the provider's 401 is the signal, see above).
_HINT_ENV = {
    "anthropic": "ANTHROPIC_API_KEY",
    "azure": "AZURE_API_KEY",
    "cohere": "COHERE_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY",
}
#: Variables that point ``openai/*`` at another server, as LiteLLM and the OpenAI SDK read them.
OPENAI_BASE_ENV = ("OPENAI_BASE_URL", "OPENAI_API_BASE")


def provider_of(model: str) -> str:
    """The LiteLLM provider of a model string: its prefix, or (for a bare name) the provider
    LiteLLM's price map files it under, else ``openai``."""
    if "/" in model:
        return model.split("/", 1)[0]
    from rlm_sandbox.rlm.prices import model_entry

    entry = model_entry(model)
    provider = entry.get("litellm_provider") if entry else None
    return provider if isinstance(provider, str) and provider else "openai"


def key_env(model: str) -> str:
    """The environment variable the key of ``model``'s provider is read from (for messages)."""
    provider = provider_of(model)
    if provider in KEY_ENV:
        return KEY_ENV[provider][0]
    return _HINT_ENV.get(provider, f"{provider.upper()}_API_KEY")


def _set(name: str, env: dict[str, str] | os._Environ[str]) -> bool:
    return bool((env.get(name) or "").strip())


def missing_key(
    model: str, *, api_base: str | None, api_key: str | None, env: dict[str, str] | None = None
) -> str | None:
    """The variable to set when ``model`` certainly cannot be called for want of a key, else None.

    No key is needed when one is given, or when a server is named (``api_base``, or
    OPENAI_BASE_URL / OPENAI_API_BASE for ``openai/*``): local servers often need none, and
    their 401 says so soon enough. Providers outside :data:`KEY_ENV` are never refused here.
    """
    environ = os.environ if env is None else env
    if (api_key or "").strip() or (api_base or "").strip():
        return None
    if "/" not in model:
        from rlm_sandbox.rlm.prices import model_entry

        if model_entry(model) is None:
            return None  # a name nobody knows: LiteLLM's own error says more than a key would
    provider = provider_of(model)
    names = KEY_ENV.get(provider)
    if names is None:
        return None
    if provider == "openai" and any(_set(n, environ) for n in OPENAI_BASE_ENV):
        return None
    if any(_set(n, environ) for n in names):
        return None
    return names[0]


# --------------------------------------------------------------------------- text from outside

_SECRETISH = re.compile(r"\b(sk|pk|rk|key|xai|gsk)-[A-Za-z0-9_\-]{6,}")
_BEARER = re.compile(r"(?i)\b(bearer\s+)([^\s\"',;]{6,})")
_ASSIGNED = re.compile(
    r"(?i)\b(api[_-]?key|x-api-key|access[_-]?token|token)([\"']?\s*[:=]\s*[\"']?)([^\s\"',;&]{6,})"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def scrub(text: str, key: str | None = None, limit: int = 300) -> str:
    """Text from a provider or a server, safe to show: no key (the one in use, anything shaped
    like one, a bearer token), no control characters (a hostile server's terminal escapes),
    one line, at most ``limit`` characters."""
    if key:
        text = text.replace(key, "***")
    text = _SECRETISH.sub(lambda m: m.group(1) + "-***", text)
    text = _BEARER.sub(lambda m: m.group(1) + "***", text)
    text = _ASSIGNED.sub(lambda m: m.group(1) + m.group(2) + "***", text)
    text = _CONTROL.sub(" ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_url(url: str) -> str:
    """A server's URL as it may be shown: no password, no query values (some gateways take
    their key as ``?api-key=...``)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        query = "&".join(
            f"{kv.split('=', 1)[0]}=***" if "=" in kv else kv for kv in parts.query.split("&") if kv
        )
        return scrub(urlunsplit(parts._replace(netloc=netloc, query=query)), limit=200)
    except ValueError:
        return scrub(url, limit=200)


def excerpt(body: bytes | str, key: str | None = None, limit: int = 160) -> str:
    """A short, sanitised look at a body that was not what was expected (for error messages)."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes | bytearray) else body
    shown = scrub(text[: limit * 4], key, limit)
    return repr(shown) if shown else "an empty body"


# --------------------------------------------------------------------------- errors


def lm_error(
    failure: Failure,
    *,
    model: str,
    api_base: str | None,
    attempts: int,
    timeout_s: float,
    deadline: bool = False,
    key_name: str | None = None,
) -> LMError:
    """The :class:`LMError` a person reads for a call that failed: what happened, where, and
    what to change. One table for both clients, so their messages cannot drift apart."""
    kind = failure.kind
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    if deadline and kind in RETRYABLE_KINDS and kind != "timeout":
        tries += f" (the call's {timeout_s:g} s were up)"
    where = f" at {shown_url(api_base)}" if api_base else ""
    detail = failure.detail
    status = failure.status_code
    env = key_name or key_env(model)
    if kind == "auth":
        msg, hint = _auth_message(failure, model, where, env)
    elif kind == "not_found" and "not known to LiteLLM" in detail:
        msg = f"model {model!r} is not known to LiteLLM (names are provider/model)"
        hint = "name it as provider/model, e.g. --model openai/gpt-4o-mini"
    elif kind == "not_found":
        msg = f"model {model!r} was not found{where} ({detail})"
        hint = "check the model name (provider/model, e.g. openai/gpt-4o-mini) and --api-base (an OpenAI-compatible server's URL usually ends in /v1)"
    elif kind == "bad_request" and failure.context_window:
        msg = f"the prompt is longer than the context window of {model!r} ({detail})"
        hint = "send less text per call: lower the size of the pieces passed to llm_query"
    elif kind == "bad_request":
        msg = f"model {model!r} rejected the request{where}: {detail}"
        hint = "check the model's options (--model, --api-base) and the provider's limits"
    elif kind == "bad_response":
        msg = f"the model server{where or f' of {model!r}'} did not answer with a chat completion: {detail}"
        hint = (
            "point --api-base at an OpenAI-compatible API (its URL usually ends in /v1), "
            "not at a web page or a proxy's login; `rlm-sandbox doctor` checks it"
            if api_base
            else "the provider answered something unexpected: check the model name, or try another model"
        )
    elif kind == "bad_config":
        msg = f"the model server URL{where} is not usable: {detail}"
        hint = "give --api-base as http(s)://host:port/v1"
    elif kind == "timeout":
        msg = f"model {model!r}{where} did not answer within {timeout_s:g} s, {tries}"
        hint = "raise --lm-timeout, or check the provider's status page"
    elif kind == "rate_limit":
        msg = f"model {model!r} is rate-limited, {tries}" + (f" ({detail})" if detail else "")
        hint = "lower --max-concurrency, or wait and run again"
    elif kind == "connection":
        msg = f"could not connect to the provider of {model!r}{where}, {tries}" + (
            f" ({detail})" if detail else ""
        )
        hint = "check the network and --api-base (`rlm-sandbox doctor` tests both)"
    elif kind == "server":
        msg = f"the provider of {model!r}{where} failed with a server error, {tries}" + (
            f" ({detail})" if detail else ""
        )
        hint = "the provider is failing: wait and run again, or use another model"
    else:
        msg = f"model call to {model!r} failed: {detail}"
        hint = "rerun with --debug to see where it failed"
    return LMError(msg, hint=hint, kind=kind, attempts=attempts, status_code=status, model=model)


def _auth_message(failure: Failure, model: str, where: str, env: str) -> tuple[str, str]:
    """The message and hint of an ``auth`` failure: denied, no key, no key sent, or a bad key."""
    status = failure.status_code
    detail = failure.detail.removeprefix(f"HTTP {status}: ") if status else failure.detail
    answered = f" answered HTTP {status}" if status else " refused the key"
    if failure.denied:
        msg = f"permission denied for model {model!r}: the server{where}{answered} ({detail})"
        hint = f"check that the key in {env} may use this model"
    elif failure.no_key:
        msg = f"model {model!r} needs an API key and {env} is not set"
        hint = f"export {env}=... in the shell that runs rlm-sandbox (keys never enter a sandbox)"
    elif failure.key_sent is False:
        msg = (
            f"authentication failed for model {model!r}: the server{where}{answered} and no API key "
            f"was sent ({env} is not set)" + (f" ({detail})" if detail else "")
        )
        hint = f"export {env}=... with the server's key (keys never enter a sandbox)"
    else:
        msg = (
            f"authentication failed for model {model!r}: the server{where}{answered} to the API key "
            f"read from {env}" + (f" ({detail})" if detail else "")
        )
        hint = f"set {env} to a valid key for this server (keys never enter a sandbox)"
    return msg, hint
