"""The host's frame reader: a push parser that treats every byte from a kernel as hostile.

Bytes arrive in whatever pieces the engine's stream gives; :class:`FrameDecoder` turns them
into whole frames, enforcing the header and payload limits *before* buffering anything a
lying header asks for. Every violation raises :class:`ProtocolViolation`; nothing here can
crash the host or wait for more bytes than the limits allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlm_sandbox.errors import ProtocolViolation
from rlm_sandbox.kernel import protocol as P


@dataclass(frozen=True, slots=True)
class FrameLimits:
    max_header: int = 64 * 1024
    max_payload: int = 256 * 1024 * 1024


@dataclass(slots=True)
class RawFrame:
    header: dict
    payload: bytes


class FrameDecoder:
    """Incremental frame parser: ``feed`` bytes, get back every frame they complete."""

    def __init__(self, limits: FrameLimits | None = None) -> None:
        self.limits = limits or FrameLimits()
        self._buf = bytearray()
        self._header: dict | None = None
        self._need_header = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return self._header is not None or bool(self._need_header) or bool(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        self._buf += data
        frames: list[RawFrame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self) -> RawFrame | None:
        buf = self._buf
        if self._header is None:
            if not self._need_header:
                if len(buf) < P.PREFIX_SIZE:
                    if buf and not P.MAGIC.startswith(bytes(buf[:2])):
                        raise ProtocolViolation(f"bad frame magic {bytes(buf[:2])!r}")
                    return None
                try:
                    self._need_header = P.parse_prefix(bytes(buf[: P.PREFIX_SIZE]), self.limits.max_header)
                except P.FrameError as exc:
                    raise ProtocolViolation(f"kernel sent a malformed frame: {exc}") from None
                del buf[: P.PREFIX_SIZE]
            if len(buf) < self._need_header:
                return None
            try:
                header = P.parse_header(buf[: self._need_header])
            except P.FrameError as exc:
                raise ProtocolViolation(f"kernel sent a malformed frame: {exc}") from None
            del buf[: self._need_header]
            self._need_header = 0
            if header["len"] > self.limits.max_payload:
                raise ProtocolViolation(
                    f"kernel announced a {header['len']}-byte payload; the limit is {self.limits.max_payload}",
                    hint="raise max_frame_payload if the cell legitimately sends that much",
                )
            self._header = header
        need = self._header["len"]
        if len(buf) < need:
            return None
        payload = bytes(buf[:need])
        del buf[:need]
        header, self._header = self._header, None
        return RawFrame(header, payload)

    def finish(self) -> None:
        """End of stream: a partial frame left over is a violation, never silently dropped."""
        if self._header is not None:
            raise ProtocolViolation(
                f"stream ended inside a frame: expected {self._header['len']} payload bytes, got {len(self._buf)}"
            )
        if self._need_header or self._buf:
            raise ProtocolViolation(f"stream ended inside a frame header ({len(self._buf)} stray bytes)")
