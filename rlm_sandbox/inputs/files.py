"""An ordered set of input files: what ``context`` is made of, and how to read it again.

One :class:`InputSet` is the whole input of a run: files on disk (plain or compressed),
standard input, or texts given in memory (the API's ``dict`` of name -> text). It streams
itself to the kernel (it is a :class:`~rlm_sandbox.sandbox.context_source.ContextStream`): with one
input as one text (``context`` is a ``str``), with several as kind ``files``, which the
kernel makes into a ``dict`` of name -> text in this order. The bytes travel raw, never
JSON-escaped.

While it streams it counts, per file, the decompressed bytes and the lines (for the first
prompt) and enforces the cap on the whole input (``--max-input-bytes``): a chunk that would
take the total past the cap is never sent, and :class:`~rlm_sandbox.errors.InputTooLarge`
names the file and the cap. Decompressed sizes are not known in advance, so this is the
only place a gzip bomb can be stopped, and it is stopped before the container holds more
than the cap (and the host never more than one chunk).

The host reads the input again to check citations (:mod:`rlm_sandbox.rlm.citations`):
:meth:`InputSet.open` gives a file decompressed afresh from disk. Standard input cannot be
read twice, so its raw bytes are kept in a private temporary file while they stream past
(removed by :meth:`InputSet.close`).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rlm_sandbox.errors import ConfigError, InputTooLarge
from rlm_sandbox.inputs.decompress import (
    DecompressError,
    Opened,
    compression_of_head,
    compression_of_name,
    decompressed,
    read_chunk,
)
from rlm_sandbox.inputs.walk import STDIN_NAME, find_files
from rlm_sandbox.sandbox.context_source import FileStart

HEAD_BYTES = 300  # of each file, kept for the first prompt's preview
MEMORY_NAME = "<context>"


@dataclass(frozen=True)
class InputFile:
    """One input: its name in ``context`` (and in citations), and where it comes from."""

    name: str
    shown: str  # the path as the user gave it (what a GitHub annotation points at)
    path: Path | None = None  # on this host; None: standard input or text in memory
    compression: str | None = None  # gzip, bzip2, xz, zstd
    size: int | None = None  # bytes on disk when known (compressed size for a compressed file)
    text: str | None = None  # text given in memory
    mtime_ns: int | None = None  # when it was found: a file changed since is not trusted for citations

    @property
    def is_stdin(self) -> bool:
        return self.path is None and self.text is None


@dataclass
class FileStats:
    """What streaming a file found: decompressed bytes, lines, its first bytes."""

    bytes: int = 0
    newlines: int = 0
    last: int = 0x0A  # the last byte seen (a newline until there is one)
    head: bytes = b""
    complete: bool = False  # read to its end

    def add(self, piece: bytes | memoryview) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += bytes(piece[: HEAD_BYTES - len(self.head)])
        self.bytes += len(piece)
        self.newlines += bytes(piece).count(b"\n") if isinstance(piece, memoryview) else piece.count(b"\n")
        if len(piece):
            self.last = piece[-1]

    @property
    def lines(self) -> int:
        return self.newlines + (0 if self.last == 0x0A else 1)


@dataclass
class _Spool:
    """Standard input's raw bytes, kept in a private file so citations can be checked."""

    path: Path
    complete: bool = False


class InputSet:
    """The input of a run as an ordered list of files (see the module's docstring)."""

    def __init__(
        self,
        files: Sequence[InputFile],
        *,
        warnings: Sequence[str] = (),
        as_dict: bool | None = None,
        stdin: BinaryIO | None = None,
    ) -> None:
        if not files:
            raise ConfigError("no input files", hint="give -i FILE or a directory, or pipe the input")
        self.files = list(files)
        self.warnings = list(warnings)
        self.as_dict = len(self.files) > 1 if as_dict is None else as_dict
        self.stats: dict[str, FileStats] = {}
        self.max_bytes: int | None = None
        self.cap_source = "--max-input-bytes"
        self._stdin = stdin
        self._spool: _Spool | None = None
        self._stdin_compression: str | None = None
        if sum(f.is_stdin for f in self.files) > 1:
            raise ConfigError("standard input can be one input only")
        if any(f.is_stdin for f in self.files) and stdin is None:
            raise ConfigError("standard input is an input but no stream was given")

    # ---- what the sandbox needs (ContextStream)

    @property
    def context_kind(self) -> str:
        return "files" if self.as_dict else "str"

    @property
    def context_size(self) -> int:
        return -1  # decompressed sizes are known only once streamed

    def bound(self, max_bytes: int | None, source: str = "--max-input-bytes") -> InputSet:
        """Cap the decompressed total at ``max_bytes`` (``source`` names the setting)."""
        self.max_bytes, self.cap_source = max_bytes, source
        return self

    def check_known_sizes(self) -> None:
        """Refuse before any container starts when files whose size is known (plain files,
        texts) already pass the cap; compressed files and standard input are counted as
        they stream."""
        cap = self.max_bytes
        if cap is None:
            return
        total = 0
        for f in self.files:
            known = len(f.text.encode("utf-8", "surrogatepass")) if f.text is not None else None
            if known is None and f.path is not None and f.compression is None:
                known = f.size
            if known is None:
                continue
            total += known
            if total > cap:
                raise InputTooLarge(f.shown, cap, self.cap_source)

    def pieces(self, chunk: int) -> Iterator[bytes | memoryview | FileStart]:
        """The input's bytes in chunks, each file after its :class:`FileStart` (kind files);
        counted, capped, and for standard input kept in the spool as they pass."""
        cap = self.max_bytes
        total = 0
        self.stats = {}
        for f in self.files:
            if self.as_dict:
                yield FileStart(f.name)
            stats = self.stats[f.name] = FileStats()
            for piece in self._read(f, chunk):
                if cap is not None and total + len(piece) > cap:
                    raise InputTooLarge(f.shown, cap, self.cap_source)
                total += len(piece)
                stats.add(piece)
                yield piece
            stats.complete = True

    # ---- reading

    def _read(self, f: InputFile, chunk: int) -> Iterator[bytes | memoryview]:
        if f.text is not None:
            raw = memoryview(f.text.encode("utf-8", "surrogatepass"))
            for pos in range(0, len(raw), chunk):
                yield raw[pos : pos + chunk]
            return
        if f.is_stdin and (self._spool is None or not self._spool.complete):
            yield from self._read_stdin(f, chunk)
            return
        with self.open(f.name) as reader:
            while piece := self._chunk(reader, chunk, f):
                yield piece

    def _chunk(self, reader: BinaryIO, n: int, f: InputFile) -> bytes:
        try:
            return read_chunk(reader, n)
        except DecompressError as exc:
            what = (
                f"valid {f.compression or self._stdin_compression} data"
                if self._compression(f)
                else "readable"
            )
            raise ConfigError(
                f"input {f.shown} is not {what}: {exc}",
                hint="check the file, or leave it out (--glob chooses the files of a directory)",
            ) from None

    def _compression(self, f: InputFile) -> str | None:
        return self._stdin_compression if f.is_stdin else f.compression

    @property
    def stdin_source(self) -> BinaryIO | None:
        """The standard input this set reads (its ``-``), if any."""
        return self._stdin

    def compression_of(self, name: str) -> str | None:
        """How the input ``name`` was compressed (standard input: known once it streamed)."""
        f = self.file(name)
        return None if f is None else self._compression(f)

    def _read_stdin(self, f: InputFile, chunk: int) -> Iterator[bytes]:
        """Standard input, decompressed when its first bytes say so, its raw bytes kept."""
        assert self._stdin is not None
        source = getattr(self._stdin, "buffer", self._stdin)
        fd, name = tempfile.mkstemp(prefix="rlm-sandbox-stdin-")  # 0600, this user's temp dir
        self._spool = _Spool(Path(name))
        with os.fdopen(fd, "wb") as spool:
            tee = _Tee(source, spool)
            head = tee.peek(8)
            self._stdin_compression = compression_of_head(head)
            reader = decompressed(tee, self._stdin_compression)  # type: ignore[arg-type]
            while piece := self._chunk(reader, chunk, f):
                yield piece
            while tee.read(1 << 20):  # the rest of a compressed stream after its end marker
                pass
        self._spool.complete = True

    def open(self, name: str) -> BinaryIO:
        """The input ``name`` decompressed, read afresh from this host (for citations)."""
        f = self.file(name)
        if f is None:
            raise KeyError(name)
        if f.text is not None:
            return io.BytesIO(f.text.encode("utf-8", "surrogatepass"))
        if f.is_stdin:
            if self._spool is None or not self._spool.complete:
                raise OSError("standard input was not read to its end")
            return Opened(open(self._spool.path, "rb"), self._stdin_compression)  # type: ignore[return-value]
        assert f.path is not None
        return Opened(open(f.path, "rb"), f.compression)  # type: ignore[return-value]

    def changed(self, name: str) -> bool:
        """Has the file on disk changed since it was found (so it is not what was loaded)?"""
        f = self.file(name)
        if f is None or f.path is None or f.mtime_ns is None:
            return False
        try:
            st = os.stat(f.path)
        except OSError:
            return True
        return st.st_mtime_ns != f.mtime_ns or st.st_size != f.size

    # ---- about the files

    def file(self, name: str) -> InputFile | None:
        return next((f for f in self.files if f.name == name), None)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    def simple_path(self) -> Path | None:
        """The one plain file on disk this set is, if it is only that: it then loads the
        way a ``Path`` always has (size known, in the background of the first model call)."""
        if len(self.files) == 1 and not self.as_dict:
            f = self.files[0]
            if f.path is not None and f.compression is None:
                return f.path
        return None

    def close(self) -> None:
        """Remove standard input's spool; the set can no longer check citations of it."""
        spool, self._spool = self._spool, None
        if spool is not None:
            try:
                spool.path.unlink()
            except OSError:
                pass

    def __enter__(self) -> InputSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"InputSet({self.names!r})"


class _Tee(io.RawIOBase):
    """Reads a stream and writes every byte it returns to ``sink``; ``peek`` looks ahead."""

    def __init__(self, source: Any, sink: BinaryIO) -> None:
        self._source = source
        self._sink = sink
        self._ahead = b""

    def readable(self) -> bool:
        return True

    def peek(self, n: int) -> bytes:
        while len(self._ahead) < n:
            more = self._source.read(n - len(self._ahead))
            if not more:
                break
            self._ahead += more if isinstance(more, bytes) else bytes(more, "utf-8")
        return self._ahead[:n]

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if self._ahead:
            data = self._ahead if n < 0 else self._ahead[:n]
            self._ahead = self._ahead[len(data) :]
        else:
            data = self._source.read(n if n >= 0 else 1 << 20) or b""
            if isinstance(data, str):
                data = data.encode("utf-8")
        if data:
            self._sink.write(data)
        return data


def collect_inputs(
    specs: Sequence[str], globs: Sequence[str] = (), *, stdin: BinaryIO | None = None
) -> InputSet:
    """The ``-i`` values (files, directories, ``-``; none means standard input) and the
    ``--glob`` patterns as one :class:`InputSet`; what was skipped is in its ``warnings``."""
    found, warnings = find_files(list(specs) or ["-"], globs)
    files: list[InputFile] = []
    for item in found:
        if item is None:
            files.append(InputFile(STDIN_NAME, "-"))
            continue
        try:
            st = os.stat(item.path)
            mtime, size = st.st_mtime_ns, st.st_size
        except OSError:
            mtime, size = None, item.size
        files.append(InputFile(item.name, item.shown, item.path, item.compression, size, None, mtime))
    if not files:
        raise ConfigError("no input files", hint="check the paths given to -i and the --glob patterns")
    return InputSet(files, warnings=warnings, stdin=stdin if any(f.is_stdin for f in files) else None)


def as_input(context: Any) -> Any:
    """What the API's ``context`` becomes: an :class:`InputSet` for a ``Path`` (a file,
    plain or compressed, or a directory), a list of paths, a dict of name -> text or a
    binary stream; anything else (``str``, ``bytes``, a list or dict of JSON) unchanged."""
    if isinstance(context, InputSet):
        return context
    if isinstance(context, os.PathLike):
        return collect_inputs([os.fspath(context)])
    if isinstance(context, list | tuple) and context and all(isinstance(x, os.PathLike) for x in context):
        return collect_inputs([os.fspath(x) for x in context])
    if (
        isinstance(context, dict)
        and context
        and all(isinstance(k, str) and isinstance(v, str) for k, v in context.items())
    ):
        return InputSet([InputFile(k, k, text=v) for k, v in context.items()], as_dict=True)
    if hasattr(context, "read") and not isinstance(context, str | bytes | bytearray):
        return InputSet([InputFile("<stream>", "-")], stdin=context)
    return context


__all__ = [
    "MEMORY_NAME",
    "FileStats",
    "InputFile",
    "InputSet",
    "as_input",
    "collect_inputs",
    "compression_of_name",
]
