"""A readable rendering of trace events as they happen (``-v``), on stderr via rich.

Events carry what cells printed, what models wrote and what kernels said: every line is a
rich ``Text`` built through :mod:`rlm_sandbox.safe_text`, never a markup string, so neither a
``[/]`` nor an escape sequence in them can do anything but show.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from rlm_sandbox.safe_text import line as safe_line
from rlm_sandbox.safe_text import visible_data


def _first_line(text: str | None, width: int = 90) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


class TraceView:
    """Prints one line per interesting event, indented by depth; ``quiet`` only shows progress."""

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._lock = threading.Lock()
        self._image_said: float | None = None

    def on_event(self, ev: dict[str, Any]) -> None:
        line = self.render(ev)
        if line is not None:
            with self._lock:
                self.console.print(line, highlight=False)

    def render(self, raw: dict[str, Any]) -> Text | None:
        """The line an event is shown as (None: not shown)."""
        ev = visible_data(raw)
        kind = ev.get("event")
        try:
            pad = "  " * int(ev.get("depth") or 0)
        except (TypeError, ValueError):
            pad = ""
        node = str(ev.get("node", ""))
        if kind == "image_progress":
            # A first build (minutes for a derived image): one line every 10 s, not each apt line.
            now = time.monotonic()
            if self._image_said is not None and now - self._image_said < 10.0:
                return None
            self._image_said = now
            return safe_line(("image", "cyan"), f" {_first_line(ev.get('message'), 110)}")
        if kind == "run_start":
            out = safe_line(
                ("run", "bold"), f" {ev.get('run')} model={ev.get('model')} depth={ev.get('depth')}"
            )
            if ev.get("unsafe"):
                out.append(
                    "\nUNSAFE: --backend local runs the code on this machine with no sandbox", "bold red"
                )
            return out
        if kind == "node_start":
            return safe_line(
                pad,
                (f"▶ {node}", "cyan"),
                f" depth {ev.get('depth')} container {str(ev.get('container'))[:12]} ({ev.get('start_s')} s)",
            )
        if kind == "node_end":
            colour = "green" if ev.get("status") == "done" else "red"
            tail = _first_line(ev.get("answer") or ev.get("error"), 70)
            return safe_line(
                pad,
                (f"■ {node}", colour),
                f" {ev.get('status')} after {ev.get('steps')} steps, {ev.get('wall_s')} s: {tail}",
            )
        if self.quiet:
            return None
        if kind == "lm_call":
            return safe_line(
                f"{pad}  ",
                ("lm", "magenta"),
                f" {node} {ev.get('purpose')} {ev.get('prompt_tokens')}+{ev.get('completion_tokens')} tok "
                f"{ev.get('latency_s')} s",
            )
        if kind == "cell":
            status = ("error", "red") if ev.get("error") else "ok"
            return safe_line(
                f"{pad}  ",
                ("cell", "yellow"),
                f" {node} step {ev.get('step')} ",
                status,
                f" {ev.get('duration_s')} s: {_first_line(ev.get('code'))}\n{pad}    → "
                f"{_first_line(ev.get('output'), 100)}",
            )
        if kind in ("budget", "error", "lm_error"):
            return safe_line((str(kind), "red"), f" {ev.get('error')}")
        return None
