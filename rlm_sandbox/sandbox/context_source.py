"""What can be loaded as a sandbox's ``context``, and how its bytes are produced in chunks.

Why it is its own module: :class:`~rlm_sandbox.sandbox.core.Sandbox` streams a context to the
kernel chunk by chunk (never the whole input in host memory); which Python values count as a
context (text, bytes, JSON, a path, a file, an owner-streamed :class:`ContextStream` such as
:class:`rlm_sandbox.inputs.InputSet`) and how each is cut into chunks is a question of its
own, with no sandbox state, so the sandbox's lifecycle is not buried under it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from rlm_sandbox.kernel import protocol as P


@dataclass(frozen=True, slots=True)
class FileStart:
    """In a ``files`` context stream: the chunks that follow are the text of ``name``."""

    name: str


@runtime_checkable
class ContextStream(Protocol):
    """A context its owner streams itself (:class:`rlm_sandbox.inputs.InputSet`): several
    files, compressed ones, standard input. ``kind`` is ``str`` (one text) or ``files`` (a
    dict of name -> text; each file's chunks follow a :class:`FileStart`); ``size`` is the
    total in bytes, -1 when unknown. ``pieces`` may raise to stop the load (a cap)."""

    context_kind: str
    context_size: int

    def pieces(self, chunk: int) -> Iterator[bytes | memoryview | FileStart]: ...


ContextInput = str | bytes | bytearray | memoryview | os.PathLike | list | dict | BinaryIO | ContextStream


def context_source(data: ContextInput, kind: str | None) -> tuple[Callable[[int], Any], int, str]:
    """How to produce the input's bytes in chunks, its size (-1 unknown) and its kind."""
    if kind is not None and kind not in P.CONTEXT_KINDS:
        raise ValueError(f"kind must be one of {P.CONTEXT_KINDS}")
    if isinstance(data, ContextStream):
        return data.pieces, data.context_size, data.context_kind
    if isinstance(data, str):
        raw = data.encode("utf-8", errors="surrogatepass")
        return _chunks_of(raw), len(raw), kind or "str"
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data).cast("B")
        return _chunks_of(view), len(view), kind or "bytes"
    if isinstance(data, list | dict | tuple):
        try:
            raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise TypeError(f"context list/dict must be JSON-serialisable: {exc}") from None
        return _chunks_of(raw), len(raw), "json"
    if isinstance(data, os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        size = path.stat().st_size

        def from_file(chunk: int):
            with open(path, "rb", buffering=0) as f:
                while piece := f.read(chunk):
                    yield piece

        return from_file, size, kind or "str"
    if hasattr(data, "read"):

        def from_stream(chunk: int):
            reader = getattr(data, "buffer", data)
            while piece := reader.read(chunk):
                yield piece if isinstance(piece, bytes) else piece.encode("utf-8")

        return from_stream, -1, kind or "str"
    raise TypeError(f"cannot load a {type(data).__name__} as context (str, bytes, Path, file, list or dict)")


def _chunks_of(view: bytes | memoryview) -> Callable[[int], Any]:
    def gen(chunk: int):
        mv = memoryview(view)
        for pos in range(0, len(mv), chunk):
            yield mv[pos : pos + chunk]

    return gen
