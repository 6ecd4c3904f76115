"""Where a run's input comes from: a file (streamed from disk) or standard input (streamed).

Neither is read whole on the host: the sandbox receives it in chunks. Standard input is
peeked at (64 KB) so the model's first prompt can show how the input begins, and both are
checked from their head (:mod:`rlm_sandbox.input_check`: empty is refused, binary is bytes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.input_check import HEAD_BYTES, checked_input

PEEK = HEAD_BYTES


class StreamInput:
    """A non-seekable byte stream whose first bytes were already read, for the preview."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.head = stream.read(PEEK) or b""
        self._pending = self.head

    def read(self, n: int = -1) -> bytes:
        if self._pending:
            if n < 0:
                data, self._pending = self._pending, b""
            else:
                data, self._pending = self._pending[:n], self._pending[n:]
            return data
        return self._stream.read(n)


def open_input(path: str | None) -> Any:
    """``-i FILE`` -> the path (streamed later); ``-`` or nothing -> standard input; either
    wrapped as :class:`~rlm_sandbox.input_check.BinaryInput` when it is not UTF-8 text."""
    if path and path != "-":
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"input file not found: {p}", hint="check the path given to -i/--input")
        if not p.is_file():
            raise ConfigError(f"input is not a regular file: {p}")
        return checked_input(p, str(p))
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError(
            "no input: give -i FILE or pipe the input on standard input",
            hint="e.g. cat big.log | rlm-sandbox run ...",
        )
    return checked_input(StreamInput(sys.stdin.buffer), "standard input")
