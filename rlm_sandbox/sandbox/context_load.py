"""The two ways a ``context`` goes to the kernel, as frames: streamed, or named in the input file.

Why it is its own module: :class:`~rlm_sandbox.sandbox.core.Sandbox` decides which way a load
goes and owns the waiting and the failures; what each way sends is a small protocol matter
of its own (see :mod:`rlm_sandbox.kernel.protocol`), kept out of the sandbox's lifecycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rlm_sandbox.errors import SandboxError
from rlm_sandbox.kernel import protocol as P

from .context_source import FileStart
from .input_file import Filled


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
