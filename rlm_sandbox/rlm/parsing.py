"""Reading a model's reply: which code to run, whether it answered, how much output to show.

Pure functions, no I/O, so the RLM loop's trickiest string handling is testable on its own.
Models format replies loosely (CRLF, indented or unclosed fences, ``**FINAL(...)**`` inside
prose), so the parsers are lenient about layout but strict about meaning: code is taken
only from ``repl``/Python fences, and a final answer only from text *outside* fences (a
``FINAL(...)`` inside code is the kernel's business: it runs as a function call there).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["CODE_LANGUAGES", "FinalAnswer", "find_code_blocks", "find_final", "truncate_output"]

CODE_LANGUAGES = frozenset({"repl", "python", "py", "python3"})
"""Info strings whose fenced blocks are executed; the paper's prompt teaches ``repl``."""

_BLANKS = " \t"


def _open_fence(line: str) -> tuple[str, str, str] | None:
    """(indent, fence, info) when ``line`` opens a fenced block, else None.

    Plain string work, linear in the line: the regex this replaces (a lazy info string
    between runs of blanks) backtracked quadratically on a long run of spaces, in C,
    holding the GIL (a 40 000-space line took 6 s).
    """
    body = line.lstrip(_BLANKS)
    char = body[:1]
    if char not in ("`", "~"):
        return None
    run = len(body) - len(body.lstrip(char))
    if run < 3:
        return None
    return line[: len(line) - len(body)], body[:run], body[run:].strip(_BLANKS)


def _closes(line: str, char: str, length: int) -> bool:
    """Whether ``line`` is a closing fence: blanks, at least ``length`` of ``char``, blanks."""
    body = line.strip(_BLANKS)
    return len(body) >= length and body.count(char) == len(body)


@dataclass(frozen=True)
class _Block:
    language: str
    code: str
    start: int
    """Index of the first line of the block (the opening fence) in the normalized lines."""
    end: int
    """Index one past the closing fence (or the number of lines when it is unclosed)."""


def _normalize(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _dedent(line: str, indent: int) -> str:
    """Drop up to ``indent`` leading blanks: the fence's own indentation (e.g. in a list)."""
    i = 0
    while i < indent and i < len(line) and line[i] in " \t":
        i += 1
    return line[i:]


def _blocks(lines: list[str]) -> list[_Block]:
    """Every fenced block, of any language, in order (unclosed at the end: runs to the end)."""
    blocks: list[_Block] = []
    i = 0
    n = len(lines)
    while i < n:
        opened = _open_fence(lines[i])
        # A backtick fence's info string may not contain a backtick (CommonMark): that is
        # inline code such as ```x``` on one line, not a block.
        if opened is None or (opened[1][0] == "`" and "`" in opened[2]):
            i += 1
            continue
        indent_text, fence, info = opened
        indent = len(indent_text.expandtabs(4))
        language = info.split()[0].lower() if info else ""
        j = i + 1
        while j < n and not _closes(lines[j], fence[0], len(fence)):
            j += 1
        body = "\n".join(_dedent(line, indent) for line in lines[i + 1 : j])
        if j < n:
            body += "\n" if body else ""
        blocks.append(_Block(language=language, code=body, start=i, end=min(j + 1, n)))
        i = j + 1
    return blocks


def find_code_blocks(text: str) -> list[str]:
    """The code of every ``repl`` (or ``python``/``py``/``python3``) block, in order.

    Blocks of other languages (and bare ``````` fences) are skipped: models use them to show
    output or shell commands that must not run. A reply cut off inside a block (no closing
    fence) still yields that block's code up to the end.
    """
    return [b.code for b in _blocks(_normalize(text)) if b.language in CODE_LANGUAGES]


def _prose_segments(text: str) -> list[str]:
    """The reply's text outside every fenced block, as separate segments.

    Segments are scanned separately so an unbalanced ``FINAL(`` in prose can never swallow
    a code block that follows it.
    """
    lines = _normalize(text)
    segments: list[str] = []
    pos = 0
    for block in _blocks(lines):
        segments.append("\n".join(lines[pos : block.start]))
        pos = block.end
    segments.append("\n".join(lines[pos:]))
    return [s for s in segments if s]


@dataclass(frozen=True)
class FinalAnswer:
    """A final answer written in the reply's prose.

    ``kind == "value"``: ``value`` is the answer itself. ``kind == "var"``: ``value`` names a
    REPL variable holding the answer. A ``FINAL_VAR`` whose argument is not a valid Python
    identifier is still returned as ``kind == "var"`` with the raw (stripped) text, so the
    caller can tell the model exactly what was wrong; check :attr:`valid_name` first.
    """

    kind: Literal["value", "var"]
    value: str

    @property
    def valid_name(self) -> bool:
        """For ``var``: whether ``value`` can name a variable (always True for ``value``)."""
        return self.kind == "value" or (self.value.isidentifier() and not keyword.iskeyword(self.value))


_FINAL_RE = re.compile(r"(?<![A-Za-z0-9_])FINAL(?P<var>_VAR)?[ \t]*\(")
_QUOTES = ('"""', "'''", '"', "'")


def _balanced(text: str, start: int) -> tuple[str, bool]:
    """The text from ``start`` (just after an opening parenthesis) to its matching ``)``.

    Parentheses nest; a leading quoted string is skipped as a unit, so ``FINAL("a :)")``
    works, but quotes are not tracked inside free prose (an apostrophe in "it's" must not
    open a string). Returns (inner, closed); unclosed means the rest of the segment.
    """
    i = start
    n = len(text)
    while i < n and text[i] in " \t\n":
        i += 1
    for quote in _QUOTES:
        if text.startswith(quote, i):
            j = i + len(quote)
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(quote, j):
                    i = j + len(quote)
                    break
                j += 1
            else:
                return text[start:], False
            break
    depth = 1
    while i < n:
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[start:i], True
        i += 1
    return text[start:], False


def _unquote(value: str) -> str:
    """Drop one pair of quotes only when they wrap the whole value (not ``"a" and "b"``)."""
    for quote in _QUOTES:
        if len(value) >= 2 * len(quote) and value.startswith(quote) and value.endswith(quote):
            inner = value[len(quote) : -len(quote)]
            return value if quote in inner else inner
    return value


def find_final(text: str) -> FinalAnswer | None:
    """The first ``FINAL(...)`` or ``FINAL_VAR(...)`` written outside code blocks, if any.

    It may sit inside prose or markdown (``**FINAL(42)**``, ``FINAL_VAR(`answer`)``), span
    several lines and contain parentheses. ``FINAL(value)`` gives the inner text stripped,
    with one pair of matching surrounding quotes removed. ``FINAL_VAR(name)`` gives the name
    without quotes or backticks. Empty calls (``FINAL()``, as in "I'll call FINAL() later")
    are skipped. A call left unclosed (a reply cut off) takes the rest of its prose segment.
    """
    for segment in _prose_segments(text):
        for m in _FINAL_RE.finditer(segment):
            inner, _closed = _balanced(segment, m.end())
            value = inner.strip()
            if m.group("var"):
                name = _unquote(value.strip("`").strip()).strip()
                if name:
                    return FinalAnswer("var", name)
            else:
                value = _unquote(value)
                if value.strip():
                    return FinalAnswer("value", value)
    return None


def truncate_output(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text`` plus a marker saying how many were cut.

    The head matters most (what a cell printed first), but the tail often holds the error or
    the final result, so a short tail is kept too.
    """
    limit = max(0, limit)
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    tail = min(limit // 5, 1000)
    head = limit - tail
    marker = f"\n... [{cut} characters truncated] ...\n"
    return text[:head] + marker + (text[len(text) - tail :] if tail else "")
