"""The OpenAI chat-completions wire format, as :mod:`rlm_sandbox.rlm.lm.openai_compat` reads it:
the request encoded, the answer read under a size and time limit, and every way an answer can be
wrong turned into a :class:`~rlm_sandbox.rlm.lm.base.Failure` the retry policy understands.

Why it is its own module: the client (connections, retries, deadlines, costs) and the parsing
of what an untrusted server sent are separate jobs; these functions need no client, no
connection and no state, so they are read and tested on their own. Everything here treats
the server's bytes as untrusted: bounded, checked, and quoted only as a sanitised excerpt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rlm_sandbox.rlm.lm.base import Failure, excerpt, scrub

#: A chat completion is kilobytes; a body past this is not one (and must not fill the host's memory).
MAX_RESPONSE_BYTES = 32 << 20

_STATUS_KINDS = {
    400: "bad_request",
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "timeout",
    409: "server",
    413: "bad_request",
    422: "bad_request",
    429: "rate_limit",
}


def take_chunk(chunks: list[bytes], chunk: bytes, size: int, deadline: float) -> int:
    """Keep one chunk of the body: at most :data:`MAX_RESPONSE_BYTES` in all, and none after
    the call's deadline (a server that trickles its answer cannot hold the call past it)."""
    size += len(chunk)
    if size > MAX_RESPONSE_BYTES:
        raise Failure("bad_response", f"it answered more than {MAX_RESPONSE_BYTES >> 20} MB")
    chunks.append(chunk)
    if time.monotonic() > deadline:
        raise Failure("timeout", "the answer was still arriving at the deadline")
    return size


@contextmanager
def transport_failures(key: str | None) -> Iterator[None]:
    """What goes wrong on the way (not an HTTP answer) becomes a :class:`Failure` the retry
    policy understands; anything else is ours and goes on as it is. Around a sync or an
    async request alike."""
    import httpx

    try:
        yield
    except Failure:
        raise
    except httpx.TimeoutException as exc:
        raise Failure("timeout", scrub(f"{type(exc).__name__}: {exc}", key)) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise Failure("bad_config", scrub(str(exc), key)) from exc
    except (httpx.TransportError, OSError) as exc:
        raise Failure("connection", scrub(f"{type(exc).__name__}: {exc}", key)) from exc


def checked_payload(
    status: int, raw: bytes, ctype: str, retry_after: float | None, key: str | None
) -> dict[str, Any]:
    """The parsed completion of an HTTP answer, or the :class:`Failure` it is."""
    if status >= 300:
        failure = _http_failure(status, raw, ctype, retry_after, key)
        failure.key_sent = key is not None
        raise failure
    return _completion(raw, ctype, key)


def encode_body(body: dict[str, Any]) -> bytes:
    """The request as UTF-8 JSON; text that cannot be UTF-8 (a lone surrogate) is escaped."""
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, ensure_ascii=True).encode("ascii")


def token_count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def retry_after_header(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _http_failure(status: int, raw: bytes, ctype: str, retry_after: float | None, key: str | None) -> Failure:
    """A non-2xx answer: the provider's own error message when it sent one, else an excerpt."""
    parsed = _json(raw)
    message = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
        elif isinstance(parsed.get("detail"), str):
            message = parsed["detail"]
    detail = f"HTTP {status}: " + (scrub(message, key) if message else excerpt(raw, key))
    if 300 <= status < 400:
        detail += (
            " (a redirect: a plain-http server's are not followed; give --api-base the URL it redirects to)"
        )
    kind = _STATUS_KINDS.get(status) or ("server" if status >= 500 else "bad_request")
    lowered = (message or "").lower()
    window = kind == "bad_request" and (
        "context length" in lowered or "context_length" in lowered or "maximum context" in lowered
    )
    return Failure(
        kind,
        detail,
        status_code=status,
        retry_after_s=retry_after,
        denied=status == 403,
        context_window=window,
    )


def _completion(raw: bytes, ctype: str, key: str | None) -> dict[str, Any]:
    """The parsed completion, or a ``bad_response`` Failure saying what came back instead."""
    parsed = _json(raw)
    kind_of_body = "an HTML page" if "html" in ctype.lower() or raw.lstrip()[:1] == b"<" else "a body"
    if parsed is None:
        raise Failure("bad_response", f"it answered {kind_of_body} that is not JSON: {excerpt(raw, key)}")
    if not isinstance(parsed, dict):
        raise Failure("bad_response", f"it answered JSON that is not an object: {excerpt(raw, key)}")
    if isinstance(parsed.get("error"), dict | str):  # some servers answer 200 with an error body
        error = parsed["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise Failure("bad_response", f"it answered an error with HTTP 200: {excerpt(str(message), key)}")
    choices = parsed.get("choices")
    if not isinstance(choices, list) or not choices:
        keys = ", ".join(sorted(str(k) for k in parsed)[:8]) or "none"
        raise Failure(
            "bad_response", f"it answered a JSON object without choices (keys: {scrub(keys, key, 120)})"
        )
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not (content is None or isinstance(content, str)):
        raise Failure(
            "bad_response", f"its first choice has no text message: {excerpt(json.dumps(first)[:400], key)}"
        )
    return parsed
