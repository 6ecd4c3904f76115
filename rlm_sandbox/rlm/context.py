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

from rlm_sandbox.input_check import BinaryInput


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
    """What can be said of the input without the kernel; None for streams (unknown length)."""
    if isinstance(context, str | bytes | list | dict):
        return HostContextInfo(type(context).__name__, len(context))
    if isinstance(context, BinaryInput):
        size = context.size
        return HostContextInfo("bytes", size) if size is not None else None
    if isinstance(context, os.PathLike) and os.path.isfile(context):
        return HostContextInfo("str", os.path.getsize(context), approximate=True)
    return None


def describe_context(context: Any, info: Any) -> str:
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


def preview(context: Any, limit: int = 300) -> str:
    """A short look at the input's start, so the model knows its format before it codes."""
    head: str | None = None
    if isinstance(context, BinaryInput):
        shown = repr(bytes(context.head[: limit // 2]))  # escapes, never raw control bytes
        return f"It begins with these bytes (a Python bytes literal):\n```\n{shown}\n```\n" if shown else ""
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
