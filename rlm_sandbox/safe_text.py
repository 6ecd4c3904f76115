"""Text from a container, a model, a trace or a project file, made safe to show on a terminal.

A terminal acts on what it is sent: ``ESC ] 52`` writes the clipboard, ``ESC ] 0`` the window
title, ``ESC ] 8`` draws a hyperlink whose target is not its text, ``ESC [ 2J`` clears the
screen, C1 bytes do the same in one character, and bidi overrides or zero-width characters
make text read differently from what it is. And rich reads ``[...]`` in a string as markup: a
stray ``[/]`` raises, ``[link=...]`` makes a link. So everything that did not come from this
program is shown through this module:

- :func:`visible` turns every control character (C0 but newline and tab, DEL, C1) and every
  invisible Unicode character (format characters such as U+202E, line and paragraph
  separators, surrogates, unassigned code points) into a printable escape like ``\\x1b`` or
  ``\\u202e``; the text is shown, never acted on;
- :func:`text` / :func:`line` build rich ``Text`` objects from such strings (never markup);
- :func:`visible_data` does it to every string in an event or any JSON-like value;
- :func:`json_text` writes JSON whose bytes hold no control or invisible character at all
  (they become ``\\uXXXX`` escapes, which decode to exactly the same value);
- :func:`write_answer` prints a run's answer: escaped at a terminal, exact into a pipe or a
  file (the answer is the program's output, and a pipeline must get it byte for byte).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import unicodedata
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.text import Text

_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Cn"})
_ASCII_TABLE = {cp: f"\\x{cp:02x}" for cp in (*range(0x00, 0x20), 0x7F) if cp not in (0x09, 0x0A)}
# Runs of characters that are not plain ASCII: a run that str.isprintable() accepts (most
# text in any script) is kept in one C call; only a run with something odd in it (a control,
# a format character, but also a no-break space) is looked at character by character.
_NOT_PLAIN = re.compile(r"[^\t\n\x20-\x7e]+")
_NOT_PLAIN_JSON = re.compile(r"[^\x20-\x7e]+")  # json.dumps has escaped C0 already


@functools.lru_cache(maxsize=4096)
def _hidden(ch: str) -> bool:
    """Whether a terminal could act on ``ch`` or it could disguise the text around it."""
    cp = ord(ch)
    if cp < 0x20 or 0x7F <= cp <= 0x9F:
        return True
    if cp < 0xA0:
        return False
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES


def _escape(ch: str) -> str:
    cp = ord(ch)
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def visible(value: object) -> str:
    """``value`` as text whose every character is shown as itself or as an escape: no
    control sequence, no invisible character survives (newlines and tabs do)."""
    text = value if isinstance(value, str) else str(value)
    text = text.replace("\r\n", "\n")
    if text.isascii():
        return text.translate(_ASCII_TABLE)
    if text.replace("\n", "").replace("\t", "").isprintable():  # nothing hidden anywhere: C speed
        return text
    return _NOT_PLAIN.sub(lambda m: _fix_run(m.group(), _escape), text)


def _fix_run(run: str, escape: Any) -> str:
    if run.isprintable():
        return run
    return "".join(escape(ch) if _hidden(ch) else ch for ch in run)


def visible_data(value: Any) -> Any:
    """Every string in a JSON-like value (keys too) through :func:`visible`; numbers, booleans
    and None stay as they are, so a trace event keeps its shape."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {visible(k) if isinstance(k, str) else k: visible_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [visible_data(v) for v in value]
    return value


def text(value: object, style: str | None = None) -> Text:
    """A rich ``Text`` of ``value``: shown, never read as markup, no control character."""
    from rich.text import Text

    return Text(visible(value), style=style or "")


def line(*parts: object | tuple[object, str]) -> Text:
    """``Text.assemble`` where every part (a value, or ``(value, style)``) is made visible;
    the program's own labels go through the same door, so there is only one."""
    from rich.text import Text

    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            value, style = part
            out.append(visible(value), style=style)
        else:
            out.append(visible(part))
    return out


def json_text(value: Any, default: Any = None) -> str:
    """``json.dumps(value, ensure_ascii=False)`` with DEL, C1, invisible and unpaired
    surrogate characters written as ``\\uXXXX``: the same value to any JSON reader, bytes a
    terminal cannot act on, and one line even for readers that split at U+2028 or NEL."""
    raw = json.dumps(value, ensure_ascii=False, default=default)
    if (raw.isascii() and "\x7f" not in raw) or raw.isprintable():
        return raw
    return _NOT_PLAIN_JSON.sub(lambda m: _fix_run(m.group(), _json_escape), raw)


def _json_escape(ch: str) -> str:
    cp = ord(ch)
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    cp -= 0x10000
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def write_answer(answer: str | None, stream: TextIO | None = None) -> None:
    """Print an answer and a newline: made visible at a terminal, exact anywhere else (a
    character the stream cannot encode, such as a lone surrogate, becomes a ``\\`` escape
    instead of ending the program)."""
    out = sys.stdout if stream is None else stream
    body = "" if answer is None else str(answer)
    if is_terminal(out):
        body = visible(body)
    data = (body + "\n").encode(getattr(out, "encoding", None) or "utf-8", errors="backslashreplace")
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(data)
        buffer.flush()
    else:  # a text-only stream (click's test runner): write what it can hold
        out.write(data.decode(getattr(out, "encoding", None) or "utf-8", errors="replace"))
        out.flush()
