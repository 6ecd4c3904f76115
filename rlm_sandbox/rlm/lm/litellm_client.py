"""Every provider that is not OpenAI-compatible (``anthropic/``, ``gemini/``, ``bedrock/``, ...)
goes through LiteLLM: one client for all of them.

LiteLLM's import is the heaviest thing a run does (seconds, ~200 MB) and, unless told
otherwise, reaches out to the internet for a cost map; so it is imported once, in a
background thread that starts the moment a run knows it needs LiteLLM (:func:`start_preload`,
called when such a client is made), and overlaps the engine check, the container start and
the input load. Its errors are many and provider-shaped: :func:`classify` maps them onto the
kinds of :mod:`rlm_sandbox.rlm.lm.base`, whose retry policy and messages both clients share.
LiteLLM's and the OpenAI SDK's own retries are turned off so that ``max_retries`` means what
it says. Keys are read from the environment by LiteLLM and never appear in a message.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import ModuleType
from typing import Any

from rlm_sandbox.errors import LMError
from rlm_sandbox.rlm.lm.base import (
    Failure,
    GaveUp,
    LMResponse,
    Messages,
    RetryPolicy,
    key_env,
    lm_error,
    missing_key,
    scrub,
)
from rlm_sandbox.untrusted_json import valid_text

__all__ = ["LiteLLMClient", "classify", "litellm_loaded", "preload_litellm", "start_preload"]

_litellm: ModuleType | None = None
_import_lock = threading.Lock()


def preload_litellm() -> ModuleType:
    """Import and configure LiteLLM once; safe to call from several threads at the same time."""
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


# --------------------------------------------------------------------------- classification

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
# What LiteLLM says when a server answered 200 with something that is not a chat completion
# (an HTML page, invalid JSON, ``{}``): not a server error to retry, a server to fix.
_GARBAGE_MARKERS = (
    "Empty or invalid response from LLM endpoint",
    "returned a response with no 'choices'",
    "Received response - <APIResponse",
)


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
    if isinstance(exc, Failure):
        return exc.kind

    def is_(*names: str) -> bool:
        classes = _classes(litellm, names)
        return bool(classes) and isinstance(exc, classes)

    text = str(exc)
    if "LLM Provider NOT provided" in text:
        return "not_found"
    if any(marker in text for marker in _GARBAGE_MARKERS):
        return "bad_response"
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


def _garbage_detail(text: str) -> str:
    """What LiteLLM saw of a body that was not a chat completion, without its object dumps."""
    if "Received: '" in text:  # "... Received: '<html>...'. Check the reverse proxy ..."
        body = text.split("Received: '", 1)[1].rsplit("'. Check", 1)[0]
        return f"it answered {body[:160]!r}"
    if "no 'choices'" in text:
        raw = text.split("Raw keys:", 1)[1].split("Traceback", 1)[0] if "Raw keys:" in text else ""
        keys = ", ".join(k.strip(" '\"") for k in raw.strip().strip("[]").split(",") if k.strip(" '\""))
        return f"it answered a JSON object without choices (keys: {keys or 'none'})"
    if "Received response - <APIResponse" in text:
        why = text.split("error - ", 1)[1].split(", Received response", 1)[0] if "error - " in text else ""
        return "it answered a body that is not valid JSON" + (f" ({why})" if why else "")
    return text


class LiteLLMClient:
    """A thread-safe model client through LiteLLM: one instance serves every concurrent call.

    It holds configuration only; LiteLLM keeps (and reuses) the underlying HTTP clients,
    keyed by model, base URL, key and timeout, so connections are pooled across calls. Making
    one starts LiteLLM's import in the background (:func:`start_preload`).

    ``max_retries`` is the total number of attempts for a transient failure (so 1 means no
    retry). ``retry_wait_s`` is the first backoff, doubling up to ``retry_max_wait_s``.
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
        start_preload()

    def __repr__(self) -> str:  # never shows the key
        return f"LiteLLMClient(model={self.model!r}, api_base={self.api_base!r}, timeout_s={self.timeout_s})"

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.retry_wait_s, self.retry_max_wait_s)

    def check_credentials(self) -> None:
        """Raise :class:`LMError` (kind ``auth``) when the provider's key is certainly missing
        (providers of :data:`~rlm_sandbox.rlm.lm.base.KEY_ENV` only: no import needed, so this
        runs before any container starts). Nothing is sent."""
        litellm = sys.modules.get("litellm")
        if litellm is not None and isinstance(getattr(litellm, "api_key", None), str) and litellm.api_key:
            return  # a key set on LiteLLM itself serves every provider
        if missing_key(self.model, api_base=self.api_base, api_key=self._api_key) is not None:
            raise lm_error(
                Failure("auth", no_key=True), model=self.model, api_base=None, attempts=0, timeout_s=0
            )

    def prepare(self) -> None:
        """What must happen once before a first request: LiteLLM's import (seconds, more on
        a busy machine; started in the background with this client). Callers run it before
        they start a call's clock, so a model call's time limit measures the model, not our
        import."""
        preload_litellm()

    # ------------------------------------------------------------------ calling

    def completion(
        self, messages: Messages, *, timeout_s: float | None = None, max_tokens: int | None = None
    ) -> LMResponse:
        """One chat completion, retried on transient failures within ``timeout_s`` in all."""
        litellm = preload_litellm()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        kwargs: dict[str, Any] = dict(self.extra)
        kwargs.update(model=self.model, messages=list(messages), drop_params=True)
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

        def attempt(left: float) -> Any:
            # Whole seconds: LiteLLM caches its HTTP clients (and their pooled connections) by
            # timeout, so a value that changed with every call would open a connection per call.
            response = litellm.completion(**kwargs, timeout=float(int(left)) if left >= 1 else left)
            if not getattr(response, "choices", None):
                raise Failure("bad_response", "it answered a completion without choices")
            return response

        start = time.perf_counter()
        try:
            response, attempts = self.policy.run(
                attempt,
                timeout_s=timeout,
                kind_of=lambda exc: classify(litellm, exc),
                retry_after=_retry_after_s,
            )
        except GaveUp as gave_up:
            raise self._to_lm_error(litellm, gave_up, timeout) from gave_up.cause
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

    def _key_env(self, litellm: ModuleType) -> str:
        """The variable to name in an auth error: LiteLLM's own view of what is missing."""
        try:
            missing = litellm.validate_environment(model=self.model, api_base=self.api_base).get(
                "missing_keys"
            )
        except Exception:
            missing = None
        keys = [k for k in (missing or []) if isinstance(k, str) and k.endswith(("_KEY", "_TOKEN"))]
        return keys[0] if keys else key_env(self.model)

    def _to_lm_error(self, litellm: ModuleType, gave_up: GaveUp, timeout: float) -> LMError:
        exc = gave_up.cause
        if isinstance(exc, Failure):
            failure = exc
        else:
            kind = classify(litellm, exc)
            root = _root_cause(exc)
            # For network failures the root cause ("Connection refused") says more than LiteLLM's name.
            with_cause = kind in ("connection", "timeout") and root is not exc
            text = f"{exc}; cause: {type(root).__name__}: {root}" if with_cause else str(exc)
            if kind == "bad_response":
                text = _garbage_detail(text)
            elif kind == "other":
                text = f"{type(exc).__name__}: {text}"
            status = _status_code(exc)
            failure = Failure(
                kind,
                scrub(text, self._api_key),
                status_code=status,
                denied=kind == "auth"
                and (status == 403 or isinstance(exc, _classes(litellm, ("PermissionDeniedError",)))),
                context_window=isinstance(exc, _classes(litellm, ("ContextWindowExceededError",)) or ()),
            )
        if failure.kind == "not_found" and "LLM Provider NOT provided" in str(exc):
            failure.detail = "not known to LiteLLM"
        return lm_error(
            failure,
            model=self.model,
            api_base=self.api_base,
            attempts=gave_up.attempts,
            timeout_s=timeout,
            deadline=gave_up.deadline,
            key_name=self._key_env(litellm) if failure.kind == "auth" else None,
        )
