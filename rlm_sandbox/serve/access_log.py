"""One JSON line per request, on stderr, and the request counter of ``/metrics``.

A line says when, which method and path (never the query string, where a careless client
may put a key), the status, the time taken, the bytes each way, the client's address and
the tenant once authenticated. No header is ever logged: the token lives in one. Written
when the response is complete, so a stream (SSE) is logged once, at its end.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any, TextIO

from rlm_sandbox.safe_text import json_text

_RUN_PATH = re.compile(r"^/v1/runs/[^/]+")


def route_of(path: str) -> str:
    """The path with the run id taken out: a bounded label for metrics."""
    return _RUN_PATH.sub("/v1/runs/{id}", path) if path.startswith("/v1/runs/") else path


class AccessLog:
    """ASGI middleware: wraps ``app``; ``count(method, route, code)`` is told each request."""

    def __init__(self, app: Any, count: Any = None, stream: TextIO | None = None) -> None:
        self.app = app
        self.count = count
        self.stream = stream

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        began = time.perf_counter()
        seen = {"status": 500, "in": 0, "out": 0}

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                seen["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            self._write(scope, state, seen, time.perf_counter() - began)

    def _write(self, scope: dict[str, Any], state: dict[str, Any], seen: dict[str, int], took: float) -> None:
        path = str(scope.get("path", ""))
        client = scope.get("client")
        line = {
            "ts": round(time.time(), 3),
            "kind": "request",
            "method": scope.get("method"),
            "path": path[:300],
            "status": seen["status"],
            "ms": round(took * 1000, 1),
            "bytes_in": seen["in"],
            "bytes_out": seen["out"],
            "client": client[0] if client else None,
            "tenant": state.get("tenant"),
        }
        if state.get("run"):
            line["run"] = state["run"]
        if self.count is not None:
            self.count(scope.get("method"), route_of(path), seen["status"])
        stream = self.stream or sys.stderr
        try:
            stream.write(json_text(line) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed log never breaks a request


def log_event(kind: str, stream: TextIO | None = None, **fields: Any) -> None:
    """One JSON line about the service itself (listening, shutting down)."""
    out = stream or sys.stderr
    try:
        out.write(json_text({"ts": round(time.time(), 3), "kind": kind, **fields}, default=str) + "\n")
        out.flush()
    except (OSError, ValueError):
        pass
