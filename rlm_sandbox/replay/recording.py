"""A trace read for replay: the recorded run's start and its model calls, by request digest.

A trace is untrusted input: every line is read bounded and through the event vocabulary; a
line that is not an event refuses the whole trace (a replay from a damaged recording would
report made-up divergences).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.trace import events as trace_events
from rlm_sandbox.untrusted_json import TRACE_DEPTH, TRACE_LINE_CHARS, loads

EXCERPT = 300


class TraceNotReplayable(ConfigError):
    """The trace cannot drive a replay (missing, not a trace, or from an older version)."""


def excerpt(text: Any, limit: int = EXCERPT) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def request_messages(request: dict[str, Any]) -> list[dict[str, str]]:
    """The messages of an OpenAI request as the engine built them (role and text only).

    The engine digests ``[{role, content}]``; a client may add keys or send content as a
    list of parts, so the server side reduces to the same shape before digesting.
    """
    out = []
    for m in request.get("messages") or []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(
                p.get("text", "") if isinstance(p, dict) else str(p) for p in content if p is not None
            )
        out.append({"role": str(m.get("role", "")), "content": "" if content is None else str(content)})
    return out


@dataclass(frozen=True)
class RecordedCall:
    index: int  # position among the recording's lm_call events
    node: str
    depth: int
    purpose: str
    digest: str
    response: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Recording:
    """What a replay needs of a trace: the run's settings and its model calls by request."""

    path: Path
    events: list[dict[str, Any]]
    start: dict[str, Any]
    calls: list[RecordedCall]
    by_digest: dict[str, list[int]]

    @property
    def task(self) -> str:
        return str(self.start.get("task") or "")

    @property
    def end(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == "run_end"), None)


def load_recording(path: str | Path) -> Recording:
    """Read a trace for replay; :class:`TraceNotReplayable` says why one cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise TraceNotReplayable(f"trace not found: {path}", hint="give the file written by --trace")
    events: list[dict[str, Any]] = []
    lineno = 0
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                lineno += 1
                if line.strip():
                    event = loads(line, max_chars=TRACE_LINE_CHARS, max_depth=TRACE_DEPTH, constants=True)
                    parsed = trace_events.parse(event)
                    if isinstance(parsed, trace_events.Malformed):
                        raise ValueError(f"an event that is not one: {parsed.problem}")
                    events.append(event)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TraceNotReplayable(
            f"{path} is not a trace (line {lineno}: {exc})",
            hint="give the JSON-lines file written by --trace",
        ) from None
    start = next((e for e in events if e.get("event") == "run_start"), None)
    if start is None:
        raise TraceNotReplayable(f"{path} has no run_start event", hint="give the file written by --trace")
    # A request the response cache answered is recorded as lm_cache_hit: an answer all the same.
    raw = [e for e in events if e.get("event") in ("lm_call", "lm_cache_hit")]
    if not raw:
        raise TraceNotReplayable(
            f"{path} records no model call, so there is nothing to replay",
            hint="the run stopped before its first model call; run it again instead",
        )
    if any("request_sha256" not in e or "response" not in e for e in raw):
        raise TraceNotReplayable(
            f"{path} is from an older version of rlm-sandbox: its model calls carry no request "
            "digests or responses, so it cannot be replayed",
            hint="record the run again with this version (--trace FILE), then replay that trace",
        )
    calls = [
        RecordedCall(
            index=i,
            node=str(e.get("node")),
            depth=int(e.get("depth") or 0),
            purpose=str(e.get("purpose") or ""),
            digest=str(e["request_sha256"]),
            response=str(e["response"]),
            prompt_tokens=int(e.get("prompt_tokens") or 0),
            completion_tokens=int(e.get("completion_tokens") or 0),
        )
        for i, e in enumerate(raw)
    ]
    by_digest: dict[str, list[int]] = collections.defaultdict(list)
    for call in calls:
        by_digest[call.digest].append(call.index)
    return Recording(path, events, start, calls, dict(by_digest))
