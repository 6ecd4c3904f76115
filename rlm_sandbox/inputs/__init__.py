"""Where a run's input comes from: files, directories, standard input, compressed or not.

``run`` takes many inputs (``-i`` repeated: files, directories walked in a stable order and
filtered by ``--glob``, ``-`` for standard input); ``.gz``, ``.bz2``, ``.xz`` and ``.zst``
are decompressed as they stream. :func:`collect_inputs` turns them into one ordered
:class:`InputSet` (:mod:`.walk` finds the files and says what it skipped; :mod:`.files`
streams them to the kernel, counts and caps them, and reads them again to check
citations; :mod:`.decompress` reads each format a bounded chunk at a time). Nothing is
read whole on the host.

With one input ``context`` is a ``str``; with several, a ``dict`` of name -> text in the
order found. The API takes the same (:func:`as_input`): a ``Path`` (file or directory), a
list of paths, or a dict of name -> text.

``open_input`` (one file or standard input, peeked for the preview) is what ``chat`` and
``replay`` use: one input, as before. Inputs are checked from their head
(:mod:`rlm_sandbox.input_check`): empty is refused, binary is loaded as bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.input_check import HEAD_BYTES, BinaryInput, checked_input
from rlm_sandbox.inputs.decompress import compression_of_head
from rlm_sandbox.inputs.files import FileStats, InputFile, InputSet, as_input, collect_inputs

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


def checked_inputs(inputs: InputSet) -> Any:
    """The run's context from the ``-i`` values, checked from the head of a single input
    (:mod:`rlm_sandbox.input_check`): an empty file or an empty standard input is refused
    before anything starts; one that is not UTF-8 text becomes a
    :class:`~rlm_sandbox.input_check.BinaryInput` (``bytes`` in the kernel). Several files
    (a ``dict`` of texts) are decoded as text as they stream."""
    if len(inputs.files) != 1:
        return inputs
    path = inputs.simple_path()
    if path is not None:
        checked = checked_input(path, str(path))
        return checked if isinstance(checked, BinaryInput) else inputs
    stdin = inputs.stdin_source
    if inputs.files[0].is_stdin and isinstance(stdin, StreamInput):
        if not stdin.head:
            checked_input(stdin, "standard input")  # refuses an empty input
        if compression_of_head(stdin.head) is None:  # compressed: decompressed as it streams
            checked = checked_input(stdin, "standard input")
            return checked if isinstance(checked, BinaryInput) else inputs
    return inputs


__all__ = [
    "FileStats",
    "InputFile",
    "InputSet",
    "StreamInput",
    "as_input",
    "checked_inputs",
    "collect_inputs",
    "open_input",
]
