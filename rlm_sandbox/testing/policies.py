"""The scripted model itself: :func:`rlm_policy` behaves like a small but sensible RLM model for
two task families over logs (count lines containing a quoted phrase; find a secret value);
:func:`answer_leaf` answers a sub-call from the text it is given."""

from __future__ import annotations

import re
from typing import Any

from rlm_sandbox.testing.replies import Reply
from rlm_sandbox.testing.step_code import COUNT_TASK_RE, NOT_FOUND, build_step1_code

_SEARCH_RE = re.compile(
    r"(secret code|magic number|needle)[^0-9A-Za-z\n]*(is|:|=)?[ \t]*([A-Za-z0-9-]+)", re.IGNORECASE
)
_SEARCH_KEYWORDS = ("secret code", "magic number", "needle")
_AFTER_PHRASE_RE = re.compile(r"[^0-9A-Za-z\n]*(?:(?:is|:|=)(?![0-9A-Za-z]))?[^0-9A-Za-z\n]*([A-Za-z0-9-]+)")
_QUOTED_RE = re.compile(r'"([^"\n]+)"')
_TASK_LINE_RE = re.compile(r"^[ \t>*_]*Task:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def _content_text(content: Any) -> str:
    """Message content as text: OpenAI allows a list of typed parts as well as a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return "" if content is None else str(content)


def messages_of(request: dict[str, Any]) -> list[dict[str, str]]:
    raw = request.get("messages")
    if not isinstance(raw, list):
        return []
    out = []
    for m in raw:
        if isinstance(m, dict):
            out.append({"role": str(m.get("role", "")), "content": _content_text(m.get("content"))})
    return out


def _is_rlm_node(messages: list[dict[str, str]]) -> bool:
    return any(m["role"] == "system" and "```repl" in m["content"] for m in messages)


def _find_task(messages: list[dict[str, str]]) -> str:
    """The task from the engine's first user message (``Task: ...``), else from any message."""
    users = [m for m in messages if m["role"] == "user"]
    ordered = users[:1] + [m for m in messages if m not in users[:1]]
    for m in ordered:
        match = _TASK_LINE_RE.search(m["content"])
        if match:
            return match.group(1)
    return ""


def _rlm_node_reply(messages: list[dict[str, str]], grep_first: bool = False) -> str:
    step = 1 + sum(1 for m in messages if m["role"] == "assistant")
    if step == 1:
        task = _find_task(messages)
        return (
            "The input is too large to read at once, so I will split `context` into pieces, "
            "ask a sub-model about each piece in parallel, and combine the answers.\n\n"
            f"```repl\n{build_step1_code(task, grep_first=grep_first)}```\n"
        )
    return "The combined answer is stored in the variable `answer`.\n\nFINAL_VAR(answer)\n"


def _split_prompt(prompt: str) -> tuple[str, str]:
    """(task, text) of a ``TASK: ...\\n\\nTEXT:\\n...`` prompt; an unknown task otherwise."""
    start = prompt.find("TASK: ")
    if start < 0 or "TEXT:" not in prompt[start:]:
        return "", prompt
    rest = prompt[start + len("TASK: ") :]
    sep = rest.find("\n\nTEXT:\n")
    if sep >= 0:
        task = rest[:sep].split("\n\nSOURCE: ", 1)[0]  # where the text starts: not the task
        return task.strip(), rest[sep + len("\n\nTEXT:\n") :]
    sep = rest.find("TEXT:")
    return rest[:sep].strip(), rest[sep + len("TEXT:") :].lstrip("\n")


def answer_leaf(prompt: str) -> str:
    """What the scripted sub-model answers to a plain prompt (also usable without the server)."""
    task, text = _split_prompt(prompt)
    quoted = _QUOTED_RE.search(task)
    if task and re.search(COUNT_TASK_RE, task, re.IGNORECASE):
        if quoted:
            phrase = quoted.group(1)
            return str(sum(1 for line in text.splitlines() if phrase in line))
        return str(sum(1 for line in text.splitlines() if line.strip()))
    if quoted:
        phrase = quoted.group(1)
        pos = text.find(phrase)
        if pos >= 0:
            end = text.find("\n", pos)
            after = text[pos + len(phrase) : end if end >= 0 else len(text)]
            match = _AFTER_PHRASE_RE.match(after)
            if match:
                return match.group(1)
    return _search_keywords(text)


def _search_keywords(text: str) -> str:
    """The value after the first secret code / magic number / needle mention, or NOT FOUND.

    Keywords are located with ``str.find`` on a lowered copy (C speed: a 25 MB piece takes
    tens of milliseconds), and the regex runs only on the lines that mention one.
    """
    lowered = text.lower()
    if len(lowered) != len(text):  # some non-ASCII letters lower to two characters
        match = _SEARCH_RE.search(text)
        return match.group(3) if match else NOT_FOUND
    starts = {kw: lowered.find(kw) for kw in _SEARCH_KEYWORDS}
    while True:
        live = [(pos, kw) for kw, pos in starts.items() if pos >= 0]
        if not live:
            return NOT_FOUND
        pos, kw = min(live)
        line_start = text.rfind("\n", 0, pos) + 1
        line_end = text.find("\n", pos)
        match = _SEARCH_RE.search(text, line_start, line_end if line_end >= 0 else len(text))
        if match:
            return match.group(3)
        starts[kw] = lowered.find(kw, pos + 1)


def rlm_policy(request: dict[str, Any]) -> Reply:
    """A deterministic stand-in for both the root model and the sub-model of an RLM run.

    RLM nodes are recognised by the engine's system prompt (it teaches ```repl blocks); the
    step is the number of assistant turns so far. Anything else is a leaf sub-call.
    """
    return _policy(request, grep_first=False)


def grep_first_policy(request: dict[str, Any]) -> Reply:
    """Like :func:`rlm_policy`, but the root filters ``context`` with code before it fans out."""
    return _policy(request, grep_first=True)


def _policy(request: dict[str, Any], *, grep_first: bool) -> Reply:
    messages = messages_of(request)
    if _is_rlm_node(messages):
        return _rlm_node_reply(messages, grep_first)
    users = [m["content"] for m in messages if m["role"] == "user"]
    prompt = users[-1] if users else (messages[-1]["content"] if messages else "")
    return answer_leaf(prompt)
