"""Docker's multiplexed attach stream (``tty=False``) turned back into stdout and stderr.

The engine prefixes every piece with 8 bytes: stream id (0 stdin, 1 stdout, 2 stderr), three
zero bytes, a big-endian u32 length. Those pieces do not line up with our frames, so the
channel demultiplexes into byte pieces first and parses frames on top of the stdout bytes.
"""

from __future__ import annotations

import struct

from rlm_sandbox.errors import ProtocolViolation

_HEADER = struct.Struct(">BxxxI")
HEADER_SIZE = _HEADER.size


class Demuxer:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._stream = -1
        self._left = 0

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """Return (stream, bytes) pieces; stdout pieces may be fragments of a frame."""
        out: list[tuple[int, bytes]] = []
        view = memoryview(data)
        while view:
            if self._left:
                take = view[: self._left]
                out.append((self._stream, bytes(take)))
                self._left -= len(take)
                view = view[len(take) :]
                continue
            need = HEADER_SIZE - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) < HEADER_SIZE:
                break
            stream, size = _HEADER.unpack(self._buf)
            self._buf.clear()
            if stream not in (0, 1, 2):
                raise ProtocolViolation(f"engine stream carried an unknown stream id {stream}")
            self._stream, self._left = stream, size
        return out
