"""Request bodies read with a cap, and uploads streamed to a spool file.

A ``multipart/form-data`` upload is parsed as it arrives (python-multipart's push parser):
the text fields are kept (each a few KiB at most), the ``input`` file part goes to a spool
file in chunks, so a 1 GB upload never sits in memory. Past the tenant's ``max_input_bytes``
the spool is removed and the answer is a 413 -- after reading on (and dropping) a bounded
amount of what the client is still sending, so that it reads the 413 instead of a reset
connection. A JSON body is held in memory (it is parsed whole), so it has its own, lower cap.

Everything about a part is untrusted: its name must be one we know, its file name only
names the spool file after it is reduced to ``[A-Za-z0-9._-]`` (a compressed upload keeps
its ``.gz``/``.zst`` ending and is decompressed as it streams into the sandbox).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from rlm_sandbox.serve.errors import ApiError

#: Bytes of a text field (``task``, ``context``, a budget): a question, not an input.
MAX_FIELD_BYTES = 1 << 20
MAX_PARTS = 16
#: A JSON body is parsed whole: above this, send the input as a multipart upload.
MAX_JSON_BYTES = 64 << 20
#: What is read and dropped after a 413, so the client sees the answer, not a reset.
DRAIN_BYTES = 32 << 20
#: File data is written in pieces of this size (in a worker thread: the loop never waits on a disk).
WRITE_CHUNK = 1 << 20
FILE_FIELD = "input"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def too_large(cap: int) -> ApiError:
    return ApiError(
        413,
        f"the input is larger than this tenant's limit of {cap} bytes (max_input_bytes)",
        code="input_too_large",
    )


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def drain(request: Request, limit: int = DRAIN_BYTES) -> None:
    """Read and drop what the client still sends, up to ``limit`` bytes."""
    dropped = 0
    try:
        async for chunk in request.stream():
            dropped += len(chunk)
            if dropped > limit:
                return
    except (ClientDisconnect, RuntimeError):
        return


async def read_capped(request: Request, cap: int, input_cap: int) -> bytes:
    """The whole body, or a 413 (saying the tenant's ``input_cap``) once it passes ``cap`` bytes."""
    declared = declared_length(request)
    if declared is not None and declared > cap:
        await drain(request)
        raise too_large(input_cap)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            await drain(request)
            raise too_large(input_cap)
    return bytes(body)


def safe_name(filename: str | None) -> str:
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", base).lstrip(".")[:100]
    return name or "input"


@dataclass
class Upload:
    """A parsed form: its text fields and, when it had one, the spooled ``input`` part."""

    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    size: int = 0


class _TooLarge(Exception):
    pass


class _Form:
    """Collects what python-multipart reports while one chunk is parsed (its callbacks
    cannot await): text into ``fields``, file bytes into ``pending`` for the spool."""

    def __init__(self, directory: Path, cap: int) -> None:
        self.directory = directory
        self.cap = cap
        self.upload = Upload()
        self.pending = bytearray()
        self.fd: int | None = None
        self._parts = 0
        self._name = ""
        self._is_file = False
        self._text = bytearray()
        self._header = b""
        self._value = b""
        self._disposition = b""

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(422, f"too many form parts (at most {MAX_PARTS})", code="invalid_form")
        self._disposition, self._text, self._is_file = b"", bytearray(), False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise ApiError(422, "a form part has no name", code="invalid_form")
        if name in self.upload.fields or (name == FILE_FIELD and self.fd is not None):
            raise ApiError(422, f"the form field {name!r} is given twice", code="invalid_form")
        self._name = name
        self._is_file = b"filename" in options
        if self._is_file:
            if name != FILE_FIELD:
                raise ApiError(422, f"a file part must be named {FILE_FIELD!r}", code="invalid_form")
            filename = options[b"filename"].decode("utf-8", "replace")
            self.upload.path = self.directory / safe_name(filename)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            self.fd = os.open(self.upload.path, flags, 0o600)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.upload.size += end - start
            if self.upload.size > self.cap:
                raise _TooLarge
            self.pending += data[start:end]
        else:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise ApiError(
                    413,
                    f"the form field {self._name!r} is over {MAX_FIELD_BYTES} bytes",
                    code="field_too_large",
                )

    def on_part_end(self) -> None:
        if not self._is_file:
            self.upload.fields[self._name] = self._text.decode("utf-8", "replace")

    async def flush(self, force: bool = False) -> None:
        if self.fd is None or not self.pending or (len(self.pending) < WRITE_CHUNK and not force):
            return
        data, self.pending = bytes(self.pending), bytearray()
        await anyio.to_thread.run_sync(_write_all, self.fd, data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def spool_form(request: Request, directory: Path, cap: int) -> Upload:
    """Parse a ``multipart/form-data`` body, its ``input`` part written under ``directory``
    (which the caller removes, whatever happens)."""
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "a multipart body needs a boundary in its Content-Type", code="invalid_form")
    declared = declared_length(request)
    if declared is not None and declared > cap + MAX_PARTS * (MAX_FIELD_BYTES + 4096):
        await drain(request)
        raise too_large(cap)
    form = _Form(directory, cap)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await form.flush()
        parser.finalize()
        await form.flush(force=True)
    except _TooLarge:
        form.close()
        await drain(request)
        raise too_large(cap) from None
    except ApiError:
        form.close()
        await drain(request)
        raise
    except FormParserError:
        raise ApiError(400, "the multipart body is malformed", code="invalid_form") from None
    finally:
        form.close()
    return form.upload
