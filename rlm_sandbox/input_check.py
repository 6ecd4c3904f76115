"""Whether an input is something a run can use, judged on the host from its first bytes.

An empty input is refused before anything starts: a run over nothing can only cost model
calls and answer nonsense. An input that is not UTF-8 text (NUL bytes, or bytes UTF-8 cannot
decode) would become a ``str`` of replacement characters in the kernel, described to the
model as text: instead it is given as what it is, ``bytes`` (:class:`BinaryInput`), the model
is told why, and the run says so (stderr, ``warnings`` in ``--json``, the trace).

Only the head is read (:data:`HEAD_BYTES`), never the whole input: a 1 GB file costs one
64 KB read. :func:`check_input` is the per-file check, for any code that has a file's first
bytes in hand (a walker over many inputs calls it once per file).
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm_sandbox.errors import ConfigError

HEAD_BYTES = 64 * 1024


def inspect_head(head: bytes, *, complete: bool) -> str | None:
    """None if ``head`` reads as UTF-8 text, else why it does not (for the model and the user).

    ``complete``: ``head`` is the whole input. When it is not, a character cut in two at the
    end of the head is not an error (the rest of it follows)."""
    nul = head.find(b"\0")
    if nul >= 0:
        return f"it has NUL bytes (the first at byte {nul:,})"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as exc:
        return f"it is not UTF-8 (byte 0x{head[exc.start]:02x} at {exc.start:,} cannot be decoded)"
    return None


def check_input(name: str, head: bytes, *, complete: bool) -> str | None:
    """The check of one input from its first bytes: an empty input is refused (a usage
    error, before any container or model call); for a binary one, why it is binary; for
    text, None."""
    if complete and not head:
        raise ConfigError(
            f"the input is empty: {name} has no bytes, so there is nothing to search",
            hint="give -i a file with data in it, or pipe the data on standard input",
        )
    return inspect_head(head, complete=complete)


@dataclass(frozen=True)
class BinaryInput:
    """An input that is not UTF-8 text: streamed as is, ``context`` is ``bytes`` in the kernel.

    ``source`` is what the sandbox reads (a path, or a stream that kept its head); ``head``
    its first bytes, for the first prompt's preview."""

    source: Any
    name: str
    reason: str
    head: bytes

    @property
    def size(self) -> int | None:
        """Bytes, when known before the load (a file's size)."""
        return os.path.getsize(self.source) if isinstance(self.source, os.PathLike) else None

    @property
    def warnings(self) -> tuple[str, ...]:
        return (
            f"the input {self.name} is not UTF-8 text ({self.reason}): the model gets it as bytes "
            "(`context` is a bytes object)",
        )


def checked_input(source: Any, name: str) -> Any:
    """``source`` (a path, or a stream with ``head``) after :func:`check_input`: the same
    object for text, a :class:`BinaryInput` for anything else; an empty one is refused."""
    if isinstance(source, os.PathLike):
        try:
            with open(source, "rb") as f:
                head = f.read(HEAD_BYTES)
        except OSError as exc:
            raise ConfigError(f"cannot read the input {name}: {exc.strerror or exc}") from None
    else:
        head = bytes(getattr(source, "head", b""))
    reason = check_input(name, head, complete=len(head) < HEAD_BYTES)
    if reason is None:
        return source
    return BinaryInput(source, name, reason, head)


def only_one_input(values: Sequence[str]) -> str | None:
    """The one ``-i`` given (None: none). Several are refused: a run reads one input today,
    and silently keeping the last would answer about the wrong data."""
    if len(values) > 1:
        shown = ", ".join(values[:4]) + (", ..." if len(values) > 4 else "")
        raise ConfigError(
            f"-i/--input was given {len(values)} times ({shown}); a run reads one input",
            hint="give one file, or join them first: cat a.log b.log | rlm-sandbox run ... -i -",
        )
    return values[0] if values else None


def input_name(source: Any) -> str:
    """How the user would name an input: its path, or ``standard input``."""
    if isinstance(source, BinaryInput):
        return source.name
    return str(source) if isinstance(source, Path) else "standard input"
