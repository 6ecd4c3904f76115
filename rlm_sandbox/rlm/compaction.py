"""Keep a node's history inside its model's context window on long runs.

A node that explores a big input for many steps accumulates code and outputs until the next
call no longer fits. Before that happens, the older steps are summarised by the node's own
model and replaced by the summary; the system prompt, the task and the latest outputs stay
verbatim, and the REPL's namespace is untouched (variables survive, only the prose shrinks).
The window comes from LiteLLM's price map (read as data), or the ``context_window`` setting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rlm_sandbox.rlm.prices import context_window
from rlm_sandbox.rlm.prompts import render

CHARS_PER_TOKEN = 4


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A cheap over-estimate (a tokenizer per model would cost more than it saves here)."""
    return sum(len(m.get("content") or "") for m in messages) // CHARS_PER_TOKEN + 4 * len(messages)


def known_window(model: str) -> int | None:
    """The model's context window as LiteLLM's price map knows it (read as data, no import)."""
    return context_window(model)


async def compact_if_needed(
    messages: list[dict[str, str]],
    *,
    window: int | None,
    compact_at: float,
    summarize: Callable[[list[dict[str, str]]], Awaitable[str]],
) -> tuple[list[dict[str, str]], dict[str, int] | None]:
    """The history to send: ``messages`` itself, or a compacted copy when it is too long,
    with what was folded (for the trace). ``summarize`` asks the node's own model."""
    if not window:
        return messages, None
    before = estimate_tokens(messages)
    if before < compact_at * window:
        return messages, None
    head, middle, last = messages[:2], messages[2:-1], messages[-1:]
    if len(middle) < 2:  # nothing older than the latest step: nothing to fold
        return messages, None
    steps = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in middle)
    room = int(window * 0.5) * CHARS_PER_TOKEN
    if len(steps) > room:  # the summary call must fit too: keep the most recent part
        steps = "[... the oldest part is cut ...]\n" + steps[-room:]
    summary = await summarize([head[0], {"role": "user", "content": render("compact", steps=steps)}])
    folded = {
        "role": "assistant",
        "content": "(Summary of my earlier steps, compacted to fit the context window; every REPL "
        f"variable is still defined.)\n{summary}",
    }
    compacted = [*head, folded, *last]
    stats = {
        "window": window,
        "tokens_before": before,
        "tokens_after": estimate_tokens(compacted),
        "messages_folded": len(middle),
    }
    return compacted, stats
