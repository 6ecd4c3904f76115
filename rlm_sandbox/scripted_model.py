"""A local OpenAI-compatible model server that plays scripted policies.

Why it exists: the demo and the tests must run the *real* LiteLLM HTTP path (client caching,
retries, error mapping, usage accounting) without an API key and without any traffic leaving
the machine. A tiny chat-completions server on 127.0.0.1 gives exactly that: LiteLLM talks
to it as ``openai/<name>`` with ``api_base=server.url``, and a *policy* (a plain callable)
decides each reply, so a test can script rate limits, 5xx storms, slow answers or a whole
deterministic RLM run.

The default policy, :func:`rlm_policy`, behaves like a small but sensible RLM model for two
task families over logs (count lines containing a quoted phrase; find a secret value), and
:func:`generate_log` writes logs whose true answers are known, so an end-to-end run can be
checked exactly.

Stdlib only, and no LiteLLM import: importing this module must stay cheap.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeAlias

__all__ = [
    "COUNT_TASK_RE",
    "DEFAULT_NEEDLE",
    "HTTPReply",
    "LogStats",
    "Policy",
    "Reply",
    "RequestLog",
    "ScriptedModelServer",
    "always_status",
    "answer_leaf",
    "build_step1_code",
    "error_body",
    "fail_then",
    "generate_log",
    "grep_first_policy",
    "rlm_policy",
    "sequence_policy",
]

# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class HTTPReply:
    """A non-200 answer, so a policy can script provider failures (429, 500, 401 ...)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


Reply: TypeAlias = str | HTTPReply
Policy: TypeAlias = Callable[[dict[str, Any]], Reply]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "model_not_found",
    429: "rate_limit_exceeded",
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body: LiteLLM maps errors by status, but shows this message."""
    kind = _ERROR_TYPES.get(status, "server_error")
    return {
        "error": {
            "message": message or f"scripted error {status}",
            "type": kind,
            "param": None,
            "code": kind,
        }
    }


def sequence_policy(*replies: Reply) -> Policy:
    """The nth request gets the nth reply and the last one repeats: scripts a conversation."""
    if not replies:
        raise ValueError("sequence_policy needs at least one reply")
    lock = threading.Lock()
    state = {"n": 0}

    def policy(request: dict[str, Any]) -> Reply:
        with lock:
            i = state["n"]
            state["n"] += 1
        return replies[min(i, len(replies) - 1)]

    return policy


def fail_then(policy: Policy, status: int, times: int, *, headers: dict[str, str] | None = None) -> Policy:
    """The first ``times`` calls fail with ``status``; then ``policy`` answers (retry tests)."""
    lock = threading.Lock()
    state = {"n": 0}

    def wrapped(request: dict[str, Any]) -> Reply:
        with lock:
            failing = state["n"] < times
            state["n"] += 1
        if failing:
            return HTTPReply(status, error_body(status), dict(headers or {}))
        return policy(request)

    return wrapped


def always_status(status: int, message: str | None = None) -> Policy:
    """Every call fails the same way (a dead provider, a revoked key)."""

    def policy(request: dict[str, Any]) -> Reply:
        return HTTPReply(status, error_body(status, message))

    return policy


# --------------------------------------------------------------------------- the RLM policy

COUNT_TASK_RE = r"how many|\bcount|number of"
"""A task is a COUNT task when it matches this (case-insensitive); else it is a SEARCH task.
The same pattern is embedded into the generated code, so root and leaf always agree."""

_SEARCH_RE = re.compile(
    r"(secret code|magic number|needle)[^0-9A-Za-z\n]*(is|:|=)?[ \t]*([A-Za-z0-9-]+)", re.IGNORECASE
)
_SEARCH_KEYWORDS = ("secret code", "magic number", "needle")
_AFTER_PHRASE_RE = re.compile(r"[^0-9A-Za-z\n]*(?:(?:is|:|=)(?![0-9A-Za-z]))?[^0-9A-Za-z\n]*([A-Za-z0-9-]+)")
_QUOTED_RE = re.compile(r'"([^"\n]+)"')
_TASK_LINE_RE = re.compile(r"^[ \t>*_]*Task:[ \t]*(.+?)[ \t]*$", re.MULTILINE)
NOT_FOUND = "NOT FOUND"

_STEP1_TEMPLATE = """\
import re

task = {task!r}
data = context
# A child RLM's context is its parent's request: "TASK: ...\\n\\nTEXT:\\n...". Unwrap it.
if isinstance(data, str) and data.startswith("TASK: ") and "\\n\\nTEXT:\\n" in data:
    head, data = data.split("\\n\\nTEXT:\\n", 1)
    task = head[len("TASK: "):]


def grep_lines(text, task):
    # Keep only the lines that can matter: those with the quoted phrase, or with every
    # keyword of the task. Exact, cheap code first; the sub-models see far less text.
    m = re.search(r'"([^"\\n]+)"', task)
    if m:
        keys, hay = [m.group(1)], text
    else:
        stop = {{"what", "which", "where", "find", "there", "that", "this", "with", "does", "from", "have"}}
        keys = [w.lower() for w in re.findall(r"[A-Za-z]{{4,}}", task) if w.lower() not in stop] or [""]
        hay = text.lower()
        if len(hay) != len(text):
            return text
    out, pos = [], 0
    while True:
        pos = hay.find(keys[0], pos)
        if pos < 0:
            return "\\n".join(out)
        start = hay.rfind("\\n", 0, pos) + 1
        end = hay.find("\\n", pos)
        end = len(hay) if end < 0 else end
        if all(k in hay[start:end] for k in keys[1:]):
            out.append(text[start:end])
        pos = end + 1


if {grep_first!r} and isinstance(data, str) and len(data) > 100_000:
    before = len(data)
    data = grep_lines(data, task)
    print(f"grep kept {{len(data)}} of {{before}} chars")


def split_pieces(data, n=4, small=2000, max_piece={max_piece!r}):
    # Cut next to newlines found by find(): no per-line list, so 100 MB stays cheap.
    # At least n pieces, more when a piece would exceed what a sub-model can read.
    if isinstance(data, str):
        if len(data) < small:
            return [data]
        n = max(n, -(-len(data) // max_piece))
        cuts = [0]
        for i in range(1, n):
            pos = data.find("\\n", max(cuts[-1], len(data) * i // n))
            if pos < 0:
                break
            if pos + 1 > cuts[-1] and pos + 1 < len(data):
                cuts.append(pos + 1)
        cuts.append(len(data))
        return [data[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    if isinstance(data, (list, tuple)):
        items = [x if isinstance(x, str) else repr(x) for x in data]
        if not items:
            return [""]
        k = max(1, min(n, len(items)))
        size = -(-len(items) // k)
        return ["\\n".join(items[i:i + size]) for i in range(0, len(items), size)]
    return [str(data)]


pieces = split_pieces(data)
prompts = ["TASK: " + task + "\\n\\nTEXT:\\n" + piece for piece in pieces]
answers = llm_query_batched(prompts)
if re.search({count_re!r}, task, re.IGNORECASE):
    total = 0
    for a in answers:
        m = re.search(r"-?\\d+", str(a))
        if m:
            total += int(m.group())
    answer = str(total)
else:
    answer = {not_found!r}
    for a in answers:
        a = str(a).strip()
        if a and a.upper() != {not_found!r}:
            answer = a
            break
print(f"{{len(pieces)}} pieces of {{sum(len(p) for p in pieces)}} chars; answers: {{str(answers)[:300]}}")
print("answer:", answer)
"""


MAX_PIECE = 2_000_000
"""Characters per sub-call at most: about what a long-context sub-model reads at once."""


def build_step1_code(task: str, *, grep_first: bool = False, max_piece: int = MAX_PIECE) -> str:
    """The first cell of a scripted RLM node: split ``context``, fan out, combine into ``answer``.

    Everything that depends on ``context`` is decided at run time inside the sandbox (the
    policy never sees the context), which is also how a real root model has to work. With
    ``grep_first`` the node first keeps only the lines that mention the task's phrase or
    keywords (what capable models do on needle and counting tasks), then fans out.
    """
    return _STEP1_TEMPLATE.format(
        task=task, count_re=COUNT_TASK_RE, not_found=NOT_FOUND, grep_first=grep_first, max_piece=max_piece
    )


def _content_text(content: Any) -> str:
    """Message content as text: OpenAI allows a list of typed parts as well as a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return "" if content is None else str(content)


def _messages(request: dict[str, Any]) -> list[dict[str, str]]:
    raw = request.get("messages")
    if not isinstance(raw, list):
        return []
    out = []
    for m in raw:
        if isinstance(m, dict):
            out.append({"role": str(m.get("role", "")), "content": _content_text(m.get("content"))})
    return out


def _is_rlm_node(messages: list[dict[str, str]]) -> bool:
    return any(m["role"] == "system" and "```repl" in m["content"] for m in messages)


def _find_task(messages: list[dict[str, str]]) -> str:
    """The task from the engine's first user message (``Task: ...``), else from any message."""
    users = [m for m in messages if m["role"] == "user"]
    ordered = users[:1] + [m for m in messages if m not in users[:1]]
    for m in ordered:
        match = _TASK_LINE_RE.search(m["content"])
        if match:
            return match.group(1)
    return ""


def _rlm_node_reply(messages: list[dict[str, str]], grep_first: bool = False) -> str:
    step = 1 + sum(1 for m in messages if m["role"] == "assistant")
    if step == 1:
        task = _find_task(messages)
        return (
            "The input is too large to read at once, so I will split `context` into pieces, "
            "ask a sub-model about each piece in parallel, and combine the answers.\n\n"
            f"```repl\n{build_step1_code(task, grep_first=grep_first)}```\n"
        )
    return "The combined answer is stored in the variable `answer`.\n\nFINAL_VAR(answer)\n"


def _split_prompt(prompt: str) -> tuple[str, str]:
    """(task, text) of a ``TASK: ...\\n\\nTEXT:\\n...`` prompt; an unknown task otherwise."""
    start = prompt.find("TASK: ")
    if start < 0 or "TEXT:" not in prompt[start:]:
        return "", prompt
    rest = prompt[start + len("TASK: ") :]
    sep = rest.find("\n\nTEXT:\n")
    if sep >= 0:
        return rest[:sep].strip(), rest[sep + len("\n\nTEXT:\n") :]
    sep = rest.find("TEXT:")
    return rest[:sep].strip(), rest[sep + len("TEXT:") :].lstrip("\n")


def answer_leaf(prompt: str) -> str:
    """What the scripted sub-model answers to a plain prompt (also usable without the server)."""
    task, text = _split_prompt(prompt)
    quoted = _QUOTED_RE.search(task)
    if task and re.search(COUNT_TASK_RE, task, re.IGNORECASE):
        if quoted:
            phrase = quoted.group(1)
            return str(sum(1 for line in text.splitlines() if phrase in line))
        return str(sum(1 for line in text.splitlines() if line.strip()))
    if quoted:
        phrase = quoted.group(1)
        pos = text.find(phrase)
        if pos >= 0:
            end = text.find("\n", pos)
            after = text[pos + len(phrase) : end if end >= 0 else len(text)]
            match = _AFTER_PHRASE_RE.match(after)
            if match:
                return match.group(1)
    return _search_keywords(text)


def _search_keywords(text: str) -> str:
    """The value after the first secret code / magic number / needle mention, or NOT FOUND.

    Keywords are located with ``str.find`` on a lowered copy (C speed: a 25 MB piece takes
    tens of milliseconds), and the regex runs only on the lines that mention one.
    """
    lowered = text.lower()
    if len(lowered) != len(text):  # some non-ASCII letters lower to two characters
        match = _SEARCH_RE.search(text)
        return match.group(3) if match else NOT_FOUND
    starts = {kw: lowered.find(kw) for kw in _SEARCH_KEYWORDS}
    while True:
        live = [(pos, kw) for kw, pos in starts.items() if pos >= 0]
        if not live:
            return NOT_FOUND
        pos, kw = min(live)
        line_start = text.rfind("\n", 0, pos) + 1
        line_end = text.find("\n", pos)
        match = _SEARCH_RE.search(text, line_start, line_end if line_end >= 0 else len(text))
        if match:
            return match.group(3)
        starts[kw] = lowered.find(kw, pos + 1)


def rlm_policy(request: dict[str, Any]) -> Reply:
    """A deterministic stand-in for both the root model and the sub-model of an RLM run.

    RLM nodes are recognised by the engine's system prompt (it teaches ```repl blocks); the
    step is the number of assistant turns so far. Anything else is a leaf sub-call.
    """
    return _policy(request, grep_first=False)


def grep_first_policy(request: dict[str, Any]) -> Reply:
    """Like :func:`rlm_policy`, but the root filters ``context`` with code before it fans out."""
    return _policy(request, grep_first=True)


def _policy(request: dict[str, Any], *, grep_first: bool) -> Reply:
    messages = _messages(request)
    if _is_rlm_node(messages):
        return _rlm_node_reply(messages, grep_first)
    users = [m["content"] for m in messages if m["role"] == "user"]
    prompt = users[-1] if users else (messages[-1]["content"] if messages else "")
    return answer_leaf(prompt)


# --------------------------------------------------------------------------- the server


class RequestLog:
    """What the server received, readable from tests while requests are still arriving."""

    def __init__(self, keep: int = 64) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._bodies: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._connections = 0

    def record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._count += 1
            self._bodies.append(body)

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


def _estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


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

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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
        owner.requests.record(body)
        if owner.latency_s > 0:
            time.sleep(owner.latency_s)
        try:
            reply = owner.policy(body)
        except Exception as exc:  # a broken policy is a 500, visible to the test, not a hang
            self._send_json(500, error_body(500, f"policy failed: {type(exc).__name__}: {exc}"))
            return
        if isinstance(reply, HTTPReply):
            self._send_json(reply.status, reply.body, reply.headers)
            return
        self._answer(body, str(reply))

    def _answer(self, body: dict[str, Any], content: str) -> None:
        model = str(body.get("model") or self.server.owner.served_name)
        prompt_chars = sum(len(m["content"]) for m in _messages(body))
        usage = {
            "prompt_tokens": max(1, (prompt_chars + 3) // 4),
            "completion_tokens": _estimate_tokens(content),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
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
                        "finish_reason": "stop",
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

    Use it as a context manager; point LiteLLM at it with ``model=server.model_name``,
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

    @property
    def url(self) -> str:
        """The api_base to give LiteLLM (OpenAI style, ending in /v1)."""
        if self._server is None:
            raise RuntimeError("the scripted model server is not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model_name(self) -> str:
        """The LiteLLM model string: the OpenAI-compatible provider, our served name."""
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


# --------------------------------------------------------------------------- log generator

DEFAULT_NEEDLE = "The secret code is QX-4417"
DISK_PHRASE = "ERROR disk"


@dataclass
class LogStats:
    """The truth about a generated log, so a run's answer can be checked exactly."""

    path: Path | None
    size_bytes: int
    lines: int
    disk_errors: int
    needle: str | None
    needle_line: int | None = None
    """1-based line number of the needle, or None."""
    text: str | None = field(default=None, repr=False)
    """The log itself when no path was given (small logs for tests)."""


_SERVICES = ["api-gateway", "auth", "billing", "search", "storage", "scheduler", "mailer", "cache"]
_PATHS = [
    "/api/v1/users",
    "/api/v1/orders",
    "/api/v1/search",
    "/api/v1/invoices",
    "/healthz",
    "/api/v2/items",
]
_METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE"]


def _body_pool(rng_seed: int, size: int = 1024) -> list[str]:
    """Pre-rendered ``LEVEL service message`` bodies: per-line work is then one f-string.

    None of them contains ``ERROR disk`` or any needle phrase, so the truth stays exact.
    """
    import random

    rng = random.Random(rng_seed)
    pool: list[str] = []
    for _ in range(size):
        service = rng.choice(_SERVICES)
        r = rng.random()
        if r < 0.55:
            status = rng.choice([200, 200, 200, 201, 204, 304, 404])
            body = (
                f"INFO  {service:<11} {rng.choice(_METHODS)} {rng.choice(_PATHS)}/{rng.randrange(1, 99999)} "
                f"{status} in {rng.randrange(1, 900)}ms"
            )
        elif r < 0.70:
            body = f"DEBUG {service:<11} cache lookup key=user:{rng.randrange(1, 10**6)} hit={rng.choice(['true', 'false'])}"
        elif r < 0.80:
            body = f"INFO  {service:<11} disk check ok: /dev/sd{rng.choice('abc')}1 {rng.randrange(10, 80)}% used"
        elif r < 0.90:
            body = (
                f"WARN  {service:<11} slow query on table {rng.choice(['orders', 'users', 'events'])} "
                f"took {rng.randrange(1000, 9000)}ms"
            )
        elif r < 0.95:
            body = f"WARN  {service:<11} disk usage at {rng.randrange(85, 99)}% on /var/lib/{service}"
        else:
            body = (
                f"ERROR {service:<11} database connection reset by peer "
                f"(pool={rng.randrange(1, 32)}, retry={rng.randrange(1, 5)})"
            )
        pool.append(body)
    return pool


def _iter_log_chunks(
    size_bytes: int, seed: int, needle: str | None, error_every: int, stats: LogStats
) -> Iterator[str]:
    """Yield the log in ~1 MB chunks, updating ``stats`` as lines are produced."""
    import datetime
    import random

    rng = random.Random(seed)
    pool = _body_pool(seed)
    mask = len(pool) - 1
    start = datetime.datetime(2024, 3, 1, tzinfo=datetime.UTC)
    needle_at = int(size_bytes * 0.7) if needle is not None else -1
    written = 0
    lines = 0
    disk_errors = 0
    ms = 0
    last_sec = -1
    prefix = ""
    buf: list[str] = []
    buf_len = 0
    devices = ["/dev/sdb1", "/dev/sdc1", "/dev/nvme0n1p2"]
    bits = rng.getrandbits
    while written < size_bytes or (needle_at >= 0 and stats.needle_line is None):
        r = bits(40)
        ms += 1 + (r & 0xFF)
        sec = ms // 1000
        if sec != last_sec:
            last_sec = sec
            prefix = (start + datetime.timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")
        lines += 1
        rid = (r >> 8) & 0xFFFFFFFF
        if needle_at >= 0 and stats.needle_line is None and written >= needle_at:
            line = f"{prefix}.{ms % 1000:03d}Z [req-{rid:08x}] NOTICE vault       {needle}\n"
            stats.needle_line = lines
            written += len(line.encode()) - len(line)  # the needle may be non-ASCII
        elif lines % error_every == 0:
            line = (
                f"{prefix}.{ms % 1000:03d}Z [req-{rid:08x}] {DISK_PHRASE} failure on {devices[rid % 3]}: "
                f"I/O error, sector {rid % 9999991}\n"
            )
            disk_errors += 1
        else:
            line = f"{prefix}.{ms % 1000:03d}Z [req-{rid:08x}] {pool[rid & mask]}\n"
        buf.append(line)
        n = len(line)  # generated lines are ASCII: characters == bytes
        written += n
        buf_len += n
        if buf_len >= 1 << 20:
            yield "".join(buf)
            buf.clear()
            buf_len = 0
    if buf:
        yield "".join(buf)
    stats.lines = lines
    stats.size_bytes = written
    stats.disk_errors = disk_errors


def generate_log(
    path: str | Path | None,
    size_bytes: int,
    *,
    seed: int = 0,
    needle: str | None = DEFAULT_NEEDLE,
    error_every: int = 251,
) -> LogStats:
    """Write a deterministic, realistic-looking service log of about ``size_bytes``.

    Every ``error_every``-th line is an ``ERROR disk`` failure (no other line contains that
    phrase) and the needle, if any, sits on one line about 70% of the way in. With a path the
    log is streamed to disk in chunks (100 MB never sits in memory); without one it is
    returned as ``stats.text``. Same arguments, same bytes.
    """
    if error_every < 1:
        raise ValueError("error_every must be >= 1")
    stats = LogStats(
        path=Path(path) if path is not None else None, size_bytes=0, lines=0, disk_errors=0, needle=needle
    )
    chunks = _iter_log_chunks(max(0, size_bytes), seed, needle, error_every, stats)
    if path is None:
        stats.text = "".join(chunks)
        return stats
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for chunk in chunks:
            f.write(chunk)
    return stats
