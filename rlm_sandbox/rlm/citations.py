"""Citations the host checks: ``cite(path, line, quote)`` in a cell, verified against the
original input on this host, never against anything the container says.

How they travel. A cell's ``cite`` calls reach the host with that cell's reply (bounded in
number and size, checked like every frame). Each node keeps what its cells cited
(:class:`CitationLog`). A child RLM's citations join its parent's log when the child's
answer is handed back to the parent's cell: the parent's answer is built on what its cells
received, so it carries their evidence; a child that fails hands nothing back. So the
root's answer carries its own citations and those of every child whose answer reached it,
at any depth. Children cite in the root's terms (a file of the run's input and a line of
it): a child's ``context`` is only its prompt, so its parent must tell it where its text
came from, as the scripted policy does (``SOURCE:`` in the child's prompt).

How they are checked (:func:`verify`). The cited file is read again from this host's disk
(decompressed afresh, streamed: never loaded whole), up to the cited line; that line,
bounded, must contain the quote. A citation is ``verified`` only then; otherwise it carries
a ``reason``: no such file, a line past the end, an empty quote, a quote not in that line,
a file changed since it was loaded. ``text`` is the real line (cut to :data:`TEXT_CHARS`
around the quote), so what is shown is the input's, not the model's.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from rlm_sandbox.inputs import InputSet
from rlm_sandbox.inputs.files import MEMORY_NAME

#: Citations one node keeps (its own and its children's); later ones are counted, not kept.
MAX_PER_NODE = 1000
#: Bytes of a cited line read to look for the quote; a longer line is searched this far.
MAX_LINE_BYTES = 1 << 20
#: Characters of the line shown as ``text``.
TEXT_CHARS = 300
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Claim:
    """What a cell cited: unchecked, as the kernel sent it, and the node whose cell it was."""

    file: str | None
    line: int
    quote: str
    node: str


@dataclass(frozen=True)
class Citation:
    """A checked citation; ``to_json`` gives the keys of ``--json``'s ``citations``."""

    file: str | None
    line: int
    quote: str
    text: str | None  # the real line of the input (bounded); None when there is no such line
    verified: bool
    reason: str | None  # why it is not verified
    node: str = "root"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "quote": self.quote,
            "text": self.text,
            "verified": self.verified,
            "reason": self.reason,
        }


class CitationLog:
    """One node's citations: its cells' and its answered children's; thread-safe (children
    answer from the handler pool), bounded, in the order they came."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Claim] = []
        self.dropped = 0

    def add(self, raw: Iterable[Sequence[Any]], node: str) -> None:
        self.extend(Claim(r[0], int(r[1]), str(r[2]), node) for r in raw)

    def extend(self, claims: Iterable[Claim]) -> None:
        with self._lock:
            for claim in claims:
                if len(self._items) < MAX_PER_NODE:
                    self._items.append(claim)
                else:
                    self.dropped += 1

    def absorb(self, child: CitationLog) -> None:
        """A child's answer reached this node's cell: its evidence comes with it."""
        items = child.claims()
        self.extend(items)
        with self._lock:
            self.dropped += child.dropped

    def claims(self) -> list[Claim]:
        with self._lock:
            return list(self._items)


# ---------------------------------------------------------------------------- checking


def verify(claims: Sequence[Claim], source: Any) -> list[Citation]:
    """Check ``claims`` against ``source``, the run's original input on this host (an
    :class:`InputSet`, a ``str`` or ``bytes``; anything else cannot be checked). The same
    citation twice is kept once; they come sorted by input file and line."""
    unique: list[Claim] = []
    seen: set[tuple[str | None, int, str]] = set()
    for c in claims:
        key = (c.file, c.line, c.quote)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    if not unique:
        return []
    files = _Files(source)
    resolved: list[tuple[Claim, str | None, str | None]] = []  # claim, file name, reason
    wanted: dict[str, set[int]] = {}
    for c in unique:
        name, reason = files.resolve(c.file)
        if reason is None and not c.quote.strip():
            reason = "the quote is empty: quote the words of that line that support the answer"
        if reason is None and name is not None:
            wanted.setdefault(name, set()).add(c.line)
        resolved.append((c, name, reason))
    lines: dict[str, dict[int, bytes]] = {}
    totals: dict[str, int] = {}
    problems: dict[str, str] = {}
    for name, numbers in wanted.items():
        try:
            lines[name], totals[name] = files.read_lines(name, sorted(numbers))
        except (OSError, ValueError, EOFError) as exc:
            problems[name] = f"{name} cannot be read again on this host: {exc}"
    out = []
    resolved.sort(key=lambda r: files.order(r[1], r[0]))
    for c, name, reason in resolved:
        shown_file = name if name is not None else c.file
        if reason is None and name is not None and name in problems:
            reason = problems[name]
        if reason is not None or name is None:
            out.append(Citation(shown_file, c.line, c.quote, None, False, reason, c.node))
            continue
        raw = lines[name].get(c.line)
        if raw is None:
            reason = f"line {c.line} is past the end of {name} ({totals[name]:,} lines)"
            out.append(Citation(name, c.line, c.quote, None, False, reason, c.node))
            continue
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        quote = c.quote.strip()
        found = text.find(quote)
        if found < 0:
            cut = " (searched its first 1 MiB)" if len(raw) >= MAX_LINE_BYTES else ""
            reason = f"the quote is not in line {c.line} of {name}{cut}"
            out.append(Citation(name, c.line, c.quote, excerpt(text, -1, 0), False, reason, c.node))
            continue
        out.append(Citation(name, c.line, c.quote, excerpt(text, found, len(quote)), True, None, c.node))
    return out


def excerpt(text: str, at: int, length: int, limit: int = TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, keeping ``text[at:at+length]`` in view."""
    if len(text) <= limit:
        return text
    if at < 0 or at + length <= limit - 1:
        return text[: limit - 1] + "…"
    start = max(0, min(at - (limit - length) // 2, len(text) - limit + 2))
    body = text[start : start + limit - 2]
    return "…" + body + ("…" if start + limit - 2 < len(text) else "")


class _Files:
    """The run's input as named texts that can be read again, line by line."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def resolve(self, cited: str | None) -> tuple[str | None, str | None]:
        """(the input's name, None) for a cited file, or (None, why not)."""
        src = self.source
        if isinstance(src, InputSet):
            names = src.names
            if cited is None and len(names) != 1:
                return None, f"the input has {len(names)} files: name the file (a key of context)"
            name = names[0] if cited is None else cited
            if name not in names:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                return None, f"there is no input named {cited!r} (the inputs: {shown})"
            if src.changed(name):
                return None, f"{name} changed on this host since it was loaded: it cannot be checked"
            return name, None
        if isinstance(src, str | bytes | bytearray):
            if cited is None or cited == MEMORY_NAME:
                return MEMORY_NAME, None
            return None, f"there is no input named {cited!r}: the input is one text (cite it with path None)"
        return None, f"a {type(src).__name__} input has no lines to check (only files and text do)"

    def order(self, name: str | None, claim: Claim) -> tuple[int, int, str]:
        """Citations are listed as diagnostics are: by input file, then line; ones that name
        no input last. Stable whatever order parallel children answered in."""
        src = self.source
        names = src.names if isinstance(src, InputSet) else [MEMORY_NAME]
        rank = names.index(name) if name in names else len(names)
        return rank, claim.line, claim.quote

    def open(self, name: str) -> BinaryIO:
        src = self.source
        if isinstance(src, InputSet):
            return src.open(name)
        if isinstance(src, str):
            return _StrReader(src)  # type: ignore[return-value]
        return io.BytesIO(bytes(src))

    def read_lines(self, name: str, numbers: list[int]) -> tuple[dict[int, bytes], int]:
        with self.open(name) as stream:
            return read_lines(stream, numbers)


def read_lines(
    stream: BinaryIO, numbers: Sequence[int], max_line: int = MAX_LINE_BYTES
) -> tuple[dict[int, bytes], int]:
    """Lines ``numbers`` (1-based, ascending) of ``stream``, each cut to ``max_line`` bytes,
    in one streaming pass that stops after the last one wanted; and the lines counted (the
    whole stream's count when it was read to its end). A line is there only if the stream
    holds it: a number past the end is simply missing."""
    found: dict[int, bytes] = {}
    targets = list(numbers)
    t = 0
    line = 1  # the line the next byte belongs to
    collecting: bytearray | None = None
    seen_bytes = False
    last_byte = 0x0A
    while t < len(targets):
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            break
        seen_bytes = True
        last_byte = chunk[-1]
        pos, n = 0, len(chunk)
        while pos < n and t < len(targets):
            target = targets[t]
            if line < target:  # skip whole lines
                need = target - line
                if chunk.count(b"\n", pos) < need:
                    line += chunk.count(b"\n", pos)
                    pos = n
                    break
                for _ in range(need):
                    pos = chunk.index(b"\n", pos) + 1
                line = target
                continue
            if collecting is None:
                collecting = bytearray()
            end = chunk.find(b"\n", pos)
            stop = n if end < 0 else end
            room = max_line - len(collecting)
            if room > 0:
                collecting += chunk[pos : min(stop, pos + room)]
            if end < 0:
                pos = n
                break
            found[target] = bytes(collecting)
            collecting = None
            t += 1
            while t < len(targets) and targets[t] == target:
                t += 1
            line += 1
            pos = end + 1
    if collecting is not None and t < len(targets):  # the last line has no newline
        found[targets[t]] = bytes(collecting)
    total = line if seen_bytes and last_byte != 0x0A else line - 1
    return found, max(total, 0)


class _StrReader(io.RawIOBase):
    """A ``str`` read as UTF-8 a slice at a time (a 1 GB text is never encoded whole)."""

    def __init__(self, text: str, chars: int = 1 << 20) -> None:
        self._text = text
        self._pos = 0
        self._chars = chars

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._text):
            return b""
        piece = self._text[self._pos : self._pos + self._chars]
        self._pos += len(piece)
        return piece.encode("utf-8", "surrogatepass")
