"""What a scripted policy may answer: text, an HTTP failure (so a test can script rate limits,
5xx storms or a broken key) or no answer at all (a server that accepts a request and stays
silent, or trickles bytes so that no read timeout fires); and small combinators of policies
(a sequence, failures first)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias


@dataclass(frozen=True)
class HTTPReply:
    """An answer other than a chat completion, so a policy can script provider failures (429,
    500, 401 ...) and garbage: a dict is sent as JSON, ``str``/``bytes`` exactly as given
    (an HTML error page, a truncated body) with ``content_type``."""

    status: int
    body: dict[str, Any] | str | bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass(frozen=True)
class Stall:
    """No answer: the request is accepted and the connection held until the server closes.

    With ``trickle_s`` the server sends a 200 status and headers, then one byte of a body
    that never ends every ``trickle_s`` seconds: a client's per-read timeout never fires."""

    trickle_s: float | None = None


Reply: TypeAlias = str | HTTPReply | Stall
Policy: TypeAlias = Callable[[dict[str, Any]], Reply]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "model_not_found",
    429: "rate_limit_exceeded",
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body: LiteLLM maps errors by status, but shows this message."""
    kind = _ERROR_TYPES.get(status, "server_error")
    return {
        "error": {
            "message": message or f"scripted error {status}",
            "type": kind,
            "param": None,
            "code": kind,
        }
    }


def garbage(
    body: str | bytes | dict[str, Any], *, status: int = 200, content_type: str = "text/html"
) -> Policy:
    """Every call gets ``body`` instead of a chat completion (a proxy's login page, ``{}``,
    invalid JSON): what a misconfigured ``--api-base`` answers."""
    ctype = "application/json" if isinstance(body, dict) else content_type

    def policy(request: dict[str, Any]) -> Reply:
        return HTTPReply(status, body, content_type=ctype)

    return policy


def sequence_policy(*replies: Reply) -> Policy:
    """The nth request gets the nth reply and the last one repeats: scripts a conversation."""
    if not replies:
        raise ValueError("sequence_policy needs at least one reply")
    lock = threading.Lock()
    state = {"n": 0}

    def policy(request: dict[str, Any]) -> Reply:
        with lock:
            i = state["n"]
            state["n"] += 1
        return replies[min(i, len(replies) - 1)]

    return policy


def fail_then(policy: Policy, status: int, times: int, *, headers: dict[str, str] | None = None) -> Policy:
    """The first ``times`` calls fail with ``status``; then ``policy`` answers (retry tests)."""
    lock = threading.Lock()
    state = {"n": 0}

    def wrapped(request: dict[str, Any]) -> Reply:
        with lock:
            failing = state["n"] < times
            state["n"] += 1
        if failing:
            return HTTPReply(status, error_body(status), dict(headers or {}))
        return policy(request)

    return wrapped


def always_status(status: int, message: str | None = None) -> Policy:
    """Every call fails the same way (a dead provider, a revoked key)."""

    def policy(request: dict[str, Any]) -> Reply:
        return HTTPReply(status, error_body(status, message))

    return policy


def never_answers(request: dict[str, Any]) -> Reply:
    """A server that accepts every request and never says a word (a hung provider)."""
    return Stall()


def trickles(interval_s: float = 1.0) -> Policy:
    """A server that answers 200 and then sends one byte every ``interval_s``, forever."""

    def policy(request: dict[str, Any]) -> Reply:
        return Stall(trickle_s=interval_s)

    return policy
