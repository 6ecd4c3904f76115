"""The replay's model: each request whose digest was recorded gets its recorded response.

The engine's digest leaves out the system prompt's volatile ``Budgets:`` line, so the same
request in a replay has the same digest as in the recording: exact, or unknown. An unknown
request is a divergence; it is answered with ``FINAL(...)`` so the replay ends soon instead
of wandering on with made-up answers.
"""

from __future__ import annotations

import collections
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rlm_sandbox.replay.recording import RecordedCall, Recording, excerpt, request_messages
from rlm_sandbox.rlm.digest import request_digest
from rlm_sandbox.testing import HTTPReply

DIVERGED_REPLY = "FINAL(replay diverged)"
"""What an unknown request gets: a final answer, so the replayed node (and run) ends soon."""

_DEPTH = re.compile(r"depth (\d{1,4}) of at most")  # bounded: int() of a long run is quadratic


@dataclass
class Served:
    """One request the replay server answered, and from what."""

    number: int  # 1-based, in arrival order
    digest: str  # of the request as the replay sent it
    call: int | None  # the recorded lm_call that answered it; None: unknown request
    how: str  # "exact" or "unknown"
    depth: int | None
    step: int
    last_user: str


class ReplayPolicy:
    """A :data:`~rlm_sandbox.testing.Policy` answering from a recording.

    Identical requests get their recorded responses in recorded order (the last repeats);
    an unknown request is a divergence: it is logged and answered with ``FINAL(...)`` so
    the replay ends instead of wandering on with made-up answers.
    """

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.served: list[Served] = []
        self._used: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> Any:
        messages = request_messages(request)
        own = request_digest(messages)
        with self._lock:
            found, how = self._match(messages, own)
            users = [m["content"] for m in messages if m["role"] == "user"]
            depth = _request_depth(messages)
            self.served.append(
                Served(
                    number=len(self.served) + 1,
                    digest=own,
                    call=None if found is None else found.index,
                    how=how,
                    depth=depth,
                    step=1 + sum(1 for m in messages if m["role"] == "assistant"),
                    last_user=excerpt(users[-1] if users else ""),
                )
            )
        text = DIVERGED_REPLY if found is None else found.response
        prompt = found.prompt_tokens if found else max(1, sum(len(m["content"]) for m in messages) // 4)
        completion = found.completion_tokens if found else 1
        # The recorded usage, so token budgets run down as they did in the recording.
        return HTTPReply(200, _completion_body(request, text, prompt, completion))

    def _take(self, key: str) -> RecordedCall:
        indexes = self.recording.by_digest[key]
        n = self._used[key]
        self._used[key] += 1
        return self.recording.calls[indexes[min(n, len(indexes) - 1)]]

    def _match(self, messages: list[dict[str, str]], own: str) -> tuple[RecordedCall | None, str]:
        # The engine's digest leaves out the prompt's volatile budget line, so the same
        # request in a replay has the same digest as in the recording: exact or unknown.
        if own in self.recording.by_digest:
            return self._take(own), "exact"
        return None, "unknown"


def _request_depth(messages: list[dict[str, str]]) -> int | None:
    if messages and messages[0]["role"] == "system":
        m = _DEPTH.search(messages[0]["content"])
        if m:
            return int(m.group(1))
    return None


def _completion_body(request: dict[str, Any], text: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-replay-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.get("model") or "replay"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
