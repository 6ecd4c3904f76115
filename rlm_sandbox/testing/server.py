"""A local OpenAI-compatible model server that plays scripted policies.

Why it exists: the demo and the tests must run the *real* HTTP path of both model clients
(the OpenAI-compatible one and LiteLLM's: connection reuse, retries, error mapping, usage
accounting) without an API key and without any traffic leaving the machine. A tiny
chat-completions server on 127.0.0.1 gives exactly that: the engine talks to it as
``openai/<name>`` (or through LiteLLM as ``litellm_proxy/<name>``) with
``api_base=server.url``, and a *policy* (a plain callable)
decides each reply, so a test can script rate limits, 5xx storms, slow answers or a whole
deterministic RLM run.

The default policy, :func:`rlm_policy`, behaves like a small but sensible RLM model for two
task families over logs (count lines containing a quoted phrase; find a secret value), and
:func:`generate_log` writes logs whose true answers are known, so an end-to-end run can be
checked exactly.

Stdlib only, and no LiteLLM import: importing this module must stay cheap.
"""

from __future__ import annotations

import bisect
import collections
import json
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rlm_sandbox.testing.policies import messages_of, rlm_policy
from rlm_sandbox.testing.replies import HTTPReply, Policy, Stall, error_body

# --------------------------------------------------------------------------- the server


class RequestLog:
    """What the server received, readable from tests while requests are still arriving.

    Besides the last bodies it keeps the arrival time of every chat-completion request
    (``time.perf_counter()`` of the server's process, taken as the request line and headers
    have been read): a benchmark that runs the server in its own process and notes when it
    spawned an engine learns, at the server, when that engine's first model request came.

    Its token counts are the server's own (the usage it reported), so a test can check a
    client's accounting and budgets against the server, not against the client.
    """

    def __init__(self, keep: int = 64) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._bodies: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._arrivals: list[float] = []  # sorted
        self._connections = 0
        self._answered = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._by_model: dict[str, list[int]] = {}

    def record(self, body: dict[str, Any], arrived: float | None = None) -> None:
        """Count ``body``; ``arrived`` is its perf_counter arrival time (now when omitted)."""
        at = time.perf_counter() if arrived is None else arrived
        with self._lock:
            self._count += 1
            self._bodies.append(body)
            # Handler threads take their timestamps before the lock, so two concurrent
            # requests may record out of order: insert in place (near the end) so the list
            # stays sorted and first_after stays a bisection.
            bisect.insort(self._arrivals, at)

    @property
    def arrivals(self) -> list[float]:
        """Arrival times (perf_counter seconds) of every chat-completion request, oldest first."""
        with self._lock:
            return list(self._arrivals)

    def first_after(self, since: float) -> float | None:
        """Arrival time of the first request that came at or after ``since``, or None."""
        with self._lock:
            i = bisect.bisect_left(self._arrivals, since)
            return self._arrivals[i] if i < len(self._arrivals) else None

    def served(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """One completion answered, with the usage the server reported for it."""
        with self._lock:
            self._answered += 1
            self._prompt_tokens += prompt_tokens
            self._completion_tokens += completion_tokens
            row = self._by_model.setdefault(model, [0, 0, 0])
            row[0] += 1
            row[1] += prompt_tokens
            row[2] += completion_tokens

    @property
    def answered(self) -> int:
        """Completions the server answered (200 with usage)."""
        with self._lock:
            return self._answered

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of every completion answered, as the server counted them."""
        with self._lock:
            return self._prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """Completion tokens of every completion answered, as the server counted them."""
        with self._lock:
            return self._completion_tokens

    def usage_by_model(self) -> dict[str, dict[str, int]]:
        """``{model: {"calls", "prompt_tokens", "completion_tokens"}}`` as the server served them."""
        with self._lock:
            return {
                m: {"calls": r[0], "prompt_tokens": r[1], "completion_tokens": r[2]}
                for m, r in self._by_model.items()
            }

    def connection_opened(self) -> None:
        with self._lock:
            self._connections += 1

    @property
    def count(self) -> int:
        """Chat-completion requests received (failed ones included)."""
        with self._lock:
            return self._count

    @property
    def connections(self) -> int:
        """TCP connections accepted: shows whether a client reuses its connections."""
        with self._lock:
            return self._connections

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The last ``keep`` request bodies, oldest first."""
        with self._lock:
            return list(self._bodies)

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self._bodies[-1] if self._bodies else None

    def __len__(self) -> int:
        return self.count


CHARS_PER_TOKEN = 4
"""The server's tokenizer: one token per 4 characters (rounded up), at least one."""


def _estimate_tokens(text: str) -> int:
    return max(1, (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)


def _max_tokens(body: dict[str, Any]) -> int | None:
    """The completion limit a request asks for (``max_tokens`` or ``max_completion_tokens``)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
    owner: ScriptedModelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout fired) closes the socket under a sleeping
        # handler: expected in timeout tests, not worth a traceback on stderr.
        if isinstance(sys.exc_info()[1], ConnectionError | OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse by the client is real
    server: _Server
    timeout = 120  # an idle keep-alive connection eventually frees its thread

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)
        self.server.owner.requests.connection_opened()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the log object
        pass

    def _send_json(
        self,
        status: int,
        payload: dict[str, Any] | str | bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        if isinstance(payload, dict):
            data = json.dumps(payload).encode()
        else:
            data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self) -> None:
        if self._path() in ("/v1/models", "/models"):
            owner = self.server.owner
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": owner.served_name, "object": "model", "created": 0, "owned_by": "scripted"}
                    ],
                },
            )
            return
        self._send_json(404, error_body(404, f"no route {self.path}"))

    def do_POST(self) -> None:
        arrived = time.perf_counter()  # request line and headers read: the request is here
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if self._path() not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, error_body(404, f"no route {self.path}"))
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self._send_json(400, error_body(400, f"invalid JSON body: {exc}"))
            return
        owner = self.server.owner
        owner.requests.record(body, arrived)
        if owner.latency_s > 0:
            time.sleep(owner.latency_s)
        try:
            reply = owner.policy(body)
        except Exception as exc:  # a broken policy is a 500, visible to the test, not a hang
            self._send_json(500, error_body(500, f"policy failed: {type(exc).__name__}: {exc}"))
            return
        if isinstance(reply, HTTPReply):
            self._send_json(reply.status, reply.body, reply.headers, reply.content_type)
            return
        if isinstance(reply, Stall):
            self._stall(reply)
            return
        self._answer(body, str(reply))

    def _stall(self, stall: Stall) -> None:
        """Hold the request without an answer until the server closes (see :class:`Stall`)."""
        closing = self.server.owner.closing
        self.close_connection = True
        if stall.trickle_s is None:
            closing.wait()
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            self.wfile.write(b"{")
            self.wfile.flush()
            while not closing.wait(stall.trickle_s):
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            return  # the client gave up

    def _answer(self, body: dict[str, Any], content: str) -> None:
        model = str(body.get("model") or self.server.owner.served_name)
        limit = _max_tokens(body)
        finish = "stop"
        if limit is not None and _estimate_tokens(content) > limit:
            # A provider honours max_tokens: the reply is cut at the limit.
            content, finish = content[: limit * CHARS_PER_TOKEN], "length"
        prompt_chars = sum(len(m["content"]) for m in messages_of(body))
        usage = {
            "prompt_tokens": max(1, (prompt_chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN),
            "completion_tokens": _estimate_tokens(content),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self.server.owner.requests.served(model, usage["prompt_tokens"], usage["completion_tokens"])
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream"):
            self._stream(ident, created, model, content, usage)
            return
        self._send_json(
            200,
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            },
        )

    def _stream(self, ident: str, created: int, model: str, content: str, usage: dict[str, int]) -> None:
        def chunk(delta: dict[str, Any], finish: str | None, with_usage: bool = False) -> bytes:
            payload: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if with_usage:
                payload["usage"] = usage
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        data = (
            chunk({"role": "assistant", "content": content}, None)
            + chunk({}, "stop", with_usage=True)
            + b"data: [DONE]\n\n"
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ScriptedModelServer:
    """An OpenAI-compatible chat-completions endpoint on loopback, answering from a policy.

    Use it as a context manager; point a run at it with ``model=server.model_name``,
    ``api_base=server.url`` and ``api_key=server.api_key``. It binds 127.0.0.1 only.
    """

    api_key = "sk-scripted-local"

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        latency_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        served_name: str = "scripted",
        keep_bodies: int = 64,
    ) -> None:
        self.policy: Policy = policy or rlm_policy
        self.latency_s = latency_s
        self.host = host
        self.port = port
        self.served_name = served_name
        self.requests = RequestLog(keep_bodies)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.closing = threading.Event()  # set by close(): stalled requests end then

    @property
    def url(self) -> str:
        """The api_base to give a client (OpenAI style, ending in /v1)."""
        if self._server is None:
            raise RuntimeError("the scripted model server is not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model_name(self) -> str:
        """The model string: the OpenAI-compatible provider, our served name."""
        return f"openai/{self.served_name}"

    def start(self) -> ScriptedModelServer:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-model", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and cut open keep-alive connections so no handler thread lingers."""
        server, self._server = self._server, None
        if server is None:
            return
        self.closing.set()
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
