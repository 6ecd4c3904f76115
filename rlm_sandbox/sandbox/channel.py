"""The host end of one kernel's byte stream: frames out, validated messages in.

One reader thread per sandbox demultiplexes the engine's stream, decodes frames, validates
them, and routes each one: a reply wakes the caller waiting for that id, an ``llm_request``
goes to a bounded pool that runs the user's handler (``requests.py``). Anything that breaks
the protocol -- a malformed or oversized frame, an unknown type, a reply nobody asked for, a
flood of requests -- ends the channel with :class:`ProtocolViolation`; the owner then kills
the container. Every waiter is woken with the error: nothing waits on a dead kernel.

Every frame is validated from its header and given room (``held.py``) before the reader reads
its payload: while the host already holds as much of this sandbox's (or this run's) requests
as it may, the reader stops reading, and the kernel's writes block until answers free room.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlm_sandbox.errors import ProtocolViolation, SandboxError
from rlm_sandbox.kernel import protocol as P

from .attach import AttachStream
from .demux import Demuxer
from .frames import FrameDecoder, FrameLimits, RawFrame
from .held import HeldScope, Hold, SandboxHeld, request_cost, return_freed_memory
from .messages import ExecReply, KernelMessage, LlmRequest, Ready, validate_header
from .requests import Batch, RequestHandler, decode_prompts

LLMHandler = Callable[[str], str]
_DIAG_KEEP = 8192
_DIAG_MAX_TOTAL = 64 << 20


@dataclass(slots=True)
class _Waiter:
    ident: int
    expect: type
    event: threading.Event
    reply: tuple | None = None


class HostWaitClock:
    """Time a cell spends waiting on the host's ``llm_query`` answers is not the cell's own.

    Mirrors the kernel's watchdog, so host and kernel agree on when a cell is over its limit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outstanding = 0
        self._since = 0.0
        self._paused = 0.0

    def begin(self) -> None:
        with self._lock:
            self._outstanding += 1
            if self._outstanding == 1:
                self._since = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self._outstanding = max(0, self._outstanding - 1)
            if self._outstanding == 0:
                self._paused += time.monotonic() - self._since

    def reset(self) -> None:
        with self._lock:
            self._outstanding, self._paused = 0, 0.0

    def paused(self) -> float:
        with self._lock:
            extra = time.monotonic() - self._since if self._outstanding else 0.0
            return self._paused + extra

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self._outstanding


class KernelChannel:
    def __init__(
        self,
        stream: AttachStream,
        *,
        limits: FrameLimits,
        io_timeout: float,
        llm_handler: LLMHandler | None,
        llm_concurrency: int,
        max_pending_llm: int,
        on_fatal: Callable[[BaseException], None],
        name: str = "sandbox",
        max_held: int = 768 << 20,
        held_stall_s: float = 600.0,
        expect_first: tuple[int, type] | None = None,
    ) -> None:
        """``expect_first``: a reply already on its way (to a request someone else sent
        before this channel existed: a prestart child's load), registered before any byte is
        read; its waiter is :attr:`first_waiter`."""
        self.stream = stream
        self.io_timeout = io_timeout
        self.llm_handler = llm_handler
        self.max_pending_llm = max_pending_llm
        self.name = name
        self.held = SandboxHeld(max_held, name=name, stall_s=held_stall_s)
        return_freed_memory()
        self._decoder = FrameDecoder(limits, admit=self._admit)
        # Docker multiplexes stdout and stderr on one stream; a pipe carries stdout alone.
        self._demux = Demuxer() if getattr(stream, "multiplexed", True) else None
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._waiter: _Waiter | None = None
        self._ready = threading.Event()
        self.ready_msg: Ready | None = None
        self.error: BaseException | None = None
        self.eof = False
        self._diag = bytearray()
        self._diag_total = 0
        self.current_cell = 0
        self.last_rx = time.monotonic()
        self.frame_stall_s = 3.0
        self.clock = HostWaitClock()
        self._pending_llm = 0
        self._inflight: set[concurrent.futures.Future[str]] = set()
        self._pool = ThreadPoolExecutor(max_workers=llm_concurrency, thread_name_prefix=f"{name}-llm")
        self._closed = False
        self.first_waiter = None if expect_first is None else _Waiter(*expect_first, threading.Event())
        self._waiter = self.first_waiter
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-reader", daemon=True)
        self._reader.start()

    # ---- outgoing

    def send(self, header: dict, payload: bytes | memoryview = b"", *, timeout: float | None = None) -> None:
        head = P.encode_header(header, len(payload))
        try:
            if len(payload) < 1 << 16:
                self.stream.send_all(head + bytes(payload), timeout or self.io_timeout)
            else:
                self.stream.send_all(head, timeout or self.io_timeout)
                self.stream.send_all(payload, timeout or self.io_timeout)
        except TimeoutError:
            self.fail(
                ProtocolViolation(
                    f"{self.name} stopped reading its input for {timeout or self.io_timeout:g} s"
                )
            )
            raise self.error from None  # type: ignore[misc]
        except OSError:
            self.fail(self.error or SandboxError(f"{self.name}: the stream to the kernel broke"))
            raise self.error from None  # type: ignore[misc]

    # ---- waiting

    def expect(self, ident: int, kind: type) -> _Waiter:
        """Register interest in the reply to ``ident`` before sending the request."""
        waiter = _Waiter(ident, kind, threading.Event())
        with self._lock:
            if self.error is not None:
                raise self.error
            self._waiter = waiter
        return waiter

    def wait(self, waiter: _Waiter, limit: float, *, pausable: bool = False) -> tuple:
        """Wait for the reply; ``None`` on timeout. Pausable limits exclude host-side llm time."""
        start = time.monotonic()
        try:
            while True:
                used = time.monotonic() - start - (self.clock.paused() if pausable else 0.0)
                left = limit - used
                if left <= 0 and not (pausable and self.clock.outstanding) and not waiter.event.is_set():
                    return ()
                if waiter.event.wait(min(max(left, 0.05), 0.5)):
                    break
                if self.error is not None:
                    raise self.error
                if self.stalled_in_frame(self.frame_stall_s):
                    # The kernel writes a frame in one go; half a frame that stays half is
                    # bytes a cell forged onto the channel. Say so now, not at the cell timeout.
                    self.fail(
                        ProtocolViolation(
                            f"{self.name}: the channel stalled inside a frame ({self.buffered_bytes} bytes "
                            f"buffered, nothing more for {self.frame_stall_s:g} s)"
                        )
                    )
                    raise self.error  # type: ignore[misc]
        finally:
            with self._lock:
                if self._waiter is waiter:
                    self._waiter = None
        if self.error is not None and waiter.reply is None:
            raise self.error
        assert waiter.reply is not None
        return waiter.reply

    def wait_ready(self, timeout: float) -> Ready | None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                return None
        return self.ready_msg

    # ---- incoming

    def _read_loop(self) -> None:
        try:
            while True:
                data = self.stream.recv()
                self.last_rx = time.monotonic()
                if not data:
                    self.eof = True
                    if not self._closed:
                        partial = ""
                        try:
                            self._decoder.finish()
                        except ProtocolViolation as exc:
                            partial = f" ({exc})"
                        self.fail(SandboxError(f"{self.name}: the kernel's stream ended{partial}"))
                    return
                pieces = self._demux.feed(data) if self._demux is not None else ((1, data),)
                del data
                for stream_id, piece in pieces:
                    if stream_id == 1:
                        for frame in self._decoder.frames(piece):
                            self._dispatch(frame)
                    elif stream_id == 2:
                        self._note_diag(piece)
                del pieces
        except SandboxError as exc:  # a violation, a bound that cannot be honoured, a close
            self.fail(exc)
        except BaseException as exc:  # the reader must never die silently
            self.fail(SandboxError(f"{self.name}: reader failed: {type(exc).__name__}: {exc}"))

    def _note_diag(self, piece: bytes) -> None:
        self._diag_total += len(piece)
        self._diag += piece
        if len(self._diag) > _DIAG_KEEP:
            del self._diag[: len(self._diag) - _DIAG_KEEP]
        if self._diag_total > _DIAG_MAX_TOTAL:
            raise ProtocolViolation(f"{self.name} flooded its diagnostic stream ({self._diag_total} bytes)")

    def stalled_in_frame(self, idle_s: float) -> bool:
        """Part of a frame arrived and nothing more for ``idle_s``: the channel is corrupt."""
        return self._decoder.mid_frame and time.monotonic() - self.last_rx >= idle_s

    @property
    def buffered_bytes(self) -> int:
        return self._decoder.buffered

    def diagnostics(self) -> str:
        return self._diag.decode("utf-8", errors="replace")

    def _admit(self, header: dict) -> tuple[KernelMessage, Hold | None]:
        """A frame's header is in, its payload not yet: validate it, then wait for room.

        Waiting is host-side time for the cell, as an ``llm_query`` answer is: the clock of
        the cell's limit pauses meanwhile (the kernel pauses its own for a real request)."""
        msg = validate_header(header)
        if isinstance(msg, LlmRequest):
            cost, what = request_cost(msg.len, len(msg.sizes)), f"a request of {len(msg.sizes)} prompt(s)"
        else:
            cost, what = msg.len, f"a {msg.t!r} frame"
        scope = getattr(self.llm_handler, "held", None)
        try:
            hold = self.held.reserve(
                cost,
                scope if isinstance(scope, HeldScope) else None,
                what=what,
                stop=lambda: self._closed or self.error is not None,
                on_wait=self._waiting_for_room,
            )
        finally:
            self.last_rx = time.monotonic()  # the stall clock starts again when reading does
        return msg, hold

    def _waiting_for_room(self, waiting: bool) -> None:
        if waiting:
            self.clock.begin()
        else:
            self.clock.end()

    def _dispatch(self, frame: RawFrame) -> None:
        msg, hold = frame.ticket  # type: ignore[misc]
        try:
            self._route(msg, frame.payload, hold)
        finally:
            frame.payload = b""  # the reader's loop keeps the frame while it waits for the next one
            if not isinstance(msg, LlmRequest) and hold is not None:
                hold.release()

    def _route(self, msg: KernelMessage, payload: bytes | bytearray, hold: Hold | None) -> None:
        if isinstance(msg, Ready):
            if self._ready.is_set():
                raise ProtocolViolation(f"{self.name} announced itself ready twice")
            if msg.version != P.PROTOCOL_VERSION:
                raise ProtocolViolation(f"kernel speaks protocol {msg.version}, host {P.PROTOCOL_VERSION}")
            self.ready_msg = msg
            self._ready.set()
            return
        if not self._ready.is_set():
            raise ProtocolViolation(f"{self.name} sent {msg.t!r} before it was ready")
        if isinstance(msg, LlmRequest):
            self._on_llm_request(msg, payload, hold)
            return
        with self._lock:
            waiter = self._waiter
            if waiter is None or waiter.ident != msg.id or not isinstance(msg, waiter.expect):
                raise ProtocolViolation(
                    f"{self.name} sent a {msg.t!r} for id {msg.id}, which was never asked"
                )
            waiter.reply = (msg, payload)
            self._waiter = None
        waiter.event.set()

    def _on_llm_request(self, msg: LlmRequest, payload: bytes | bytearray, hold: Hold | None) -> None:
        """Decode the prompts and hand them to the pool; each keeps its share of the frame's
        hold until it is answered (or taken by a child, which releases it once loaded)."""
        try:
            with self._lock:
                if self._pending_llm >= self.max_pending_llm:
                    raise ProtocolViolation(
                        f"{self.name} has more than {self.max_pending_llm} llm_query requests in flight",
                        hint="raise max_pending_llm if a cell legitimately needs that many threads",
                    )
                live_cell = self._waiter is not None and self._waiter.expect is ExecReply
                cell_ok = live_cell and msg.cell == self.current_cell
                self._pending_llm += 1
            if not cell_ok:
                self._reply_llm_error(
                    msg.id, "llm_query was called outside a running cell (the cell has finished)"
                )
                return
            if self.llm_handler is None:
                self._reply_llm_error(
                    msg.id,
                    "llm_query is not available: this sandbox has no llm_handler (Sandbox(llm_handler=fn))",
                )
                return
            try:
                prompts = decode_prompts(payload, msg.sizes)
            except UnicodeDecodeError as exc:
                self._reply_llm_error(msg.id, f"prompts are not valid UTF-8 text: {exc}")
                return
            holds = hold.split([request_cost(n, 1) for n in msg.sizes]) if hold is not None else []
            hold = None
        finally:
            if hold is not None:
                hold.release()
        self.clock.begin()
        batch = Batch(self, msg.id, prompts, holds, msg.kind, msg.name, msg.output)
        del prompts
        handler = self.llm_handler
        try:
            for i in range(len(batch.prompts)):
                if isinstance(handler, RequestHandler) and handler.loop is not None:
                    batch.start_on_loop(i, handler)  # a coroutine on the engine's loop: no thread waits
                else:
                    self._pool.submit(batch.run, i)
        except RuntimeError:  # pool shut down (the sandbox is closing) or the loop is gone
            batch.abandon()

    def _reply_llm_error(self, ident: int, error: str) -> None:
        self._finish_llm()
        if self.error is None and not self._closed:
            try:
                self.send({"t": P.LLM_REPLY, "id": ident, "status": "error", "error": error[:4000]})
            except SandboxError:
                pass

    def _finish_llm(self) -> None:
        with self._lock:
            self._pending_llm = max(0, self._pending_llm - 1)

    # ---- failure and shutdown

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            first = self.error is None
            if first:
                self.error = exc
            waiter = self._waiter
        if waiter is not None:
            waiter.event.set()
        if first and not self._closed:
            self._on_fatal(exc)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            inflight, self._inflight = list(self._inflight), set()
        for future in inflight:  # requests of a cell that is over: their work is cancelled
            future.cancel()
        self.stream.close()
        self.held.close()  # whatever is still held for this sandbox is not any more
