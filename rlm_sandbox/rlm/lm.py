"""The LM client: every model call of the engine goes through :class:`LiteLLMClient`.

Why LiteLLM: one client for every provider (``--model`` in LiteLLM's ``provider/model``
form, ``--api-base`` for any OpenAI-compatible server). Why wrapped: LiteLLM's import is
heavy and, unless told otherwise, reaches out to the internet for a cost map, so it is
imported lazily (and can be preloaded in a background thread while containers start); and
its errors are many and provider-shaped, so they are mapped here onto one
:class:`~rlm_sandbox.errors.LMError` with a ``kind`` a caller can act on.

Retries are ours (tenacity, exponential backoff with jitter) and only for what a retry can
fix: rate limits, timeouts, connection failures and 5xx. LiteLLM's and the OpenAI SDK's own
retries are turned off so that ``max_retries`` means what it says. Keys are read from the
environment by LiteLLM and never appear in a message this module writes.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from rlm_sandbox.errors import LMError
from rlm_sandbox.untrusted import valid_text

__all__ = ["LMResponse", "LiteLLMClient", "litellm_loaded", "preload_litellm", "start_preload"]

_litellm: ModuleType | None = None
_import_lock = threading.Lock()


def preload_litellm() -> ModuleType:
    """Import and configure LiteLLM once; safe to call from several threads at the same time.

    Callers start this in a background thread so the ~5 s import overlaps container start
    and input loading instead of adding to them.
    """
    global _litellm
    if _litellm is not None:
        return _litellm
    with _import_lock:
        if _litellm is None:
            # Without these LiteLLM downloads catalogs from GitHub (at import, or at the first
            # Anthropic call): slow, and wrong on air-gapped machines. The bundled copies do.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
            import litellm

            litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on errors
            _litellm = litellm
    return _litellm


_preload_thread: threading.Thread | None = None
_preload_lock = threading.Lock()  # not _import_lock: that one is held for the whole import


def start_preload() -> threading.Thread:
    """Import LiteLLM in a background thread (once): it overlaps container start and input load."""
    global _preload_thread
    with _preload_lock:
        if _preload_thread is None:

            def work() -> None:
                try:
                    preload_litellm()
                except Exception:
                    pass  # the first real call raises it again, with context

            _preload_thread = threading.Thread(target=work, name="litellm-import", daemon=True)
            _preload_thread.start()
        return _preload_thread


def litellm_loaded() -> bool:
    """Whether LiteLLM has been imported yet (for progress messages and tests)."""
    return _litellm is not None


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


_RETRYABLE_KINDS = frozenset({"rate_limit", "timeout", "connection", "server"})
_BAD_REQUEST_NAMES = (
    "BadRequestError",
    "UnprocessableEntityError",
    "ContentPolicyViolationError",
    "UnsupportedParamsError",
)
# Names in an exception's cause chain (openai, httpx, httpcore, builtins) that reveal what
# really happened: LiteLLM reports a refused connection as an InternalServerError.
_TIMEOUT_CAUSES = frozenset({"APITimeoutError", "TimeoutException", "TimeoutError", "socket.timeout"})
_CONNECTION_CAUSES = frozenset(
    {"APIConnectionError", "ConnectError", "ConnectionError", "RemoteProtocolError", "NetworkError"}
)
_STATUS_KINDS = {
    400: "bad_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "timeout",
    413: "bad_request",
    422: "bad_request",
    429: "rate_limit",
}

# The environment variable LiteLLM reads for a provider's key, for the auth error's hint.
_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "azure": "AZURE_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "xai": "XAI_API_KEY",
    "cohere": "COHERE_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
}

_SECRETISH = re.compile(r"\b(sk|pk|rk|key|xai|gsk)-[A-Za-z0-9_\-]{6,}")


def _classes(litellm: ModuleType, names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    found = (getattr(litellm, n, None) for n in names)
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))


def _status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def _cause_kind(exc: BaseException) -> str | None:
    """``timeout`` or ``connection`` when the cause chain says so, whatever LiteLLM called it."""
    seen: set[int] = set()
    cause: BaseException | None = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen and len(seen) < 12:
        seen.add(id(cause))
        names = {c.__name__ for c in type(cause).__mro__}
        if names & _TIMEOUT_CAUSES:
            return "timeout"
        if names & _CONNECTION_CAUSES:
            return "connection"
        cause = cause.__cause__ or cause.__context__
    return None


def _root_cause(exc: BaseException) -> BaseException:
    seen: set[int] = set()
    while id(exc) not in seen and len(seen) < 12:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def classify(litellm: ModuleType, exc: BaseException) -> str:
    """The :class:`LMError` kind of a LiteLLM exception; it also decides whether to retry."""

    def is_(*names: str) -> bool:
        classes = _classes(litellm, names)
        return bool(classes) and isinstance(exc, classes)

    if "LLM Provider NOT provided" in str(exc):
        return "not_found"
    if is_("AuthenticationError", "PermissionDeniedError"):
        return "auth"
    if is_("NotFoundError"):
        return "not_found"
    if is_(*_BAD_REQUEST_NAMES):  # ContextWindowExceededError is a BadRequestError
        return "bad_request"
    if is_("Timeout"):  # before APIConnectionError: LiteLLM's Timeout subclasses it
        return "timeout"
    if is_("RateLimitError"):
        return "rate_limit"
    cause = _cause_kind(exc)
    if cause is not None:
        return cause
    if is_("APIConnectionError"):
        return "connection"
    if is_("InternalServerError", "ServiceUnavailableError", "BadGatewayError"):
        return "server"
    code = _status_code(exc)
    if code is not None:
        if code in _STATUS_KINDS:
            return _STATUS_KINDS[code]
        if code >= 500:
            return "server"
        if 400 <= code < 500:
            return "bad_request"
    return "other"


def _retry_after_s(exc: BaseException) -> float | None:
    """The provider's Retry-After, when a 429/503 carries one (seconds form only)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


class LiteLLMClient:
    """A thread-safe model client: one instance serves every concurrent call of a run.

    It holds configuration only; LiteLLM keeps (and reuses) the underlying HTTP clients,
    keyed by model, base URL, key and timeout, so connections are pooled across calls.

    ``max_retries`` is the total number of attempts for a transient failure (so 1 means no
    retry). ``retry_wait_s`` is the first backoff, doubling up to ``retry_max_wait_s``, with
    jitter so that many threads hit by one rate limit do not retry in lockstep.
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
            raise ValueError("model must be a non-empty LiteLLM model string, e.g. openai/gpt-4o-mini")
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

    def __repr__(self) -> str:  # never shows the key
        return f"LiteLLMClient(model={self.model!r}, api_base={self.api_base!r}, timeout_s={self.timeout_s})"

    # ------------------------------------------------------------------ calling

    def prepare(self) -> None:
        """What must happen once before a first request: LiteLLM's import (seconds, more on
        a busy machine). Callers run it before they start a call's clock, so a model call's
        time limit measures the model, not our import."""
        preload_litellm()

    def completion(
        self, messages: list[dict[str, str]], *, timeout_s: float | None = None, max_tokens: int | None = None
    ) -> LMResponse:
        """One chat completion, retried on transient failures; raises :class:`LMError`.

        ``max_tokens`` bounds the completion (the budget reserved that much for it); None
        leaves it to ``extra`` or the provider's default."""
        from tenacity import (
            RetryCallState,
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        litellm = preload_litellm()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        kwargs: dict[str, Any] = dict(self.extra)
        kwargs.update(model=self.model, messages=messages, timeout=timeout, drop_params=True)
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        kwargs["num_retries"] = 0  # we retry (below); LiteLLM's and the SDK's retries are off
        kwargs["max_retries"] = 0
        kwargs.pop("stream", None)  # we need one complete response with usage

        backoff = wait_exponential_jitter(
            multiplier=self.retry_wait_s, max=self.retry_max_wait_s, jitter=self.retry_wait_s
        )

        def wait(state: RetryCallState) -> float:
            delay = backoff(state)
            exc = state.outcome.exception() if state.outcome is not None else None
            hinted = _retry_after_s(exc) if exc is not None else None
            if hinted is not None:
                delay = max(delay, min(hinted, self.retry_max_wait_s))
            return delay

        attempts = 0

        def call() -> Any:
            nonlocal attempts
            attempts += 1
            return litellm.completion(**kwargs)

        start = time.perf_counter()
        try:
            response = Retrying(
                stop=stop_after_attempt(self.max_retries),
                wait=wait,
                retry=retry_if_exception(lambda e: classify(litellm, e) in _RETRYABLE_KINDS),
                reraise=True,
            )(call)
        except Exception as exc:
            raise self._to_lm_error(litellm, exc, attempts, timeout) from exc
        latency = time.perf_counter() - start
        return self._to_response(litellm, response, latency, attempts)

    # ------------------------------------------------------------------ results

    def _to_response(self, litellm: ModuleType, response: Any, latency: float, attempts: int) -> LMResponse:
        text = ""
        try:
            text = response.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            pass
        # A lone surrogate in the reply would make the next request (and any writer) fail.
        text = valid_text(text) if isinstance(text, str) else str(text)
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
        try:
            cost = float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # a model missing from the price map is not an error: it is "unknown"
            cost = 0.0
        return LMResponse(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_s=latency,
            model=str(getattr(response, "model", None) or self.model),
            attempts=attempts,
        )

    # ------------------------------------------------------------------ errors

    def _scrub(self, text: str) -> str:
        """Provider messages can echo a key (or part of one): never let it through."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        text = _SECRETISH.sub(lambda m: m.group(1) + "-***", text)
        text = " ".join(text.split())
        return text if len(text) <= 300 else text[:297] + "..."

    def _key_env(self) -> str:
        provider = self.model.split("/", 1)[0] if "/" in self.model else "openai"
        return _KEY_ENV.get(
            provider, f"{provider.upper()}_API_KEY" if "/" in self.model else "OPENAI_API_KEY"
        )

    def _to_lm_error(self, litellm: ModuleType, exc: BaseException, attempts: int, timeout: float) -> LMError:
        kind = classify(litellm, exc)
        model = self.model
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        where = f" at {self.api_base}" if self.api_base else ""
        root = _root_cause(exc)
        # For network failures the root cause ("Connection refused") says more than LiteLLM's name.
        with_cause = kind in ("connection", "timeout") and root is not exc
        detail = self._scrub(f"{exc}; cause: {type(root).__name__}: {root}" if with_cause else str(exc))
        status = _status_code(exc)
        context_window = _classes(litellm, ("ContextWindowExceededError",))
        if kind == "auth":
            denied = status == 403 or isinstance(exc, _classes(litellm, ("PermissionDeniedError",)))
            msg = (
                f"{'permission denied' if denied else 'authentication failed'} for model {model!r}{where}: "
                f"the provider refused the API key (read from {self._key_env()})"
            )
            hint = f"set the provider's API key in the environment (e.g. {self._key_env()})" + (
                " and check that it may use this model" if denied else ""
            )
        elif kind == "not_found" and "LLM Provider NOT provided" in str(exc):
            msg = f"model {model!r} is not known to LiteLLM (names are provider/model)"
            hint = "name it as provider/model, e.g. --model openai/gpt-4o-mini"
        elif kind == "not_found":
            msg = f"model {model!r} was not found{where} ({detail})"
            hint = "check the model name (provider/model, e.g. openai/gpt-4o-mini) and --api-base"
        elif kind == "bad_request" and context_window and isinstance(exc, context_window):
            msg = f"the prompt is longer than the context window of {model!r} ({detail})"
            hint = "send less text per call: lower the size of the pieces passed to llm_query"
        elif kind == "bad_request":
            msg = f"model {model!r} rejected the request: {detail}"
            hint = "check the model's options (--model, --api-base) and the provider's limits"
        elif kind == "timeout":
            msg = f"model {model!r}{where} did not answer within {timeout:g} s, {tries}"
            hint = "raise the model timeout, or check the provider's status page"
        elif kind == "rate_limit":
            msg = f"model {model!r} is rate-limited, {tries} ({detail})"
            hint = "lower --max-concurrency, or wait and run again"
        elif kind == "connection":
            msg = f"could not connect to the provider of {model!r}{where}, {tries} ({detail})"
            hint = "check the network and --api-base (`rlm-sandbox doctor` tests both)"
        elif kind == "server":
            msg = f"the provider of {model!r}{where} failed with a server error, {tries} ({detail})"
            hint = "the provider is failing: wait and run again, or use another model"
        else:
            msg = f"model call to {model!r} failed: {type(exc).__name__}: {detail}"
            hint = "rerun with --debug to see where it failed"
        return LMError(msg, hint=hint, kind=kind, attempts=attempts, status_code=status, model=model)
