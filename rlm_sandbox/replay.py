"""Replay a recorded run against its recorded model responses, and say where it diverges.

A trace's ``lm_call`` events carry the digest of each request and the whole response, so a
run can be played again with no model: a local OpenAI-compatible server answers each
request whose digest was recorded with the recorded text, through the real LiteLLM path,
while the code runs in fresh containers. Whatever the code does differently (another
input, another image, a nondeterministic cell) changes the next request, so the first
divergence is found exactly.

One part of a request legitimately differs between two runs of the same thing: the
``Budgets:`` line of a node's system prompt (calls, tokens, seconds left when the node
started) depends on timing and on the order of parallel siblings. The engine's own request
digest leaves that line out, so the same request matches exactly in both runs.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.trace.writer import check_event
from rlm_sandbox.untrusted import TRACE_DEPTH, TRACE_LINE_CHARS, loads

DIVERGED_REPLY = "FINAL(replay diverged)"
"""What an unknown request gets: a final answer, so the replayed node (and run) ends soon."""

EXCERPT = 300
_DEPTH = re.compile(r"depth (\d{1,4}) of at most")  # bounded: int() of a long run is quadratic


class TraceNotReplayable(ConfigError):
    """The trace cannot drive a replay (missing, not a trace, or from an older version)."""


def excerpt(text: Any, limit: int = EXCERPT) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def request_messages(request: dict[str, Any]) -> list[dict[str, str]]:
    """The messages of an OpenAI request as the engine built them (role and text only).

    The engine digests ``[{role, content}]``; a client may add keys or send content as a
    list of parts, so the server side reduces to the same shape before digesting.
    """
    out = []
    for m in request.get("messages") or []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(
                p.get("text", "") if isinstance(p, dict) else str(p) for p in content if p is not None
            )
        out.append({"role": str(m.get("role", "")), "content": "" if content is None else str(content)})
    return out


def digest(messages: list[dict[str, str]]) -> str:
    """The engine's own :func:`rlm_sandbox.rlm.request_digest`, so the two cannot drift."""
    from rlm_sandbox.rlm.digest import request_digest

    return request_digest(messages)


# ---------------------------------------------------------------- the recording


@dataclass(frozen=True)
class RecordedCall:
    index: int  # position among the recording's lm_call events
    node: str
    depth: int
    purpose: str
    digest: str
    response: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Recording:
    """What a replay needs of a trace: the run's settings and its model calls by request."""

    path: Path
    events: list[dict[str, Any]]
    start: dict[str, Any]
    calls: list[RecordedCall]
    by_digest: dict[str, list[int]]

    @property
    def task(self) -> str:
        return str(self.start.get("task") or "")

    @property
    def end(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == "run_end"), None)


def load_recording(path: str | Path) -> Recording:
    """Read a trace for replay; :class:`TraceNotReplayable` says why one cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise TraceNotReplayable(f"trace not found: {path}", hint="give the file written by --trace")
    events: list[dict[str, Any]] = []
    lineno = 0
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                lineno += 1
                if line.strip():
                    event = loads(line, max_chars=TRACE_LINE_CHARS, max_depth=TRACE_DEPTH, constants=True)
                    problem = check_event(event)
                    if problem is not None:
                        raise ValueError(f"an event that is not one: {problem}")
                    events.append(event)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TraceNotReplayable(
            f"{path} is not a trace (line {lineno}: {exc})",
            hint="give the JSON-lines file written by --trace",
        ) from None
    start = next((e for e in events if e.get("event") == "run_start"), None)
    if start is None:
        raise TraceNotReplayable(f"{path} has no run_start event", hint="give the file written by --trace")
    # A request the response cache answered is recorded as lm_cache_hit: an answer all the same.
    raw = [e for e in events if e.get("event") in ("lm_call", "lm_cache_hit")]
    if not raw:
        raise TraceNotReplayable(
            f"{path} records no model call, so there is nothing to replay",
            hint="the run stopped before its first model call; run it again instead",
        )
    if any("request_sha256" not in e or "response" not in e for e in raw):
        raise TraceNotReplayable(
            f"{path} is from an older version of rlm-sandbox: its model calls carry no request "
            "digests or responses, so it cannot be replayed",
            hint="record the run again with this version (--trace FILE), then replay that trace",
        )
    calls = [
        RecordedCall(
            index=i,
            node=str(e.get("node")),
            depth=int(e.get("depth") or 0),
            purpose=str(e.get("purpose") or ""),
            digest=str(e["request_sha256"]),
            response=str(e["response"]),
            prompt_tokens=int(e.get("prompt_tokens") or 0),
            completion_tokens=int(e.get("completion_tokens") or 0),
        )
        for i, e in enumerate(raw)
    ]
    by_digest: dict[str, list[int]] = collections.defaultdict(list)
    for call in calls:
        by_digest[call.digest].append(call.index)
    return Recording(path, events, start, calls, dict(by_digest))


# ---------------------------------------------------------------- the policy


@dataclass
class Served:
    """One request the replay server answered, and from what."""

    number: int  # 1-based, in arrival order
    digest: str  # of the request as the replay sent it
    call: int | None  # the recorded lm_call that answered it; None: unknown request
    how: str  # "exact" or "unknown"
    depth: int | None
    step: int
    last_user: str


class ReplayPolicy:
    """A :data:`~rlm_sandbox.testing.Policy` answering from a recording.

    Identical requests get their recorded responses in recorded order (the last repeats);
    an unknown request is a divergence: it is logged and answered with ``FINAL(...)`` so
    the replay ends instead of wandering on with made-up answers.
    """

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.served: list[Served] = []
        self._used: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> Any:
        from rlm_sandbox.testing import HTTPReply

        messages = request_messages(request)
        own = digest(messages)
        with self._lock:
            found, how = self._match(messages, own)
            users = [m["content"] for m in messages if m["role"] == "user"]
            depth = _request_depth(messages)
            self.served.append(
                Served(
                    number=len(self.served) + 1,
                    digest=own,
                    call=None if found is None else found.index,
                    how=how,
                    depth=depth,
                    step=1 + sum(1 for m in messages if m["role"] == "assistant"),
                    last_user=excerpt(users[-1] if users else ""),
                )
            )
        text = DIVERGED_REPLY if found is None else found.response
        prompt = found.prompt_tokens if found else max(1, sum(len(m["content"]) for m in messages) // 4)
        completion = found.completion_tokens if found else 1
        # The recorded usage, so token budgets run down as they did in the recording.
        return HTTPReply(200, _completion_body(request, text, prompt, completion))

    def _take(self, key: str) -> RecordedCall:
        indexes = self.recording.by_digest[key]
        n = self._used[key]
        self._used[key] += 1
        return self.recording.calls[indexes[min(n, len(indexes) - 1)]]

    def _match(self, messages: list[dict[str, str]], own: str) -> tuple[RecordedCall | None, str]:
        # The engine's digest leaves out the prompt's volatile budget line, so the same
        # request in a replay has the same digest as in the recording: exact or unknown.
        if own in self.recording.by_digest:
            return self._take(own), "exact"
        return None, "unknown"


def _request_depth(messages: list[dict[str, str]]) -> int | None:
    if messages and messages[0]["role"] == "system":
        m = _DEPTH.search(messages[0]["content"])
        if m:
            return int(m.group(1))
    return None


def _completion_body(request: dict[str, Any], text: str, prompt: int, completion: int) -> dict[str, Any]:
    import time
    import uuid

    return {
        "id": f"chatcmpl-replay-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.get("model") or "replay"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


# ---------------------------------------------------------------- comparing two traces


@dataclass
class Divergence:
    """One place where the replay did not do what the recording did."""

    kind: str  # request_unknown, cell_code, cell_output, cell_missing, cell_extra,
    #            node_answer, node_missing, node_extra, cells_per_depth, run_answer, run_status
    detail: str
    node: str | None = None  # the recorded node
    replay_node: str | None = None
    depth: int | None = None
    step: int | None = None
    index: int | None = None
    recorded: str | None = None
    replayed: str | None = None
    position: int = 1 << 62  # where the replay trace shows it: orders "first"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("position")
        return out


@dataclass
class ReplayReport:
    """The verdict of a replay; ``to_json()`` is what ``replay --json`` prints."""

    identical: bool
    divergences: list[Divergence]
    answer_recorded: str | None
    answer_replayed: str | None
    status_recorded: str | None
    status_replayed: str | None
    trace: str | None
    recorded_trace: str
    counts: dict[str, int]
    containers_recorded: list[str]
    containers_replayed: list[str]

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None

    @property
    def exit_code(self) -> int:
        return 0 if self.identical else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "divergences": [d.to_json() for d in self.divergences],
            "first_divergence": self.first.to_json() if self.first else None,
            "answer_recorded": self.answer_recorded,
            "answer_replayed": self.answer_replayed,
            "status_recorded": self.status_recorded,
            "status_replayed": self.status_replayed,
            "counts": dict(self.counts),
            "trace": self.trace,
            "recorded_trace": self.recorded_trace,
        }


@dataclass
class _Node:
    id: str
    depth: int
    parent: str | None = None
    container: str | None = None
    cells: dict[tuple[int, int], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    answer: str | None = None
    status: str | None = None
    end: int = 1 << 62


def _nodes(events: list[dict[str, Any]]) -> dict[str, _Node]:
    nodes: dict[str, _Node] = {}
    for i, e in enumerate(events):
        kind, nid = e.get("event"), e.get("node")
        if nid is None or kind not in ("node_begin", "node_start", "cell", "node_end"):
            continue
        node = nodes.setdefault(nid, _Node(nid, int(e.get("depth") or 0), e.get("parent")))
        if kind == "node_start":
            node.container = e.get("container")
        elif kind == "cell":
            node.cells[(int(e.get("step") or 0), int(e.get("index") or 0))] = (i, e)
        elif kind == "node_end":
            node.answer, node.status, node.end = e.get("answer"), e.get("status"), i
    return nodes


def _cell_key(cell: dict[str, Any]) -> tuple[str, str, str]:
    return (str(cell.get("code") or ""), str(cell.get("output") or ""), str(cell.get("error") or ""))


def compare(
    recording: Recording, replayed: list[dict[str, Any]], served: list[Served], trace: str | None = None
) -> ReplayReport:
    """Old run against new: nodes are paired by the recorded calls that answered them.

    Node ids follow creation order, which parallel fan-out shuffles; the recorded response
    each replayed request got names the recorded node it belongs to, which does not.
    """
    old, new = _nodes(recording.events), _nodes(replayed)
    divergences: list[Divergence] = []
    pending: dict[str, collections.deque[Served]] = collections.defaultdict(collections.deque)
    for s in served:
        pending[s.digest].append(s)
    # replay node -> recorded node; the roots always correspond
    pairs: dict[str, str] = {"root": "root"} if "root" in old and "root" in new else {}
    unknown_nodes: set[str] = set()
    turns: collections.Counter[str] = collections.Counter()  # model turns per replayed node
    for i, e in enumerate(replayed):
        if e.get("event") != "lm_call":
            continue
        rnode = str(e.get("node"))
        if e.get("purpose") != "sub_call":
            turns[rnode] += 1
        queue = pending.get(str(e.get("request_sha256")))
        if not queue:
            continue
        s = queue.popleft()
        if s.call is None:
            unknown_nodes.add(rnode)
            divergences.append(
                Divergence(
                    "request_unknown",
                    f"replayed node {rnode} sent a model request the recording never made "
                    f"(request {s.number}, {e.get('purpose')}); it was answered {DIVERGED_REPLY}",
                    node=pairs.get(rnode),
                    replay_node=rnode,
                    depth=e.get("depth"),
                    step=turns[rnode],  # a sub-call belongs to the step whose cell made it
                    replayed=s.last_user,
                    position=i,
                )
            )
        else:
            pairs.setdefault(rnode, recording.calls[s.call].node)
    for queue in pending.values():  # answered, but no lm_call written (the run was cut short)
        for s in queue:
            if s.call is None:
                divergences.append(
                    Divergence(
                        "request_unknown",
                        f"request {s.number} was not in the recording",
                        depth=s.depth,
                        step=s.step,
                        replayed=s.last_user,
                    )
                )
    cells_differing = 0
    for rnode, onode in pairs.items():
        a, b = old.get(onode), new.get(rnode)
        if a is None or b is None:
            continue
        cells_differing += _compare_cells(a, b, divergences)
        if (a.answer, a.status) != (b.answer, b.status):
            divergences.append(
                Divergence(
                    "node_answer",
                    f"node {onode} answered differently"
                    + (
                        f" ({a.status} in the recording, {b.status} in the replay)"
                        if a.status != b.status
                        else ""
                    ),
                    node=onode,
                    replay_node=rnode,
                    depth=a.depth,
                    recorded=excerpt(a.answer),
                    replayed=excerpt(b.answer),
                    position=b.end,
                )
            )
    end = len(replayed)
    matched = set(pairs.values())
    for onode, a in old.items():
        if onode not in matched and a.container is not None:
            divergences.append(
                Divergence(
                    "node_missing",
                    f"recorded node {onode} (depth {a.depth}) has no counterpart in the replay",
                    node=onode,
                    depth=a.depth,
                    recorded=excerpt(a.answer),
                    position=end,
                )
            )
    for rnode, b in new.items():
        if rnode not in pairs and rnode not in unknown_nodes and b.container is not None:
            divergences.append(
                Divergence(
                    "node_extra",
                    f"replayed node {rnode} (depth {b.depth}) has no counterpart in the recording",
                    replay_node=rnode,
                    depth=b.depth,
                    replayed=excerpt(b.answer),
                    position=b.end,
                )
            )
    per_depth = _cells_per_depth(old, new)
    if per_depth and not any(d.kind.startswith("cell_") for d in divergences):
        divergences.append(
            Divergence(
                "cells_per_depth",
                f"the cells (code, output) differ at depth {per_depth[0]}",
                depth=per_depth[0],
                position=end,
            )
        )
    old_end = recording.end or {}
    new_end = next((e for e in reversed(replayed) if e.get("event") == "run_end"), {})
    if old_end.get("status") != new_end.get("status"):
        divergences.append(
            Divergence(
                "run_status",
                f"the run ended {new_end.get('status')}, the recording {old_end.get('status')}",
                recorded=excerpt(old_end.get("error")),
                replayed=excerpt(new_end.get("error")),
                position=end + 1,
            )
        )
    if _answer_key(old_end) != _answer_key(new_end):
        divergences.append(
            Divergence(
                "run_answer",
                "the run's final answer differs",
                recorded=excerpt(old_end.get("answer")),
                replayed=excerpt(new_end.get("answer")),
                position=end + 1,
            )
        )
    divergences.sort(key=lambda d: d.position)
    how = collections.Counter(s.how for s in served)
    counts = {
        "requests": len(served),
        "matched_exact": how["exact"],
        "unknown_requests": how["unknown"],
        "recorded_calls": len(recording.calls),
        "nodes_recorded": sum(1 for n in old.values() if n.container is not None),
        "nodes_replayed": sum(1 for n in new.values() if n.container is not None),
        "cells_recorded": sum(len(n.cells) for n in old.values()),
        "cells_replayed": sum(len(n.cells) for n in new.values()),
        "cells_differing": cells_differing,
        "divergences": len(divergences),
    }
    return ReplayReport(
        identical=not divergences,
        divergences=divergences,
        answer_recorded=old_end.get("answer"),
        answer_replayed=new_end.get("answer"),
        status_recorded=old_end.get("status"),
        status_replayed=new_end.get("status"),
        trace=trace,
        recorded_trace=str(recording.path),
        counts=counts,
        containers_recorded=[n.container for n in old.values() if n.container],
        containers_replayed=[n.container for n in new.values() if n.container],
    )


def _answer_key(end: dict[str, Any]) -> Any:
    """What identifies a run's answer in its run_end: the digest when the answer was cut."""
    digest = end.get("answer_sha256")
    if end.get("answer_truncated") and isinstance(digest, str):
        return ("sha256", digest)
    answer = end.get("answer")
    if isinstance(answer, str) and len(answer) >= 64 * 1024:
        import hashlib

        return ("sha256", hashlib.sha256(answer.encode("utf-8", "surrogatepass")).hexdigest())
    return answer


def _compare_cells(a: _Node, b: _Node, out: list[Divergence]) -> int:
    """Append the differences between two paired nodes' cells; returns how many differ."""
    differing = 0
    for key in sorted(set(a.cells) | set(b.cells)):
        old, new = a.cells.get(key), b.cells.get(key)
        common = dict(node=a.id, replay_node=b.id, depth=a.depth, step=key[0], index=key[1])
        where = f"node {a.id} step {key[0]} cell {key[1]}"
        if new is None:
            assert old is not None
            out.append(
                Divergence(
                    "cell_missing",
                    f"{where} ran in the recording but not in the replay",
                    recorded=excerpt(old[1].get("code")),
                    position=b.end,
                    **common,
                )
            )
        elif old is None:
            out.append(
                Divergence(
                    "cell_extra",
                    f"{where} ran in the replay only",
                    replayed=excerpt(new[1].get("code")),
                    position=new[0],
                    **common,
                )
            )
        elif old[1].get("code") != new[1].get("code"):
            out.append(
                Divergence(
                    "cell_code",
                    f"{where} ran other code",
                    recorded=excerpt(old[1].get("code")),
                    replayed=excerpt(new[1].get("code")),
                    position=new[0],
                    **common,
                )
            )
        elif _cell_key(old[1]) != _cell_key(new[1]):
            out.append(
                Divergence(
                    "cell_output",
                    f"{where}: the same code printed something else",
                    recorded=excerpt(_shown(old[1])),
                    replayed=excerpt(_shown(new[1])),
                    position=new[0],
                    **common,
                )
            )
        else:
            continue
        differing += 1
    return differing


def _shown(cell: dict[str, Any]) -> str:
    error = cell.get("error")
    return str(cell.get("output") or "") + (f"\n[error] {error}" if error else "")


def _cells_per_depth(old: dict[str, _Node], new: dict[str, _Node]) -> list[int]:
    """Depths whose multisets of (code, output) cells differ, whatever the node pairing."""

    def count(nodes: dict[str, _Node]) -> dict[int, collections.Counter]:
        out: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for n in nodes.values():
            out[n.depth].update(_cell_key(e) for _, e in n.cells.values())
        return out

    a, b = count(old), count(new)
    return sorted(d for d in set(a) | set(b) if a.get(d) != b.get(d))


# ---------------------------------------------------------------- running a replay


_SHAPE = {"depth": "--depth", "max_steps": "--max-steps"}
"""Settings that shape the prompts (the system prompt states them): a replay at other
values diverges at its first request, so these are the only ones a trace may supply."""


def replay_config(
    recording: Recording,
    base: Any,
    *,
    api_base: str,
    trace: str,
    origin: Callable[[str], str] | None = None,
) -> Any:
    """The replay's configuration: everything from ``base`` (the user's flags and settings,
    with the defaults of ``run``), only the recorded answers from the trace.

    A trace is untrusted input: a crafted one must not choose the tenant, raise a budget,
    lift the wall-time limit or the container cap. Its ``limits`` and ``tenant`` are
    ignored. ``depth`` and ``max_steps`` shape the prompts, so the recorded values are used
    when they fit the user's own settings: a value the user gave as a flag wins; one from
    their settings (``origin`` says where each came from) is a ceiling the recording may
    not exceed; and the recorded depth must fit the user's container caps (every level of
    the recursion needs a container), so a deeper trace cannot start more containers at
    once than the user's ``max_containers`` allows. Depth on its own spends nothing: the
    containers, nodes, calls, tokens, cost and time it could use are all the user's limits.
    """
    from pydantic import ValidationError

    where = origin or (lambda _name: "default")
    values = base.model_dump()
    for name, flag in _SHAPE.items():
        recorded = _recorded_int(recording.start, name)
        source = where(name)
        if recorded is None or source.startswith("flag"):
            continue
        ceiling = getattr(base, name)
        if source != "default" and recorded > ceiling:
            raise TraceNotReplayable(
                f"the trace was recorded with {name} {recorded}; your settings allow at most "
                f"{ceiling} ({source})",
                hint=f"pass {flag} {recorded} to replay it at the recorded {name}",
            )
        values[name] = recorded
    caps = [("max_containers", base.max_containers)]
    tenant = base.tenants.get(base.tenant)
    if tenant is not None and tenant.max_containers is not None:
        caps.append((f"tenant {base.tenant!r} max_containers", tenant.max_containers))
    for label, cap in caps:
        if values["depth"] > cap:
            raise TraceNotReplayable(
                f"the replay would run at depth {values['depth']}, but your {label} is {cap}: "
                "every level of the recursion needs a container of its own",
                hint=f"raise --max-containers to at least {values['depth']}, or pass --depth "
                "(the replay then diverges at its first request)",
            )
    # Every model call goes to the local replay server, whatever models the settings name.
    # ... and none is answered from a response cache: each must be compared.
    values |= {"api_base": api_base, "trace": trace, "depth_models": {}, "lm_cache": None}
    values["sandbox"] = values["sandbox"] | {"backend": "docker"}
    try:
        return type(base).model_validate(values)
    except ValidationError as exc:
        raise TraceNotReplayable(f"the trace cannot be replayed with these settings: {exc}") from None


def _recorded_int(start: dict[str, Any], name: str) -> int | None:
    """A shape setting of the recorded run, if it is a plain integer within its bounds."""
    from rlm_sandbox.rlm.config import RLMConfig

    value = start.get(name)
    if type(value) is not int:
        return None
    field = RLMConfig.model_fields[name]
    low = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), 1)
    high = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
    if value < low or (high is not None and value > high):
        raise TraceNotReplayable(
            f"the trace's {name} ({value}) is outside {low}..{high}",
            hint="give a trace written by --trace",
        )
    return value


def run_replay(
    recording: Recording,
    context: Any,
    *,
    trace: str,
    base_config: Any = None,
    origin: Callable[[str], str] | None = None,
    task: str | None = None,
    listeners: tuple[Any, ...] = (),
) -> ReplayReport:
    """Play the recording again in fresh containers and compare; needs no model and no key."""
    from rlm_sandbox.rlm.api import RLM
    from rlm_sandbox.rlm.config import RLMConfig
    from rlm_sandbox.testing import ScriptedModelServer
    from rlm_sandbox.trace.writer import read_trace

    policy = ReplayPolicy(recording)
    with ScriptedModelServer(policy, served_name="replay") as server:
        config = replay_config(
            recording, base_config or RLMConfig(), api_base=server.url, trace=trace, origin=origin
        )
        rlm = RLM(model=server.model_name, config=config, api_key=server.api_key)
        rlm.listeners.extend(listeners)
        rlm.run(context=context, task=task or recording.task)
    return compare(recording, read_trace(trace), policy.served, trace=trace)
