"""The host's frame reader: a push parser that treats every byte from a kernel as hostile.

Bytes arrive in whatever pieces the engine's stream gives; :class:`FrameDecoder` turns them
into whole frames, enforcing the header and payload limits *before* buffering anything a
lying header asks for, and letting the channel validate a header and wait for room for its
payload before any of it is read (see ``held.py``). Every violation raises
:class:`ProtocolViolation`; nothing here can crash the host or wait for more bytes than the
limits allow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    payload: bytes | bytearray
    ticket: object = None
    """What the ``admit`` hook returned for this frame (the channel's message and its hold)."""


Admit = Callable[[dict], object]


class FrameDecoder:
    """Incremental frame parser: ``feed`` bytes, get back every frame they complete.

    ``admit(header)``, when given, is called once a frame's header is complete and within the
    limits, *before* any byte of its payload is buffered: it may validate the header, reserve
    room for the payload (blocking the caller -- the reader -- until there is some: that is
    the back-pressure) or raise. Its result travels with the frame as ``ticket``. The payload
    is filled into one buffer of exactly the announced size, never copied again.
    """

    def __init__(self, limits: FrameLimits | None = None, *, admit: Admit | None = None) -> None:
        self.limits = limits or FrameLimits()
        self._admit = admit
        self._buf = bytearray()  # prefix and header bytes only: bounded by max_header
        self._header: dict | None = None
        self._need_header = 0
        self._payload: bytearray | None = None
        self._filled = 0
        self._ticket: object = None

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._filled

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return self._header is not None or bool(self._need_header) or bool(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        return list(self.frames(data))

    def frames(self, data: bytes | bytearray | memoryview) -> Iterator[RawFrame]:
        """The frames ``data`` completes, one at a time: the caller handles each (and lets
        go of it) before the next header is admitted."""
        view = memoryview(data).cast("B")
        while True:
            if self._header is None:
                view = self._read_header(view)
                if self._header is None:
                    return
            if self._payload is not None:
                need = len(self._payload) - self._filled
                take = min(need, len(view))
                if take:
                    self._payload[self._filled : self._filled + take] = view[:take]
                    self._filled += take
                    view = view[take:]
                if take < need:
                    return
            yield self._take()

    def _read_header(self, view: memoryview) -> memoryview:
        buf = self._buf
        if not self._need_header:
            take = P.PREFIX_SIZE - len(buf)
            buf += view[:take]
            view = view[take:]
            if len(buf) < P.PREFIX_SIZE:
                if buf and not P.MAGIC.startswith(bytes(buf[:2])):
                    raise ProtocolViolation(f"bad frame magic {bytes(buf[:2])!r}")
                return view
            try:
                self._need_header = P.parse_prefix(bytes(buf), self.limits.max_header)
            except P.FrameError as exc:
                raise ProtocolViolation(f"kernel sent a malformed frame: {exc}") from None
            buf.clear()
        take = self._need_header - len(buf)
        buf += view[:take]
        view = view[take:]
        if len(buf) < self._need_header:
            return view
        try:
            header = P.parse_header(buf)
        except P.FrameError as exc:
            raise ProtocolViolation(f"kernel sent a malformed frame: {exc}") from None
        buf.clear()
        self._need_header = 0
        if header["len"] > self.limits.max_payload:
            raise ProtocolViolation(
                f"kernel announced a {header['len']}-byte payload; the limit is {self.limits.max_payload}",
                hint="raise max_frame_payload if the cell legitimately sends that much",
            )
        if self._admit is not None:
            # May block (the reader then stops reading: back-pressure) or raise. Meanwhile the
            # decoder is between frames: the kernel is not stalled inside one, the host waits.
            self._ticket = self._admit(header)
        self._header = header
        self._payload = bytearray(header["len"])
        self._filled = 0
        return view

    def _take(self) -> RawFrame:
        assert self._header is not None and self._payload is not None
        frame = RawFrame(self._header, self._payload, self._ticket)
        self._header, self._payload, self._ticket, self._filled = None, None, None, 0
        return frame

    def finish(self) -> None:
        """End of stream: a partial frame left over is a violation, never silently dropped."""
        if self._header is not None:
            raise ProtocolViolation(
                f"stream ended inside a frame: expected {self._header['len']} payload bytes, got {self._filled}"
            )
        if self._need_header or self._buf:
            raise ProtocolViolation(f"stream ended inside a frame header ({len(self._buf)} stray bytes)")
