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
from rlm_sandbox.trace import events


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
        ev = events.parse(visible_data(raw))
        pad = "  " * max(0, min(events.declared(ev, "depth") or 0, 64))
        node = events.declared(ev, "node") or ""
        if isinstance(ev, events.ImageProgress):
            # A first build (minutes for a derived image): one line every 10 s, not each apt line.
            now = time.monotonic()
            if self._image_said is not None and now - self._image_said < 10.0:
                return None
            self._image_said = now
            return safe_line(("image", "cyan"), f" {_first_line(ev.message, 110)}")
        if isinstance(ev, events.RunStart):
            out = safe_line(("run", "bold"), f" {ev.run} model={ev.model} depth={ev.depth}")
            if ev.unsafe:
                out.append(
                    "\nUNSAFE: --backend local runs the code on this machine with no sandbox", "bold red"
                )
            return out
        if isinstance(ev, events.NodeStart):
            return safe_line(
                pad,
                (f"▶ {node}", "cyan"),
                f" depth {ev.depth} container {str(ev.container)[:12]} ({ev.start_s} s)",
            )
        if isinstance(ev, events.NodeEnd):
            colour = "green" if ev.status == "done" else "red"
            tail = _first_line(ev.answer or ev.error, 70)
            return safe_line(
                pad, (f"■ {node}", colour), f" {ev.status} after {ev.steps} steps, {ev.wall_s} s: {tail}"
            )
        if self.quiet:
            return None
        return self._detail(ev, pad, node)

    def _detail(self, ev: events.Event, pad: str, node: str) -> Text | None:
        """The lines only ``-v`` shows: model calls, cells, problems."""
        if isinstance(ev, events.LMCall):
            return safe_line(
                f"{pad}  ",
                ("lm", "magenta"),
                f" {node} {ev.purpose} {ev.prompt_tokens}+{ev.completion_tokens} tok {ev.latency_s} s",
            )
        if isinstance(ev, events.Cell):
            status = ("error", "red") if ev.error else "ok"
            return safe_line(
                f"{pad}  ",
                ("cell", "yellow"),
                f" {node} step {ev.step} ",
                status,
                f" {ev.duration_s} s: {_first_line(ev.code)}\n{pad}    → {_first_line(ev.output, 100)}",
            )
        if isinstance(ev, events.Budget | events.LMError):
            return safe_line((ev.name, "red"), f" {ev.error}")
        if isinstance(ev, events.Malformed):
            return safe_line((f"? {ev.event}", "dim"), f" (malformed: {ev.problem})")
        return None
