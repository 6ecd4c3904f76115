"""Bytes the host holds for sandboxes' requests: bounded per sandbox and per run, with back-pressure.

Why: a cell makes the host hold memory with every ``llm_request`` frame it sends; the host
reads it, decodes it and keeps it until it is answered. The *number* of pending requests has
a cap (``max_pending_llm``); without this module their *bytes* had none, and a cell that
re-sent one 10 MB buffer grew the host by 10 MB a frame (3.5 GB in a minute, measured).

What is counted, and why at twice the size
------------------------------------------
Where a prompt lives on the host: the frame's payload (a buffer the reader fills) -> the
decoded ``str`` (the buffer is dropped once decoded) -> then one of

* a model call: the ``str`` plus the request body the HTTP client serialises from it and
  keeps until the answer arrives (about as large again for text);
* a child node's ``context``: the ``str`` plus its UTF-8 bytes while they stream into the
  child's container. The child node drops its copy once its history is built, so when the
  child's kernel has the text, the host keeps nothing of it.

So a prompt of ``n`` bytes costs the host about ``2n`` while it holds it, and is counted as
``PROMPT_WEIGHT * n + PROMPT_OVERHEAD`` (the overhead covers the ``str`` object, the queued
work item and its future, so a flood of empty prompts is bounded too). It is counted from the
moment its frame's header has been read -- before a byte of its payload is buffered -- until
the host no longer needs it: its answer came back from the model (or the tool), or the child
it became has loaded it, or its request failed or was refused, or the sandbox closed. Other
frames (cell output, replies) count their payload until they are dispatched.

Not counted: answers on their way back to the kernel (a model's answer is small; a child's is
bounded by ``max_frame_payload`` per child), and the expansion of a request body beyond the
text itself (JSON escapes control characters: a prompt of NUL bytes grows sixfold in a body).

Back-pressure before the bound
------------------------------
The channel's reader asks :meth:`SandboxHeld.reserve` for room after it has read a frame's
header and before it reads its payload. While there is none it waits: it stops reading the
stream, the engine's buffers fill, and the kernel's write blocks -- the cell that floods is
the one that waits. It resumes as requests are answered and their bytes released. A sandbox
is killed with :class:`~rlm_sandbox.errors.HostMemoryExceeded` only when the bound cannot be
honoured: a single request larger than its sandbox's bound or than the room its depth is
always guaranteed (below), or a reader that waited ``held_stall_timeout`` seconds while
nothing at all was released in the run.

Why one chain always makes progress (no deadlock)
-------------------------------------------------
Most held bytes are released without needing room for anything else: a model call returns, a
child's container finishes loading its context. The exception is a prompt *waiting* -- queued
behind a node's busy workers, or for a container slot: its release waits on other children,
and children need room to send their own requests. If shallow nodes' waiting prompts filled
the run's bound, every child would wait for room and every parent for its children.

So the run's bound ``R`` is a ladder over the run's ``L`` levels (the same rule that keeps
container slots for deeper levels in ``Budget.admit_node``): a sandbox at depth ``d`` may
fill the run only up to ``cap(d) = R - (L - 1 - d) * s``, with the step
``s = min(R // L, the largest request)``. The deepest level may use all of ``R``; each
shallower level leaves one step more for the levels below it. Then, by induction from the
deepest level up: leaves wait on nothing but the model, so their bytes drain; levels above
``d`` drain once the deeper ones do; and everything shallower than ``d`` holds at most
``cap(d - 1) = cap(d) - s``, so a request of up to ``s`` bytes at depth ``d`` (up to
``cap(0)`` at the root) always finds room eventually. A larger one might wait forever, so it
is refused up front, naming the setting. The default ``R`` is
``max(1 GiB, L * largest request)``: then ``s`` is the largest request the frame cap allows,
and any single prompt that fits in a frame passes at every depth (a 250 MB ``llm_query``
included). The per-sandbox bound (``max_held_bytes``) keeps one sandbox from taking the
whole run's room from its siblings.

Waiting is never unbounded either: the waiter polls its channel (a closing sandbox stops it)
and gives up after ``held_stall_timeout`` without a release anywhere in the run.

Freed must mean freed
---------------------
glibc raises its mmap threshold each time a large buffer is freed (up to 32 MiB), after which
10 MB prompts are carved from the heap's per-thread arenas and stay resident after they are
freed: measured, the host then kept about twice what it counted. :func:`return_freed_memory`
fixes the threshold at 1 MiB, once per process, so that a buffer of 1 MiB or more is mapped on
its own and handed back to the system when freed; what the host holds is then what it counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rlm_sandbox.errors import HostMemoryExceeded, SandboxClosed

from .messages import MAX_BATCH

PROMPT_WEIGHT = 2
"""A prompt's bytes are held about twice: the text, and the request body or the encoded
bytes streaming into a child's container."""
PROMPT_OVERHEAD = 1024
"""Bytes counted per prompt beyond its text: the ``str`` object, its work item and future."""
RUN_FLOOR = 1 << 30
"""The smallest default run bound: 1 GiB."""


def request_cost(payload: int, prompts: int) -> int:
    """What the host counts for one ``llm_request``: its prompts, weighted, and their overhead."""
    return PROMPT_WEIGHT * payload + PROMPT_OVERHEAD * prompts


def largest_request(max_frame_payload: int) -> int:
    """The cost of the largest request a frame can carry."""
    return request_cost(max_frame_payload, MAX_BATCH)


_MALLOPT_DONE = False
_M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc hand buffers of ``threshold`` bytes and more back to the system when freed.

    Once per process (the first sandbox channel calls it); a no-op off glibc. True if set."""
    global _MALLOPT_DONE
    if _MALLOPT_DONE:
        return True
    _MALLOPT_DONE = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class RunHeld:
    """The bound shared by every sandbox of one run (the whole recursion tree).

    ``limit`` None picks the default, ``max(1 GiB, levels * largest request)``; ``levels``
    is the run's depth. See the module docstring for the ladder ``cap(depth)``.
    """

    def __init__(
        self, limit: int | None = None, *, levels: int = 1, max_frame_payload: int = 256 << 20
    ) -> None:
        self.levels = max(1, levels)
        biggest = largest_request(max_frame_payload)
        self.limit = limit if limit is not None else max(RUN_FLOOR, self.levels * biggest)
        self.step = max(1, min(self.limit // self.levels, biggest))
        self.cond = threading.Condition()
        self.held = 0
        self.peak = 0
        self.releases = 0  # every release bumps it: waiters see progress

    def cap(self, depth: int) -> int:
        """How full a sandbox at ``depth`` may make the run: deeper levels keep room."""
        depth = min(max(depth, 0), self.levels - 1)
        return self.limit - (self.levels - 1 - depth) * self.step

    def largest(self, depth: int) -> int:
        """The largest single reservation a sandbox at ``depth`` is sure to get eventually."""
        depth = min(max(depth, 0), self.levels - 1)
        return self.cap(0) if depth == 0 else self.step

    def scope(self, depth: int) -> HeldScope:
        """Where a node at ``depth`` counts what its sandbox's requests hold."""
        return HeldScope(self, depth)


@dataclass(frozen=True, slots=True)
class HeldScope:
    """A run's bound, seen from one depth of the tree."""

    run: RunHeld
    depth: int


class Hold:
    """Bytes reserved for one frame or one prompt; released once (later calls do nothing).

    ``claim()`` marks it as in the hands of a worker: closing the sandbox then leaves it to
    that worker to release (the bytes live until its model call returns), instead of
    pretending they are gone."""

    __slots__ = ("_account", "_n", "_run", "claimed")

    def __init__(self, account: SandboxHeld, run: RunHeld, n: int) -> None:
        self._account = account
        self._run = run
        self._n = n
        self.claimed = False

    def claim(self) -> Hold:
        self.claimed = True
        return self

    @property
    def size(self) -> int:
        return self._n

    def release(self) -> None:
        run = self._run
        with run.cond:
            n, self._n = self._n, 0
            if not n:
                return
            run.held -= n
            run.releases += 1
            self._account._forget(self, n)
            run.cond.notify_all()

    def split(self, sizes: list[int]) -> list[Hold]:
        """Divide into holds of ``sizes`` (one per prompt); what is left over is released."""
        run = self._run
        with run.cond:
            parts: list[Hold] = []
            left = self._n
            for size in sizes:
                take = min(size, left)
                left -= take
                parts.append(Hold(self._account, run, take))
            self._account._swap(self, [p for p in parts if p._n])
            self._n = 0
            if left:
                run.held -= left
                run.releases += 1
                self._account._forget(None, left)
                run.cond.notify_all()
        return parts


class SandboxHeld:
    """One sandbox's account: its own bound, checked together with its run's.

    The run's bound comes with each reservation (the scope of the node the sandbox serves
    now: a pooled sandbox learns its node late); without one, the sandbox is its own run.
    """

    def __init__(self, limit: int, *, name: str = "sandbox", stall_s: float = 600.0) -> None:
        self.limit = limit
        self.name = name
        self.stall_s = stall_s
        self.held = 0
        self.peak = 0
        self.waits = 0  # reservations that had to wait for room
        self.waiting = False
        self._lock = threading.Lock()  # taken inside a run's cond, never the other way round
        self._holds: set[Hold] = set()
        self._closed = False
        self._own = RunHeld(limit).scope(0)

    def reserve(
        self,
        n: int,
        scope: HeldScope | None = None,
        *,
        what: str = "a request",
        stop: Callable[[], bool] = lambda: False,
        on_wait: Callable[[bool], None] | None = None,
    ) -> Hold | None:
        """Block until ``n`` bytes fit under both bounds, then hold them (None for 0 bytes).

        Raises :class:`HostMemoryExceeded` when they never can, or when nothing in the run
        was released for ``stall_s``; :class:`SandboxClosed` once ``stop()`` says so.
        """
        if n <= 0:
            return None
        scope = scope or self._own
        run = scope.run
        self._check_fits(n, scope, what)
        cap = run.cap(scope.depth)
        waited = False
        try:
            with run.cond:
                seen, since = run.releases, time.monotonic()
                while self.held + n > self.limit or run.held + n > cap:
                    if self._closed or stop():
                        raise SandboxClosed(f"{self.name} is closing")
                    if not waited:
                        waited = True
                        self.waits += 1
                        self.waiting = True
                        if on_wait is not None:
                            on_wait(True)
                    now = time.monotonic()
                    if run.releases != seen:
                        seen, since = run.releases, now
                    if now - since >= self.stall_s:
                        raise HostMemoryExceeded(
                            f"{self.name}: {what} waited {self.stall_s:g} s (held_stall_timeout) for {_mb(n)} of room: "
                            f"the host holds {_mb(self.held)} for this sandbox (bound {_mb(self.limit)}) "
                            f"and {_mb(run.held)} for the run (bound {_mb(cap)} at depth {scope.depth}), "
                            "and nothing was released",
                            setting="held_stall_timeout",
                            needed=n,
                            limit=cap,
                            hint="a cell is flooding the host with requests, or the model answers more "
                            "slowly than held_stall_timeout: raise it, or max_held_bytes/max_run_held_bytes",
                        )
                    run.cond.wait(min(0.25, self.stall_s - (now - since)))
                if self._closed:
                    raise SandboxClosed(f"{self.name} is closing")
                hold = Hold(self, run, n)
                run.held += n
                run.peak = max(run.peak, run.held)
                with self._lock:
                    self.held += n
                    self.peak = max(self.peak, self.held)
                    self._holds.add(hold)
                return hold
        finally:
            if waited:
                self.waiting = False
                if on_wait is not None:
                    on_wait(False)

    def _check_fits(self, n: int, scope: HeldScope, what: str) -> None:
        """Refuse ``n`` bytes that could never fit: past this sandbox's bound, or past what one
        request at ``scope``'s depth may hold of its run's."""
        run = scope.run
        if n > self.limit:
            raise HostMemoryExceeded(
                f"{self.name}: {what} needs {_mb(n)} of host memory, more than the "
                f"{_mb(self.limit)} the host may hold for one sandbox (max_held_bytes)",
                setting="max_held_bytes",
                needed=n,
                limit=self.limit,
                hint="raise max_held_bytes, or send the prompts in smaller pieces",
            )
        largest = run.largest(scope.depth)
        if n > largest:
            raise HostMemoryExceeded(
                f"{self.name}: {what} needs {_mb(n)} of host memory; at depth {scope.depth} of "
                f"{run.levels} one request may hold at most {_mb(largest)} of the run's "
                f"{_mb(run.limit)} (max_run_held_bytes)",
                setting="max_run_held_bytes",
                needed=n,
                limit=largest,
                hint=f"raise max_run_held_bytes (to {run.levels} x {_mb(n)} for every level), "
                "or send the prompts in smaller pieces",
            )

    def close(self) -> None:
        """Release what nobody works on any more (frames half read, prompts still queued);
        a claimed hold stays until its worker lets go. Later reservations fail."""
        with self._lock:
            self._closed = True
            holds = [h for h in self._holds if not h.claimed]
        for hold in holds:
            hold.release()
        for run in {self._own.run, *(h._run for h in holds)}:
            with run.cond:
                run.cond.notify_all()

    # ---- called by Hold, with its run's cond held

    def _forget(self, hold: Hold | None, n: int) -> None:
        with self._lock:
            self.held -= n
            if hold is not None:
                self._holds.discard(hold)

    def _swap(self, old: Hold, new: list[Hold]) -> None:
        with self._lock:
            self._holds.discard(old)
            self._holds.update(new)
