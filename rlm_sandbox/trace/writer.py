"""The run's trace: every event of the recursion tree as one JSON object per line.

Events carry the run id, the node id and a monotonic timestamp, so the tree and its
timeline can be rebuilt from the file alone. Listeners (the live view, ``-v``) receive the
same events in-process. Writing is serialised by a lock; each line is flushed at once, so a
crashed run still leaves a readable trace.

A trace holds the input's slices, prompts and outputs, and its lines carry text a model or
a cell chose: it is created new (``O_EXCL``: never written over an existing file, never
through a symlink) and readable by the user only (0600).
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.safe_text import json_text
from rlm_sandbox.trace.events import check_emitted

Listener = Callable[[dict[str, Any]], None]


class Tracer:
    def __init__(self, run_id: str, path: str | Path | None = None) -> None:
        self.run_id = run_id
        self.path = Path(path) if path else None
        self._file: TextIO | None = None
        self._lock = threading.Lock()
        # Events come from several threads (a node's first model call runs beside its
        # container start): one order for the file and every listener, so the live view and a
        # reader of the trace see the same run. Reentrant: a listener may emit.
        self._order = threading.RLock()
        self._listeners: list[Listener] = []
        self._t0 = time.monotonic()
        if self.path is not None:
            self._file = create_trace_file(self.path)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event (declared in :mod:`rlm_sandbox.trace.events`) and tell listeners."""
        check_emitted(event, fields)
        record = {
            "event": event,
            "run": self.run_id,
            "t": round(time.monotonic() - self._t0, 6),
            "ts": time.time(),
        }
        record.update(fields)
        with self._order:
            with self._lock:
                if self._file is not None:
                    # Escaped controls, separators and lone surrogates: one line per event for
                    # any reader, and a file that `cat` cannot turn into terminal commands.
                    self._file.write(json_text(record, default=str) + "\n")
                    self._file.flush()
            self._deliver(record)
        return record

    def _deliver(self, record: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(record)
            except (Exception, SystemExit):
                # A broken view (a closed terminal makes rich raise SystemExit) must never
                # break the run: drop it and go on.
                with self._lock:
                    if listener in self._listeners:
                        self._listeners.remove(listener)

    def notify(self, event: str, **fields: Any) -> None:
        """Tell listeners only: progress ticks (bytes loaded, image build steps) would
        swamp the trace file and say nothing a reader of it needs."""
        check_emitted(event, fields)
        with self._order:
            self._deliver(
                {"event": event, "run": self.run_id, "t": round(time.monotonic() - self._t0, 6), **fields}
            )

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


TRACE_ANSWER_CHARS = 64 * 1024
"""An answer is kept whole in RLMResult and --json; a trace event carries this much of it
(as lm_call carries 64 KB of a response), plus its length and digest when cut."""


def answer_fields(answer: str | None, limit: int = TRACE_ANSWER_CHARS) -> dict[str, Any]:
    """The ``answer`` of a trace event, bounded: a 200 MB answer must not make a 200 MB
    trace. When cut, ``answer_truncated``, ``answer_chars`` and ``answer_sha256`` say so
    and still identify the whole answer (replay compares them)."""
    if answer is None or len(answer) <= limit:
        return {"answer": answer}
    import hashlib

    return {
        "answer": answer[:limit],
        "answer_truncated": True,
        "answer_chars": len(answer),
        "answer_sha256": hashlib.sha256(answer.encode("utf-8", "surrogatepass")).hexdigest(),
    }


def create_trace_file(path: Path) -> TextIO:
    """Open a new trace file for writing; an existing file (or link) is an error, never replaced."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"the trace file {path} already exists: a trace is never written over a file",
            hint=f"give a new path to --trace, or remove that file first (rm {shlex.quote(str(path))})",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot create the trace file {path}: {exc.strerror or exc}", hint="give --trace a writable path"
        ) from None
    return os.fdopen(fd, "w", encoding="utf-8")


def trace_dir() -> Path:
    """Where traces written unasked go: ``$XDG_STATE_HOME/rlm-sandbox/traces`` (default
    ``~/.local/state/rlm-sandbox/traces``), a directory only the user can enter."""
    from rlm_sandbox.user_dirs import private_dir, state_dir

    return private_dir(state_dir() / "traces", what="trace")


def default_trace_path(command: str, run_id: str) -> Path:
    """A new trace file for one run of ``command`` (``demo``, ``chat``, ``replay``), named by
    the run's id, so runs never share or overwrite a file (it is created with O_EXCL)."""
    return trace_dir() / f"{command}-{run_id}.jsonl"


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    from rlm_sandbox.untrusted_json import TRACE_DEPTH, TRACE_LINE_CHARS, loads

    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                events.append(loads(line, max_chars=TRACE_LINE_CHARS, max_depth=TRACE_DEPTH, constants=True))
    return events
