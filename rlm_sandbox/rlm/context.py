"""What the model is told about ``context`` (never the context itself), and its background load.

The host often knows the input's type and size before the kernel does (a file's size, a
string's length): the first model call then need not wait for the load (seconds at 1 GB).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

from rlm_sandbox.errors import format_bytes
from rlm_sandbox.input_check import BinaryInput
from rlm_sandbox.inputs import InputSet

#: Files listed by name in the first prompt; the rest are counted.
FILES_LISTED = 40


def load_into(
    sandbox: Any, context: Any, progress: Callable[[int, int], None] | None = None, held: Any = None
) -> Any:
    """Send ``context`` to ``sandbox``: an input that is not UTF-8 text as it is, as ``bytes``;
    anything else as the sandbox makes it (:meth:`Sandbox.load_context`). ``held`` is the
    host's count of a parent's prompt, released once the kernel has it."""
    extra = {"held": held} if held is not None else {}
    if isinstance(context, BinaryInput):
        return sandbox.load_context(context.source, kind="bytes", progress=progress, **extra)
    return sandbox.load_context(context, progress=progress, **extra)


class ContextLoader:
    """Loads ``context`` in a thread while the node's first model call is under way."""

    def __init__(
        self,
        sandbox: Any,
        context: Any,
        progress: Callable[[int, int], None] | None = None,
        held: Any = None,
    ) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(sandbox, context, progress, held), name="context-load", daemon=True
        )
        self._thread.start()

    def _run(
        self, sandbox: Any, context: Any, progress: Callable[[int, int], None] | None, held: Any
    ) -> None:
        try:
            load_into(sandbox, context, progress, held)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the load (at most ``timeout``); False if it is still going; re-raise a
        failed load."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return True


@dataclasses.dataclass(frozen=True)
class HostContextInfo:
    type: str
    length: int
    approximate: bool = False


def host_context_info(context: Any) -> HostContextInfo | None:
    """What can be said of the input without the kernel; None for streams (unknown length)
    and for several or compressed files (their sizes and lines are counted as they load)."""
    if isinstance(context, InputSet):
        path = context.simple_path()
        return host_context_info(path) if path is not None else None
    if isinstance(context, str | bytes | list | dict):
        return HostContextInfo(type(context).__name__, len(context))
    if isinstance(context, BinaryInput):
        size = context.size
        return HostContextInfo("bytes", size) if size is not None else None
    if isinstance(context, os.PathLike) and os.path.isfile(context):
        return HostContextInfo("str", os.path.getsize(context), approximate=True)
    return None


def describe_context(context: Any, info: Any) -> str:
    if isinstance(context, InputSet):
        return _describe_inputs(context, info)
    kind = getattr(info, "type", None) or type(context).__name__
    length = getattr(info, "length", None)
    if isinstance(context, os.PathLike):
        kind = "str"
    if kind == "str":
        about = "about " if getattr(info, "approximate", False) else ""
        return f"a str of {about}{length:,} characters" if length is not None else "a str"
    if kind == "bytes":
        desc = f"a bytes object of {length:,} bytes" if length is not None else "a bytes object"
        if isinstance(context, BinaryInput):
            # The truth about the input, so the model does not treat it as text it is not.
            desc += (
                f" (the input is not UTF-8 text: {context.reason}; decode it, e.g. "
                "context.decode('latin-1'), or parse it as binary)"
            )
        return desc
    if kind == "list":
        sizes = [len(str(x)) for x in context[:10]] if isinstance(context, list) else []
        more = f" (sizes of the first items in characters: {sizes})" if sizes else ""
        return f"a list of {length:,} items{more}"
    if kind == "dict":
        keys = list(context)[:20] if isinstance(context, dict) else []
        return f"a dict with {length:,} keys (first keys: {keys})"
    return f"a {kind}"


def _describe_inputs(inputs: InputSet, info: Any) -> str:
    """One line for the system prompt; the files themselves are listed by :func:`preview`."""
    if inputs.as_dict:
        return f"a dict of {len(inputs.files):,} input files, file name -> text, in the order listed below"
    f = inputs.files[0]
    path = inputs.simple_path()
    base = describe_context(path if path is not None else "", info)
    stats = inputs.stats.get(f.name)
    # Not the file's name: the same input under another path (a CI's temporary directory, a
    # replay) must make the same requests, so it is answered from the response cache alike.
    facts = []
    compression = inputs.compression_of(f.name)
    if compression:
        facts.append(f"{compression}-decompressed")
    if stats is not None and stats.complete:
        facts.append(f"{stats.lines:,} lines")
    return f"{base} ({', '.join(facts)})" if facts else base


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 1024 else f"{format_bytes(n)} ({n:,} bytes)"


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def files_table(inputs: InputSet) -> str:
    """The input files as the first prompt lists them: name, size, lines, in order."""
    rows = []
    total_bytes = total_lines = 0
    for i, f in enumerate(inputs.files):
        stats = inputs.stats.get(f.name)
        size, lines = (stats.bytes, stats.lines) if stats is not None else (f.size or 0, 0)
        total_bytes += size
        total_lines += lines
        if i < FILES_LISTED:
            compression = inputs.compression_of(f.name)
            how = f", {compression}-decompressed" if compression else ""
            rows.append(f"- {f.name!r}: {_size(size)}, {_count(lines, 'line')}{how}")
    more = len(inputs.files) - FILES_LISTED
    if more > 0:
        rows.append(f"- ... and {more:,} more files (list them with `list(context)`)")
    rows.append(f"In all: {len(inputs.files):,} files, {_size(total_bytes)}, {_count(total_lines, 'line')}.")
    return "\n".join(rows)


def preview(context: Any, limit: int = 300) -> str:
    """A short look at the input's start, so the model knows its format before it codes."""
    head: str | None = None
    if isinstance(context, BinaryInput):
        shown = repr(bytes(context.head[: limit // 2]))  # escapes, never raw control bytes
        return f"It begins with these bytes (a Python bytes literal):\n```\n{shown}\n```\n" if shown else ""
    if isinstance(context, InputSet):
        listing = ""
        if context.as_dict:
            listing = f"The files (keys of `context`):\n{files_table(context)}\n"
        first = context.files[0]
        stats = context.stats.get(first.name)
        path = context.simple_path()
        if stats is not None:
            head = bytes(stats.head[:limit]).decode("utf-8", errors="replace")
        elif path is not None:
            return listing + preview(path, limit)
        if not head:
            return listing
        which = f" (the first file, {first.name!r})" if context.as_dict else ""
        return f"{listing}It begins with{which}:\n```\n{head}\n```\n"
    if hasattr(context, "head"):
        head = bytes(context.head[:limit]).decode("utf-8", errors="replace")
    elif isinstance(context, str):
        head = context[:limit]
    elif isinstance(context, bytes | bytearray):
        head = bytes(context[:limit]).decode("utf-8", errors="replace")
    elif isinstance(context, os.PathLike):
        try:
            with open(context, "rb") as f:
                head = f.read(limit).decode("utf-8", errors="replace")
        except OSError:
            head = None
    if not head:
        return ""
    return f"It begins with:\n```\n{head}\n```\n"
