"""What a cell asks the host for, and how the answers go back: one ``llm_request`` frame's
prompts run by the user's handler, the last to finish sending the ``llm_reply``.

Why it is its own module: :mod:`rlm_sandbox.sandbox.channel` is the transport (frames out,
validated messages in, waiters, the reader thread); this is what happens to a request once
the channel has admitted and decoded it: the :class:`SubRequest` a handler sees (and a child
node takes its text from), the :class:`RequestHandler` that answers every kind of request
(on a thread of the channel's pool, or as a coroutine on the engine's loop), and the
:class:`Batch` that collects the answers and releases each prompt's hold when it is answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from rlm_sandbox.errors import SandboxError
from rlm_sandbox.kernel import protocol as P

from .held import HeldScope, Hold


class _Clock(Protocol):
    def end(self) -> None: ...


class ReplyChannel(Protocol):
    """What a :class:`Batch` uses of its ``KernelChannel``: where the reply goes, the pool
    that sends it, the in-flight futures a close cancels, the clock a request pauses."""

    error: BaseException | None
    llm_handler: object
    clock: _Clock
    _closed: bool
    _lock: threading.Lock
    _inflight: set[concurrent.futures.Future[str]]
    _pool: ThreadPoolExecutor

    def send(
        self, header: dict, payload: bytes | memoryview = b"", *, timeout: float | None = None
    ) -> None: ...

    def _finish_llm(self) -> None: ...


def decode_prompts(payload: bytes | bytearray, sizes: list[int]) -> list[str]:
    """The prompts of a request, decoded straight from the frame's buffer (no copy between)."""
    view = memoryview(payload)
    try:
        out, pos = [], 0
        for n in sizes:
            out.append(str(view[pos : pos + n], "utf-8"))
            pos += n
        return out
    finally:
        view.release()


class SubRequest:
    """What a cell asked the host for: see :class:`LlmRequest`.

    ``held`` is what the host counts for the prompt (``held.py``); it is released when the
    request is answered. A consumer that keeps the text longer -- a child node, whose
    ``context`` it becomes -- takes it with :meth:`take_text` and hands ``held`` to
    ``Sandbox.load_context(..., held=...)``, which releases it once the child's kernel has
    the text: from then on the host keeps no copy of it.
    """

    __slots__ = ("_text", "held", "kind", "name", "output")

    def __init__(
        self,
        kind: str,
        text: str,
        name: str | None = None,
        output: dict[str, object] | None = None,
        *,
        held: Hold | None = None,
    ) -> None:
        self.kind = kind
        self._text = text
        self.name = name
        self.output = output
        self.held = held

    @property
    def text(self) -> str:
        return self._text

    def take_text(self) -> str:
        """The prompt, handed over: this request stops referencing it (``text`` is then
        empty), so the taker's reference is the only one and the text is freed with it."""
        text, self._text = self._text, ""
        return text

    def __repr__(self) -> str:
        return f"SubRequest({self.kind!r}, <{len(self._text)} chars>, name={self.name!r})"


class RequestHandler:
    """Marks a handler that answers every kind of request (``llm``, ``rlm``, ``tool``); a
    plain ``fn(prompt)`` answers only ``llm_query`` without a schema.

    ``held`` is where the bytes of the requests it answers are counted: its run's shared
    bound at its node's depth (``RunHeld.scope(depth)``). Without one, a sandbox counts
    against its own bound (``max_held_bytes``) only."""

    def __init__(
        self,
        fn: Callable[[SubRequest], Any],
        *,
        held: HeldScope | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.fn = fn
        self.held = held
        # With a loop, ``fn`` is a coroutine function run on it: a request waiting on a model
        # or a child node holds no thread.
        self.loop = loop

    def __call__(self, request: SubRequest) -> str:
        if self.loop is not None:
            return asyncio.run_coroutine_threadsafe(self.fn(request), self.loop).result()
        return self.fn(request)


def answer_request(handler: object, request: SubRequest) -> str:
    if isinstance(handler, RequestHandler):
        return handler(request)
    if request.kind == "llm" and request.output is None and callable(handler):
        return handler(request.text)
    what = f"tool {request.name!r}" if request.kind == "tool" else f"{request.kind}_query with output="
    if request.kind == "rlm":
        what = "rlm_query"
    raise RuntimeError(f"{what} is not available in this sandbox (its handler answers plain llm_query only)")


class Batch:
    """The answers of one ``llm_request``: the last prompt to finish sends the reply."""

    def __init__(
        self,
        channel: ReplyChannel,
        ident: int,
        prompts: list[str],
        holds: list[Hold],
        kind: str = "llm",
        name: str | None = None,
        output: dict[str, object] | None = None,
    ) -> None:
        n = len(prompts)
        self.channel = channel
        self.ident = ident
        # Prompts wait here, not in the pool's queue: a worker takes its one out, so that
        # whoever it is handed to holds the only reference.
        self.prompts: list[str | None] = prompts
        self.holds: list[Hold | None] = list(holds) + [None] * (n - len(holds))
        self.kind, self.name, self.output = kind, name, output
        self.ename: str | None = None
        self.answers: list[bytes | None] = [None] * n
        self.errors: list[str] = []
        self.left = n
        self.lock = threading.Lock()
        self.done = False

    def _take(self, index: int) -> tuple[str, Hold | None]:
        with self.lock:
            prompt, hold = self.prompts[index], self.holds[index]
            self.prompts[index] = self.holds[index] = None
        return prompt or "", hold.claim() if hold is not None else None

    def run(self, index: int) -> None:
        ch = self.channel
        prompt, hold = self._take(index)
        try:
            if ch.error is not None or ch._closed:
                raise RuntimeError("the sandbox is closing")
            request = SubRequest(self.kind, prompt, self.name, self.output, held=hold)
            del prompt
            answer = answer_request(ch.llm_handler, request)
            del request
        except BaseException as exc:
            self._settle(index, None, exc, hold)
            return
        self._settle(index, answer, None, hold)

    def start_on_loop(self, index: int, handler: RequestHandler) -> None:
        """Answer prompt ``index`` with ``handler``'s coroutine on its loop; the reply is
        sent from the channel's pool (a socket write must never block the loop)."""
        ch = self.channel
        prompt, hold = self._take(index)
        request = SubRequest(self.kind, prompt, self.name, self.output, held=hold)
        del prompt
        assert handler.loop is not None
        future = asyncio.run_coroutine_threadsafe(handler.fn(request), handler.loop)
        del request
        with ch._lock:
            ch._inflight.add(future)

        def done(f: concurrent.futures.Future[str]) -> None:
            with ch._lock:
                ch._inflight.discard(f)
            if f.cancelled():
                cancelled = RuntimeError("the request was cancelled: its cell or its run is over")
                self._settle(index, None, cancelled, hold, in_pool=True)
                return
            exc = f.exception()
            self._settle(index, None if exc is not None else f.result(), exc, hold, in_pool=True)

        future.add_done_callback(done)

    def _settle(
        self, index: int, answer: Any, exc: BaseException | None, hold: Hold | None, *, in_pool: bool = False
    ) -> None:
        """Prompt ``index`` answered (or failed); the last one sends the reply (from the
        channel's pool when ``in_pool``: the caller is the loop)."""
        if hold is not None:
            hold.release()  # answered (or failed): the host no longer needs the prompt
        if exc is None:
            data = (answer if isinstance(answer, str) else str(answer)).encode("utf-8", errors="replace")
            error = None
        else:
            data, error = b"", f"{type(exc).__name__}: {exc}"
        with self.lock:
            if exc is not None:
                self.ename = self.ename or type(exc).__name__
            self.answers[index] = data
            if error is not None:
                self.errors.append(
                    f"prompt {index + 1} of {len(self.answers)}: {error}" if len(self.answers) > 1 else error
                )
            self.left -= 1
            last = self.left == 0
        if not last:
            return
        if not in_pool:
            self._reply()
            return
        try:
            self.channel._pool.submit(self._reply)
        except RuntimeError:  # the sandbox is closing: nobody to answer
            self.abandon()

    def abandon(self) -> None:
        with self.lock:
            holds = [h for h in self.holds if h is not None]
            self.prompts = [None] * len(self.prompts)
            self.holds = [None] * len(self.holds)
        for hold in holds:
            hold.release()
        with self.lock:
            if self.done:
                return
            self.done = True
        self.channel.clock.end()
        self.channel._finish_llm()

    def _reply(self) -> None:
        ch = self.channel
        with self.lock:
            if self.done:
                return
            self.done = True
        ch.clock.end()
        ch._finish_llm()
        if ch.error is not None or ch._closed:
            return
        try:
            if self.errors:
                ch.send(
                    {
                        "t": P.LLM_REPLY,
                        "id": self.ident,
                        "status": "error",
                        "error": "; ".join(self.errors)[:4000],
                        # A tool's exception type, so the cell can catch what the tool raised.
                        "ename": (self.ename or "")[:64] if self.kind == "tool" else "",
                    }
                )
            else:
                answers = [a or b"" for a in self.answers]
                ch.send(
                    {"t": P.LLM_REPLY, "id": self.ident, "status": "ok", "sizes": [len(a) for a in answers]},
                    b"".join(answers),
                )
        except SandboxError:
            pass
