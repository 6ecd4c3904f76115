"""The wire format, defined once for both sides (standard library only).

The kernel in the container and the controller on the host both import this file, so the
two can never disagree about framing. A frame is::

    b"RL" | u32 big-endian header length | header (UTF-8 JSON object) | payload

The header always carries ``t`` (the message type), ``id`` and ``len`` (the payload's byte
length, 0 when there is none). Bulk data -- the context, cell code, captured output, prompts
and answers -- travels as the raw payload, never JSON-escaped or base64-encoded; where one
payload carries several strings, the header's ``sizes`` list gives their byte lengths.

Ids: the host numbers its requests with even ids, the kernel its own with odd ids, so a
request started on either side can never collide with one started on the other.
"""

from __future__ import annotations

import json
import struct

PROTOCOL_VERSION = 1
MAGIC = b"RL"
PREFIX = struct.Struct(">2sI")
PREFIX_SIZE = PREFIX.size

# Message types, host -> kernel.
EXEC_REQUEST = "exec_request"
CONTEXT_BEGIN = "context_begin"
CONTEXT_CHUNK = "context_chunk"
CONTEXT_END = "context_end"
CONTEXT_FILE = "context_file"  # kind "files": the chunks that follow belong to this file
LLM_REPLY = "llm_reply"
SHUTDOWN = "shutdown"

# Message types, kernel -> host.
READY = "ready"
EXEC_REPLY = "exec_reply"
CONTEXT_REPLY = "context_reply"
LLM_REQUEST = "llm_request"

# How the kernel should rebuild `context` from the bytes it receives. "files": a dict of
# name -> text, in the order the files came: each file is a `context_file` frame (its name)
# followed by the raw chunks of its text.
CONTEXT_KINDS = ("str", "bytes", "json", "files")
MAX_FILE_NAME = 4096  # bytes of a file name in a `context_file` frame

# The input file: on a local engine a large context reaches the kernel through a read-only
# file the host mounts here, not through the stream. The file starts with INPUT_NONCE_BYTES
# random bytes that the `context_begin` frame names (hex, its "file" field), so the kernel
# reads only the file the host filled for this load; the context's bytes follow. For kind
# "files" each `context_file` frame then carries its file's byte count ("bytes") and no
# chunk follows: the files lie one after another in the input file. A kernel that cannot
# read it replies with status "no_file" and the host sends the same context as chunks.
INPUT_FILE = "/run/rlm-input"
INPUT_NONCE_BYTES = 16

# cite(path, line, quote): what one exec_reply may carry (its fourth payload part, a JSON
# list of [path, line, quote]). The host checks every citation against the original input.
MAX_CITATIONS = 256
MAX_CITE_PATH = 1024  # characters
MAX_CITE_QUOTE = 2000  # characters

# What the host reads of one kernel frame, unless an exec_request says otherwise (the host
# sends its own limits with every cell). The kernel refuses a request past them with an
# error the cell can catch; the host still kills a kernel whose frame breaks them.
MAX_BATCH = 4096
DEFAULT_MAX_HEADER = 64 * 1024
DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024

# Names the engine puts in the namespace and restores after every cell.
ENGINE_NAMES = ("context", "llm_query", "llm_query_batched", "FINAL", "FINAL_VAR", "SHOW_VARS", "cite")


class FrameError(Exception):
    """The byte stream does not hold a well-formed frame."""


def encode_header(header: dict, payload_len: int = 0) -> bytes:
    """Prefix + JSON header; the payload is written separately so it is never copied."""
    header = dict(header)
    header["len"] = payload_len
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return PREFIX.pack(MAGIC, len(body)) + body


def encode_frame(header: dict, payload: bytes = b"") -> bytes:
    return encode_header(header, len(payload)) + payload


def parse_prefix(prefix: bytes, max_header: int) -> int:
    """Header length from a frame prefix; rejects a wrong magic or an oversized header."""
    if len(prefix) != PREFIX_SIZE:
        raise FrameError(f"expected {PREFIX_SIZE} prefix bytes, got {len(prefix)}")
    magic, size = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic!r} (expected {MAGIC!r})")
    if size == 0 or size > max_header:
        raise FrameError(f"header length {size} outside 1..{max_header}")
    return size


def parse_header(raw: bytes | bytearray | memoryview) -> dict:
    """Decode a header and check the fields every frame must have."""
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a JSON object")
    t, ident, length = header.get("t"), header.get("id"), header.get("len")
    if not isinstance(t, str) or not t:
        raise FrameError("header has no message type 't'")
    if type(ident) is not int or ident < 0:
        raise FrameError("header has no valid 'id'")
    if type(length) is not int or length < 0:
        raise FrameError("header has no valid payload length 'len'")
    return header


def split_sizes(payload: bytes | bytearray | memoryview, sizes: list) -> list[bytes]:
    """Cut a payload into the pieces its header's ``sizes`` names, exactly."""
    if any(type(n) is not int or n < 0 for n in sizes):
        raise FrameError("sizes must be non-negative integers")
    if sum(sizes) != len(payload):
        raise FrameError(f"sizes add up to {sum(sizes)} but the payload has {len(payload)} bytes")
    view = memoryview(payload)
    out, pos = [], 0
    for n in sizes:
        out.append(bytes(view[pos : pos + n]))
        pos += n
    return out
