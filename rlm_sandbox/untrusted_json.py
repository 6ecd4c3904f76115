"""JSON and text from a container or a model, read on the host in bounded time and memory.

``json.loads`` on untrusted text is not: ``int()`` of a long digit string is quadratic, deep
nesting overflows the C stack guard, and ``NaN``/``Infinity`` (or ``1e999``, which becomes
``inf``) poison every sum a reader computes. :func:`loads` bounds size, depth and integer
digits and refuses the non-standard numbers; :func:`valid_text` makes a model's lone
surrogates writable. The schemas checked against such values are
:mod:`rlm_sandbox.untrusted`'s.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_INT_DIGITS = 4300
"""Longest integer accepted in untrusted JSON (CPython's own default for ``int(str)``);
held here too, because a process may have lifted the interpreter-wide limit."""

MAX_VALUE_DEPTH = 64
TRACE_LINE_CHARS = 1 << 30
TRACE_DEPTH = 256
MAX_VALUE_CHARS = 1 << 20
"""A typed answer is checked only up to this many characters of JSON (1 MiB): a model's
structured answer, not a data dump; a longer one goes back to the model to shorten."""


def _bounded_int(text: str) -> int:
    digits = len(text) - (text[:1] == "-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer with {digits} digits (at most {MAX_INT_DIGITS} are read)")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number that overflows (``1e999``) would become ``inf``, the very value
    ``NaN``/``Infinity`` are refused to keep out; refused the same way."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return value


def loads(
    text: str | bytes,
    *,
    max_chars: int = MAX_VALUE_CHARS,
    max_depth: int = MAX_VALUE_DEPTH,
    constants: bool = False,
) -> Any:
    """``json.loads`` for untrusted text: bounded size, depth and integers; ``NaN`` and
    ``Infinity`` (and numbers that overflow to them) refused unless ``constants`` (a reader of our own traces, which Python's
    json may have written them into, then checks numbers with :func:`finite`).

    Every failure is a ``ValueError`` saying what was wrong.
    """
    if len(text) > max_chars:
        raise ValueError(f"{len(text)} characters of JSON (at most {max_chars} are read)")
    try:
        if constants:
            value = json.loads(text, parse_int=_bounded_int)
        else:
            value = json.loads(
                text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
            )
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    check_depth(value, max_depth)
    return value


def check_depth(value: Any, limit: int) -> None:
    """Raise ``ValueError`` if ``value`` nests lists/dicts deeper than ``limit`` (iterative)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            raise ValueError(f"JSON nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so it encodes as UTF-8.

    A model's JSON may carry ``"\\ud800"``, which decodes to a str no UTF-8 writer (the
    HTTP client of the next request, a file, a terminal) accepts. Linear; a no-op for
    ordinary text."""
    return _SURROGATE.sub("\ufffd", text) if not text.isascii() else text


def finite(value: Any) -> bool:
    """A real number a reader may compute with (not a bool, NaN or an infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
