"""Every container this process started and has not removed yet, so none outlives it.

Normal paths remove their own container (``Sandbox.close``). This registry is the safety net
for the others: ``atexit`` removes whatever is left, and SIGTERM is turned into an orderly
``SystemExit`` (so ``with`` blocks and ``finally`` clauses run) instead of an instant death.
SIGINT already raises ``KeyboardInterrupt``. A SIGKILLed controller cannot clean up: its
containers see end-of-file on stdin and stop, and ``gc`` removes them by label.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from typing import Any


class LiveSandboxes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}
        self._hooked = False
        self._signal_hooked = False
        self._terminating = False

    def add(self, backend: Any, sandbox_id: str) -> None:
        self._hook()
        with self._lock:
            self._items[sandbox_id] = backend

    def discard(self, backend: Any, sandbox_id: str) -> None:
        with self._lock:
            self._items.pop(sandbox_id, None)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def remove_all(self) -> int:
        with self._lock:
            items = list(self._items.items())
        for sandbox_id, backend in items:
            backend.remove(sandbox_id)
        return len(items)

    def _hook(self) -> None:
        if not self._hooked:
            self._hooked = True
            atexit.register(self.remove_all)
        self.hook_signals()

    def hook_signals(self) -> None:
        """Turn SIGTERM into ``SystemExit``: from the main thread only (Python's rule), so
        the engine calls it where a run is waited for, before any container exists (its
        containers start in worker threads)."""
        if self._signal_hooked or threading.current_thread() is not threading.main_thread():
            return
        self._signal_hooked = True
        try:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            pass

    def _on_sigterm(self, signum: int, frame: object) -> None:
        if self._terminating:
            # A second SIGTERM while unwinding: remove everything now and go.
            self.remove_all()
            os._exit(128 + signum)
        self._terminating = True
        raise SystemExit(128 + signum)


live = LiveSandboxes()
