"""Reading an input decompressed, a chunk at a time: ``.gz``, ``.bz2``, ``.xz``, ``.zst``.

Every reader here returns at most the bytes asked for per ``read(n)``, whatever the ratio of
the compressed data, so a gzip bomb costs the host one chunk of memory at a time; the cap on
what an input may become is counted above, by :class:`rlm_sandbox.inputs.InputSet`, as the
decompressed bytes stream past. Files are recognised by their suffix (a ``.log`` is never
guessed to be compressed); standard input, which has no name, by its first bytes.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import Any, BinaryIO

#: suffix -> compression name (also the name used in messages and descriptions)
SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
#: magic bytes -> compression, for standard input
MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


class DecompressError(Exception):
    """The data is not what its name (or its first bytes) says: corrupt or truncated."""


def compression_of_name(name: str) -> str | None:
    """``gzip``/``bzip2``/``xz``/``zstd`` for a name ending in its suffix, else None."""
    lowered = name.lower()
    for suffix, kind in SUFFIXES.items():
        if lowered.endswith(suffix):
            return kind
    return None


def compression_of_head(head: bytes) -> str | None:
    """The compression whose magic bytes start ``head`` (standard input has no name)."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return None


def decompressed(raw: BinaryIO, compression: str | None) -> BinaryIO:
    """A reader of ``raw``'s decompressed bytes (``raw`` itself when not compressed)."""
    if compression is None:
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "bzip2":
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)  # type: ignore[return-value]
    raise ValueError(f"unknown compression {compression!r}")


class Opened(io.RawIOBase):
    """A decompressed reader over a file it owns: closing it closes both."""

    def __init__(self, raw: BinaryIO, compression: str | None) -> None:
        self._raw = raw
        self._reader = decompressed(raw, compression)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)

    def readinto(self, buffer: Any) -> int:
        data = self._reader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            if self._reader is not self._raw:
                self._reader.close()
        finally:
            self._raw.close()
            super().close()


def read_chunk(reader: BinaryIO, n: int) -> bytes:
    """``reader.read(n)`` with every decoder's complaint turned into :class:`DecompressError`."""
    try:
        return reader.read(n)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise DecompressError(str(exc) or type(exc).__name__) from None
    except Exception as exc:  # zstandard.ZstdError
        if type(exc).__name__ == "ZstdError":
            raise DecompressError(str(exc)) from None
        raise
