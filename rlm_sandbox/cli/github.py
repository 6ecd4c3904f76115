"""``run --format github``: the answer's citations as GitHub workflow annotations, and a
Markdown summary appended to ``$GITHUB_STEP_SUMMARY``.

Everything shown here comes from the model or the input, so it is escaped for where it goes:

- An annotation is one workflow command, ``::notice file=F,line=N,title=T::MESSAGE``, with the
  escaping GitHub's own toolkit applies (``@actions/core``): in the message ``%``, CR and LF
  become ``%25``, ``%0D``, ``%0A``; in a property ``:`` and ``,`` too (``%3A``, ``%2C``). A
  log line can therefore never end the command early or start another one.
- The runner reads workflow commands from every line a step prints, and the answer, the
  error and the live output are the model's words: a line of them starting with ``::`` would
  be obeyed. So a run in this format first stops command processing
  (``::stop-commands::TOKEN``, TOKEN random and never printed before), prints what it prints,
  then resumes (``::TOKEN::``) to emit only its own escaped annotations, and resumes on every
  way out, so the rest of the step is not left with commands off.
- The summary puts every untrusted text in code (a fenced block longer than any backtick run
  inside it, or a code span in a table cell with ``|`` escaped), so it cannot add links,
  images, HTML or table cells of its own.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import click

TITLE = "rlm-sandbox"
MESSAGE_CHARS = 1000
CELL_CHARS = 200
ANSWER_CHARS = 20000
SUMMARY_CITATIONS = 200
#: GitHub shows a few annotations per step and job; more would only flood the log.
ANNOTATED_CITATIONS = 50


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file, title), escaped as GitHub's toolkit does."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def printable(text: str, limit: int) -> str:
    """One line, every control or invisible character (terminal escapes, bidi overrides)
    shown as an escape (:func:`rlm_sandbox.safe_text.visible`), cut to ``limit``."""
    from rlm_sandbox.safe_text import visible

    flat = visible(text.replace("\t", " ").replace("\n", " "))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def annotation(
    kind: str, message: str, *, file: str | None = None, line: int | None = None, title: str = TITLE
) -> str:
    """One workflow command: ``::notice file=...,line=...,title=...::message``."""
    props = []
    if file:
        props.append(f"file={escape_property(file)}")
        if line is not None:
            props.append(f"line={int(line)}")
    props.append(f"title={escape_property(title)}")
    return f"::{kind} {','.join(props)}::{escape_data(message)}"


def workspace_path(shown: str) -> str:
    """A path as GitHub wants it in an annotation: relative to the workspace when inside it."""
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if not workspace:
        return shown
    full = os.path.abspath(shown)
    try:
        rel = os.path.relpath(full, workspace)
    except ValueError:
        return shown
    return shown if rel.startswith("..") else rel


def annotations(citations: Iterable[Any], inputs: Any = None, warnings: Iterable[str] = ()) -> list[str]:
    """The annotations of a result: each citation (verified: notice; refused: warning)."""
    lines = []
    citations = list(citations)
    for c in citations[:ANNOTATED_CITATIONS]:
        f = inputs.file(c.file) if inputs is not None and hasattr(inputs, "file") and c.file else None
        on_disk = f is not None and f.path is not None
        file = workspace_path(f.shown) if on_disk else None
        where = "" if on_disk else f"{c.file or '<context>'}:{c.line}: "
        if c.verified:
            message = where + printable(c.text or "", MESSAGE_CHARS)
            lines.append(annotation("notice", message, file=file, line=c.line, title=f"{TITLE}: cited"))
        else:
            message = where + printable(f"{c.reason} (quote: {c.quote!r})", MESSAGE_CHARS)
            lines.append(
                annotation("warning", message, file=file, line=c.line, title=f"{TITLE}: citation refused")
            )
    if len(citations) > ANNOTATED_CITATIONS:
        more = len(citations) - ANNOTATED_CITATIONS
        lines.append(annotation("notice", f"{more} more citations: see the step summary or --json"))
    for warning in warnings:
        lines.append(annotation("warning", printable(warning, MESSAGE_CHARS)))
    return lines


@contextmanager
def commands_stopped() -> Iterator[None]:
    """Workflow commands off while untrusted text is printed; back on however the block ends."""
    token = secrets.token_hex(16)
    click.echo(f"::stop-commands::{token}")
    try:
        yield
    finally:
        click.echo(f"::{token}::")


# ---------------------------------------------------------------------------- the summary


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def code_block(text: str) -> str:
    fence = _fence(text)
    return f"{fence}text\n{text}\n{fence}"


def code_cell(text: str, limit: int = CELL_CHARS) -> str:
    """Untrusted text as a code span in one table cell: one line, ``|`` escaped."""
    flat = printable(" ".join(text.split()), limit)
    if not flat:
        return ""
    longest = max((len(m) for m in re.findall(r"`+", flat)), default=0)
    ticks = "`" * (longest + 1)
    return f"{ticks} {flat.replace('|', chr(92) + '|')} {ticks}"


def summary(task: str, result: Any) -> str:
    """The step summary of one run, in GitHub-flavoured Markdown."""
    answer = result.answer if result.answer is not None else "(no answer)"
    if len(answer) > ANSWER_CHARS:
        answer = answer[:ANSWER_CHARS] + "\n[... cut]"
    toks = result.tokens.get("prompt", 0) + result.tokens.get("completion", 0)
    parts = [
        f"### {TITLE}",
        "",
        "**Task**",
        "",
        code_block(task[:ANSWER_CHARS]),
        "",
        f"**Answer** ({result.status}{', a fallback after a budget stop' if result.fallback else ''})",
        "",
        code_block(answer),
        "",
    ]
    if result.error:
        parts += ["**Error**", "", code_block(printable(result.error, 2000)), ""]
    parts += [
        "| status | LM calls | from cache | tokens | cost | nodes | containers | depth | wall |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {result.status} | {result.lm_calls} | {result.lm_cache_hits} | {toks:,} | "
        f"${result.cost_usd:.4f} | {result.nodes} | {result.containers} | {result.max_depth_reached} | "
        f"{result.wall_s:.1f} s |",
        "",
    ]
    if result.citations:
        ok = sum(c.verified for c in result.citations)
        parts += [
            f"**Citations** ({ok} verified, {len(result.citations) - ok} refused)",
            "",
            "| file | line | text | checked |",
            "|---|---|---|---|",
        ]
        for c in result.citations[:SUMMARY_CITATIONS]:
            checked = "✅ verified" if c.verified else "❌ " + code_cell(c.reason or "refused", 120)
            parts.append(
                f"| {code_cell(c.file or '<context>', 120)} | {c.line} | {code_cell(c.text or '')} | {checked} |"
            )
        if len(result.citations) > SUMMARY_CITATIONS:
            parts.append(f"\n... and {len(result.citations) - SUMMARY_CITATIONS} more (see `--json`)")
        parts.append("")
    if result.warnings:
        parts += ["**Warnings**", ""] + [f"- {code_cell(w, 300)}" for w in result.warnings[:20]] + [""]
    return "\n".join(parts) + "\n"


def append_summary(task: str, result: Any) -> str | None:
    """Append the summary to ``$GITHUB_STEP_SUMMARY`` when it is set; the path written, or None."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    with open(path, "a", encoding="utf-8") as f:
        f.write(summary(task, result))
    return path
