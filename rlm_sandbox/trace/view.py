"""A readable rendering of trace events as they happen (``-v``), on stderr via rich."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape


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
        kind = ev.get("event")
        pad = "  " * int(ev.get("depth") or 0)
        node = ev.get("node", "")
        line = None
        if kind == "image_progress":
            # A first build (minutes for a derived image): one line every 10 s, not each apt line.
            now = time.monotonic()
            if self._image_said is not None and now - self._image_said < 10.0:
                return
            self._image_said = now
            line = f"[cyan]image[/] {escape(_first_line(ev.get('message'), 110))}"
        elif kind == "run_start":
            line = f"[bold]run[/] {ev.get('run')} model={ev.get('model')} depth={ev.get('depth')}"
            if ev.get("unsafe"):
                line += "\n[bold red]UNSAFE: --backend local runs the code on this machine with no sandbox[/]"
        elif kind == "node_start":
            line = f"{pad}[cyan]▶ {node}[/] depth {ev.get('depth')} container {str(ev.get('container'))[:12]} ({ev.get('start_s')} s)"
        elif kind == "node_end":
            colour = "green" if ev.get("status") == "done" else "red"
            tail = escape(_first_line(ev.get("answer") or ev.get("error"), 70))
            line = f"{pad}[{colour}]■ {node}[/] {ev.get('status')} after {ev.get('steps')} steps, {ev.get('wall_s')} s: {tail}"
        elif self.quiet:
            return
        elif kind == "lm_call":
            line = (
                f"{pad}  [magenta]lm[/] {node} {ev.get('purpose')} {ev.get('prompt_tokens')}+{ev.get('completion_tokens')} tok "
                f"{ev.get('latency_s')} s"
            )
        elif kind == "cell":
            status = "[red]error[/]" if ev.get("error") else "ok"
            line = (
                f"{pad}  [yellow]cell[/] {node} step {ev.get('step')} {status} {ev.get('duration_s')} s: "
                f"{escape(_first_line(ev.get('code')))}\n{pad}    → {escape(_first_line(ev.get('output'), 100))}"
            )
        elif kind == "sub_call":
            return
        elif kind in ("budget", "error", "lm_error"):
            line = f"[red]{kind}[/] {escape(str(ev.get('error')))}"
        if line:
            with self._lock:
                self.console.print(line, highlight=False)
