"""A stable name for one model request, so replay (and a response cache) can find it again."""

from __future__ import annotations


def request_digest(messages: list[dict[str, str]]) -> str:
    """A stable name for one model request: the same messages give the same digest.

    The system prompt's ``Budgets:`` line (calls, tokens, seconds left) depends on timing and
    on the order parallel children start, so it is left out: a replay of the same run must
    give the same digests."""
    import hashlib
    import json
    import re

    volatile = re.compile(r"^Budgets: .*$", re.MULTILINE)
    stable = [
        {"role": m["role"], "content": volatile.sub("Budgets: -", m["content"])}
        if m["role"] == "system"
        else m
        for m in messages
    ]
    blob = json.dumps(stable, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: a model's reply may hold a lone surrogate; the digest must not fail on it.
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()
