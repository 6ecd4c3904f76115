"""A warm pool: hardened sandboxes started ahead of need, so a child node gets one in microseconds.

Rules that keep it safe: a pool belongs to one run and one tenant (its containers carry that
run's labels); a pooled sandbox serves exactly one node and is then destroyed, never
reused; the pool never lets ready + in-use containers exceed the run's container budget;
and it is emptied on every exit path (``close``, and the process-wide registry's safety net).

An idle pool costs nothing noticeable: its kernels block on a read, and after
``idle_timeout`` without demand the pool removes them and stops refilling until the next
``acquire``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from rlm_sandbox.errors import SandboxError
from rlm_sandbox.sandbox.config import SandboxConfig

from .backend import Backend
from .channel import LLMHandler
from .core import Sandbox


class SandboxPool:
    def __init__(
        self,
        config: SandboxConfig,
        size: int,
        *,
        idle_timeout: float = 30.0,
        parallel_starts: int = 2,
        can_grow: Callable[[int], bool] = lambda _total: True,
        on_start: Callable[[Sandbox], None] | None = None,
        progress: Callable[[str], None] | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self._backend = backend
        self.size = max(0, size)
        self.idle_timeout = idle_timeout
        self.parallel_starts = max(1, parallel_starts)
        self._can_grow = can_grow
        self._on_start = on_start
        self._progress = progress
        self._cond = threading.Condition()
        self._ready: deque[tuple[float, Sandbox]] = deque()
        self._starting = 0
        self._closed = False
        self._last_demand = time.monotonic()
        self.hits = 0
        self.misses = 0
        self.started = 0
        self.discarded = 0
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []

    # ---- lifecycle

    def start(self) -> SandboxPool:
        if self.size:
            for i in range(self.parallel_starts):
                t = threading.Thread(target=self._fill, name=f"sandbox-pool-{i}", daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def __enter__(self) -> SandboxPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            ready = [sb for _, sb in self._ready]
            self._ready.clear()
            self._cond.notify_all()
        for sb in ready:
            sb.close()
            self.discarded += 1
        # A fill thread may be half-way through starting one more container: wait for it to
        # finish and remove that container, so nothing of the pool outlives its run.
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(self.config.start_timeout + self.config.kill_grace)

    # Read without the pool's lock, on purpose: other parties (the placement of nodes over
    # engines, other pools) ask while holding their own locks, and a pool filling itself
    # asks them back (``can_grow``) while holding this one. A reading one change stale is
    # harmless; a lock-order cycle between two pools is a hung run.
    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def held(self) -> int:
        """Containers the pool holds or is starting: they count against every cap."""
        return len(self._ready) + self._starting

    # ---- handing out

    def acquire(self, llm_handler: LLMHandler | None = None) -> tuple[Sandbox, bool]:
        """A started sandbox for one node: (sandbox, came_from_pool).

        A container the pool is already starting is waited for rather than a second one
        cold-started beside it: the pool grew while the node's slot was free, so both would
        together pass the run's container cap. Only with nothing ready and nothing starting
        does the node start its own."""
        deadline = time.monotonic() + self.config.start_timeout + self.config.kill_grace
        with self._cond:
            self._last_demand = time.monotonic()
            while True:
                while self._ready:
                    _, sb = self._ready.popleft()
                    self._cond.notify_all()  # room for a refill
                    if sb.healthy:
                        self.hits += 1
                        sb.set_llm_handler(llm_handler)
                        return sb, True
                    self.discarded += 1
                    threading.Thread(target=sb.close, daemon=True).start()
                if not self._starting or self._closed or time.monotonic() >= deadline:
                    break
                self._cond.wait(0.05)
            self.misses += 1
            self._cond.notify_all()
        sb = Sandbox(self.config, llm_handler=llm_handler, progress=self._progress, backend=self._backend)
        if self._on_start:
            self._on_start(sb)
        return sb.start(), False

    # ---- filling

    def _want_more(self) -> bool:
        total = len(self._ready) + self._starting
        idle = time.monotonic() - self._last_demand > self.idle_timeout
        return not self._closed and not idle and total < self.size and self._can_grow(total)

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._want_more():
                    if self._closed:
                        return
                    self._expire_idle()
                    self._cond.wait(1.0)
                self._starting += 1
            sb = Sandbox(self.config, progress=self._progress, backend=self._backend)
            try:
                if self._on_start:
                    self._on_start(sb)
                sb.start()
                ok = True
            except SandboxError as exc:
                ok = False
                self.errors.append(str(exc))
                sb.close()
            except BaseException:
                sb.close()
                raise
            with self._cond:
                self._starting -= 1
                if ok and not self._closed:
                    self._ready.append((time.monotonic(), sb))
                    self.started += 1
                    sb = None  # type: ignore[assignment]
                self._cond.notify_all()
            if sb is not None:
                sb.close()
            if not ok:
                time.sleep(0.5)  # a broken engine must not be hammered

    def _expire_idle(self) -> None:
        """Called with the lock held: drop everything once demand has stopped for a while."""
        if self._ready and time.monotonic() - self._last_demand > self.idle_timeout:
            stale = [sb for _, sb in self._ready]
            self._ready.clear()
            self.discarded += len(stale)
            for sb in stale:
                threading.Thread(target=sb.close, daemon=True).start()
