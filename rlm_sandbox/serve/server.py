"""uvicorn, and what SIGTERM (or Ctrl-C) does to the service.

The first signal: no more runs are taken (``POST`` is a 503), queued runs are cancelled,
running ones get ``serve_grace_s`` to finish, then the rest are cancelled (their containers
removed), every container this process still has is removed, and the process exits 0. A
second signal cuts the grace period short. uvicorn's own handling would stop at once and
then re-raise the signal (exit status 143): this server takes the signal itself.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType
from typing import Any

import uvicorn

from rlm_sandbox.safe_text import json_text
from rlm_sandbox.serve.access_log import log_event
from rlm_sandbox.serve.app import build_app
from rlm_sandbox.serve.config import ServeConfig
from rlm_sandbox.serve.service import Service

#: How long uvicorn waits for open connections once the runs are done (SSE streams end
#: with their run, so this is only for a client that keeps a connection open).
CONNECTIONS_GRACE_S = 5.0


class _JsonLogs(logging.Formatter):
    """uvicorn's own warnings and errors as JSON lines too."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "kind": "log", "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage()[:4000]}  # fmt: skip
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"[:2000]
        return json_text(line, default=str)


def _logging() -> None:
    """Every warning of every library (uvicorn's, asyncio's) as a JSON line on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLogs())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    log_event("listening", url=f"http://{host}:{port}", host=host, port=port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """A signal handler: nothing here may block. The drain runs on the loop."""
        if self._loop is None or not self.started:
            self.should_exit = True  # not serving yet: nothing to drain
            return
        self._loop.call_soon_threadsafe(self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if self._draining is not None:
            if self.service.hurry is not None:
                self.service.hurry.set()
            return
        grace = self.service.config.grace_s
        log_event("shutting_down", signal=signal.Signals(sig).name, grace_s=grace)
        self._draining = asyncio.ensure_future(self._drain(grace))

    async def _drain(self, grace: float) -> None:
        try:
            await self.service.close(grace)
        finally:
            log_event("stopped")
            self.should_exit = True


def serve(config: ServeConfig) -> int:
    """Run the service until a signal ends it; the exit status (0)."""
    _logging()
    service = Service(config)
    app = build_app(service)
    uconfig = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=CONNECTIONS_GRACE_S,
        server_header=False,
    )
    for note in config.notes:
        log_event("note", message=note)
    Server(uconfig, service).run()
    return 0
