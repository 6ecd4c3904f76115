"""Compaction (rlm/compaction.py): with a small context window the older steps are folded into
a summary by the node's own model, the head and the latest feedback stay verbatim, the REPL's
variables survive, and the ``compaction`` event says what was folded."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from rlm_sandbox.rlm.compaction import compact_if_needed, estimate_tokens, known_window

from .seam import last_user, repl

SUMMARY_ASKED = "summarise it for yourself"


def history(*middle: str, last: str = "latest feedback") -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "S" * 400}, {"role": "user", "content": "Task: t"}]
    for i, text in enumerate(middle):
        msgs.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return [*msgs, {"role": "user", "content": last}]


def no_summary(request: list[dict[str, str]]) -> str:
    raise AssertionError("no summary may be asked for")


# ---- compact_if_needed on its own


def compact(msgs: list[dict[str, str]], *, summarize: Any, **kw: Any) -> Any:
    """``compact_if_needed`` with a plain ``summarize``, run to its end."""

    async def asummarize(request: list[dict[str, str]]) -> str:
        return summarize(request)

    return asyncio.run(compact_if_needed(msgs, summarize=asummarize, **kw))


def test_tokens_are_estimated_from_characters_and_messages() -> None:
    assert estimate_tokens([{"role": "user", "content": "x" * 400}]) == 104
    assert estimate_tokens([{"role": "user", "content": ""}, {"role": "assistant"}]) == 8  # type: ignore[list-item]


def test_no_window_or_a_short_history_is_left_alone() -> None:
    msgs = history("a", "b", "c")
    assert compact(msgs, window=None, compact_at=0.8, summarize=no_summary) == (msgs, None)
    assert compact(msgs, window=100_000, compact_at=0.8, summarize=no_summary) == (msgs, None)


def test_with_nothing_older_than_the_latest_step_nothing_is_folded() -> None:
    msgs = history("A" * 4000)
    assert compact(msgs, window=1000, compact_at=0.5, summarize=no_summary) == (msgs, None)


def test_older_steps_are_folded_into_the_models_summary() -> None:
    msgs = history("code one", "output " * 200, "code two", last="the newest output")
    asked: list[list[dict[str, str]]] = []

    def summarize(request: list[dict[str, str]]) -> str:
        asked.append(request)
        return "x holds the count"

    compacted, stats = compact(msgs, window=1000, compact_at=0.3, summarize=summarize)
    assert compacted[:2] == msgs[:2] and compacted[-1] == msgs[-1]
    assert len(compacted) == 4 and compacted[2]["role"] == "assistant"
    assert "every REPL variable is still defined" in compacted[2]["content"]
    assert compacted[2]["content"].endswith("\nx holds the count")
    assert stats == {
        "window": 1000,
        "tokens_before": estimate_tokens(msgs),
        "tokens_after": estimate_tokens(compacted),
        "messages_folded": 3,
    }
    (request,) = asked
    assert request[0] == msgs[0] and request[1]["role"] == "user"
    assert SUMMARY_ASKED in request[1]["content"] and "[assistant]\ncode one" in request[1]["content"]


def test_a_history_too_long_to_summarise_keeps_its_most_recent_part() -> None:
    msgs = history("OLDEST " + "a" * 6000, "b" * 6000, "NEWEST step")
    asked: list[str] = []
    compact(msgs, window=1000, compact_at=0.5, summarize=lambda r: asked.append(r[1]["content"]) or "s")
    assert "[... the oldest part is cut ...]" in asked[0]
    assert "NEWEST step" in asked[0] and "OLDEST" not in asked[0]


def test_a_known_models_window_comes_from_the_price_map() -> None:
    assert known_window("openai/gpt-4o") == 128_000
    assert known_window("scripted") is None


# ---- through the seam


def compacting_root(request: dict[str, Any]) -> str:
    """Three steps that print a lot, then the answer from a variable set at the first step;
    the step is read from the feedback, which compaction keeps (the turn count it changes)."""
    last = last_user(request)
    if SUMMARY_ASKED in last:
        return "SUMMARY: x is 41; printed a lot."
    done = re.search(r"Step (\d+) of", last)
    step = int(done.group(1)) if done else 0
    cells = ["x = 41\nprint('a' * 1500)", "print('b' * 1500)", "y = x + 1\nprint('c' * 1500)"]
    return repl(cells[step]) if step < len(cells) else "FINAL_VAR(y)"


def test_a_long_run_compacts_and_keeps_its_variables(seam) -> None:
    h = seam(compacting_root, context_window=1000, compact_at=0.8)
    result = h.run("abc")
    assert (result.status, result.answer) == ("ok", "42")
    events = h.named("compaction")
    assert events, "the history outgrew the window"
    for event in events:
        assert event["node"] == "root" and event["window"] == 1000
        assert event["tokens_after"] < event["tokens_before"] and event["messages_folded"] >= 2
    summaries = h.calls("compaction")
    assert len(summaries) == len(events)
    assert result.lm_calls == len(h.calls("step")) + len(summaries)
    after = h.client.requests[-1]["messages"]
    assert "SUMMARY: x is 41" in after[2]["content"] and "a" * 1500 not in str(after)


def test_a_big_enough_window_never_compacts(seam) -> None:
    h = seam(compacting_root, context_window=100_000)
    assert h.run("abc").answer == "42"
    assert h.named("compaction") == [] and h.calls("compaction") == []
