"""How a ``context`` goes to the kernel: streamed, or named in the input file; one load's frames,
its reply and its fallbacks.

Why it is its own module: loading is the sandbox's largest concern beside its lifecycle
(which way a load goes, the input file's fallbacks to the stream, a prestart child's load
taken over), and a protocol matter of its own (see :mod:`rlm_sandbox.kernel.protocol`).
:class:`ContextLoads` holds it, and :class:`~rlm_sandbox.sandbox.core.Sandbox` inherits it:
the methods use the sandbox's lock, channel and input file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlm_sandbox.errors import ProtocolViolation, SandboxError
from rlm_sandbox.kernel import protocol as P

from .context_source import ContextInput, FileStart, context_source
from .input_file import MIN_BYTES, Filled
from .messages import ContextReply

if TYPE_CHECKING:
    from .channel import KernelChannel
    from .held import Hold


@dataclass(frozen=True, slots=True)
class ContextInfo:
    """What the kernel built: ``context``'s type and ``len()``, and the bytes sent."""

    type: str
    length: int | None
    bytes: int
    via: str = "stream"  # or "file": through the sandbox's input file (sandbox/input_file.py)


class ContextLoads:
    """The loads of a :class:`~rlm_sandbox.sandbox.core.Sandbox` (a mix-in: its state is the
    sandbox's)."""

    _lock: Any
    _input_file: Any
    _preloaded: Any
    config: Any

    def load_context(
        self,
        data: ContextInput,
        *,
        kind: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        held: Hold | None = None,
    ) -> ContextInfo:
        """Send the input to the kernel, raw and in chunks; it becomes ``context``.

        str -> str, bytes -> bytes, list/dict -> the same JSON structure, a path (``Path``)
        or a binary file object -> streamed from disk as text (``kind="bytes"`` keeps bytes).
        ``progress(sent, size)`` follows a large load (size -1 when unknown, as for stdin).
        ``held`` is the host's count of ``data`` when it is a parent's prompt: released once
        the load is over (done or failed), when the host needs the text no more.
        """
        try:
            return self._load_context(data, kind, progress)
        finally:
            if held is not None:
                held.release()

    def _load_context(
        self, data: ContextInput, kind: str | None, progress: Callable[[int, int], None] | None
    ) -> ContextInfo:
        with self._lock:
            channel = self._check_usable()
            pre, self._preloaded = self._preloaded, None
            if pre is not None and pre.info is not None and pre.matches(data, kind):
                return pre.info
            source, size, ctx_kind = context_source(data, kind)
            chunk = self.config.context_chunk
            inp = self._input_file
            if inp is None or 0 <= size < MIN_BYTES or (size >= 0 and not inp.has_room(size)):
                return self._stream(channel, source(chunk), size, ctx_kind, progress)
            refused = False
            try:
                filled = inp.fill(data, source, size, chunk, progress)
                if filled.error is None:
                    if size >= 0 and filled.size != size:
                        raise SandboxError(
                            f"the input changed while it was read ({filled.size} of {size} bytes)"
                        )
                    loaded = self._load(
                        channel,
                        filled.size,
                        lambda i: announce_file(channel, i, filled, ctx_kind),
                        via_file=True,
                    )
                    if loaded is not None:
                        return loaded
                    refused = True  # the kernel cannot read the file: this and every later load stream
                return self._stream(channel, inp.replay(filled, chunk), size, ctx_kind, progress)
            finally:
                inp.clear()
                if refused:
                    self._input_file = None
                    inp.close()

    def _stream(
        self,
        channel: KernelChannel,
        pieces: Any,
        size: int,
        kind: str,
        progress: Callable[[int, int], None] | None,
    ) -> ContextInfo:
        info = self._load(channel, size, lambda i: stream_pieces(channel, i, pieces, size, kind, progress))
        assert info is not None  # only a load through the input file can be refused
        return info

    def _load(
        self,
        channel: KernelChannel,
        size: int,
        send: Callable[[int], int],
        *,
        via_file: bool = False,
        waiter: Any = None,
    ) -> ContextInfo | None:
        """One load: ``send(id)`` sends its frames and returns the bytes sent; then the
        kernel's reply (to ``waiter``'s request when one was sent already: a prestart's).
        None when the kernel could not read the input file (``via_file``: the caller streams
        instead); a kernel that stays silent is killed."""
        ident = self._new_id() if waiter is None else waiter.ident
        waiter = waiter or self._expect(channel, ident, ContextReply)
        try:
            sent = send(ident)
            reply = channel.wait(
                waiter, self.config.io_timeout + size / 50e6 if size > 0 else self.config.io_timeout
            )
        except SandboxError as exc:
            if channel.error is not None:
                self._raise_failure(channel.error)
            raise exc
        if not reply:
            self.kill_for("context load stalled")
            self._raise_failure(
                ProtocolViolation(
                    f"the kernel did not confirm the context within {self.config.io_timeout:g} s"
                )
            )
        msg: ContextReply = reply[0]
        if msg.status == "no_file" and via_file:
            return None
        if msg.status != "ok":
            raise SandboxError(f"the kernel could not build context: {msg.error}")
        return ContextInfo(
            type=msg.type or "?", length=msg.length, bytes=sent, via="file" if via_file else "stream"
        )


def stream_pieces(
    channel: Any,
    ident: int,
    pieces: Iterable[Any],
    size: int,
    kind: str,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Send the input as ``context_chunk`` frames (each file's after its ``context_file``);
    returns the bytes sent. A known ``size`` that the pieces do not match is an error: the
    input changed while it was read."""
    channel.send({"t": P.CONTEXT_BEGIN, "id": ident, "kind": kind, "size": size})
    sent = 0
    for piece in pieces:
        if isinstance(piece, FileStart):
            channel.send({"t": P.CONTEXT_FILE, "id": ident, "name": piece.name})
            continue
        channel.send({"t": P.CONTEXT_CHUNK, "id": ident}, piece)
        sent += len(piece)
        if progress is not None:
            progress(sent, size)
    if size >= 0 and sent != size:
        raise SandboxError(f"the input changed while it was read ({sent} of {size} bytes)")
    channel.send({"t": P.CONTEXT_END, "id": ident})
    return sent


def announce_file(channel: Any, ident: int, filled: Filled, kind: str) -> int:
    """Tell the kernel the input is in its input file: the nonce, the size, and for kind
    ``files`` each file's name and byte count; no chunk follows. Returns the bytes."""
    channel.send({"t": P.CONTEXT_BEGIN, "id": ident, "kind": kind, "size": filled.size, "file": filled.nonce})
    for name, count in filled.files or ():
        channel.send({"t": P.CONTEXT_FILE, "id": ident, "name": name, "bytes": count})
    channel.send({"t": P.CONTEXT_END, "id": ident})
    return filled.size
