"""The unit tests' harness over the in-memory seam: an RLM on ``FakeBackend`` with a
``ScriptedClient``, every event it emitted, and checks of the run lifecycle's events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm_sandbox import RLM, RLMConfig
from rlm_sandbox.rlm.result import RLMResult
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.testing import Policy, ScriptedClient

#: Events only listeners get (progress ticks), never the trace file.
NOTIFY_ONLY = frozenset({"load_progress", "image_progress"})


@dataclass
class Harness:
    """One RLM over the fake seam, with every event it emitted."""

    rlm: RLM
    backend: FakeBackend
    client: ScriptedClient
    sub: ScriptedClient | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def run(self, context: Any = "", task: str = "t", **kw: Any) -> RLMResult:
        return self.rlm.run(context=context, task=task, **kw)

    def named(self, *kinds: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] in kinds]

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events if e["event"] not in NOTIFY_ONLY]

    def calls(self, purpose: str | None = None) -> list[dict[str, Any]]:
        """The ``lm_call`` events (of one purpose: step, sub_call, last_answer, fallback ...)."""
        return [e for e in self.named("lm_call") if purpose is None or e["purpose"] == purpose]


def make_harness(
    policy: Policy,
    *,
    model: str = "scripted",
    latency_s: float = 0.0,
    sub_policy: Policy | None = None,
    sub_model: str = "scripted-sub",
    tools: dict[str, Callable[..., Any]] | None = None,
    backend: FakeBackend | None = None,
    **config: Any,
) -> Harness:
    """An RLM whose root model plays ``policy`` (and leaf calls ``sub_policy``, when given)."""
    client = ScriptedClient(policy, model=model, latency_s=latency_s)
    sub = ScriptedClient(sub_policy, model=sub_model) if sub_policy is not None else None
    backend = backend or FakeBackend()
    rlm = RLM(root_lm=client, sub_lm=sub, backend=backend, tools=tools, config=RLMConfig(**config))
    harness = Harness(rlm, backend, client, sub)
    rlm.listeners.append(harness.events.append)
    return harness


def check_lifecycle(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Assert the lifecycle events of one run are in order and balanced; returns each node's
    lifecycle events in order (``node_begin``, maybe ``node_start``, ``node_end``)."""
    kinds = [e["event"] for e in events if e["event"] not in NOTIFY_ONLY]
    assert kinds[0] == "run_start", kinds[:3]
    assert kinds[-1] == "run_end", kinds[-3:]
    assert kinds.count("run_start") == kinds.count("run_end") == 1
    per_node: dict[str, list[str]] = {}
    for e in events:
        if e["event"] in ("node_begin", "node_start", "node_end"):
            per_node.setdefault(e["node"], []).append(e["event"])
    for node, seen in per_node.items():
        assert seen in (["node_begin", "node_start", "node_end"], ["node_begin", "node_end"]), (node, seen)
    return per_node


def repl(code: str) -> str:
    """A model reply that runs ``code`` in one ```repl block."""
    return f"Let me run this.\n```repl\n{code}\n```"


def turn(request: dict[str, Any]) -> int:
    """How many replies the model has given in this conversation (0 at a node's first step)."""
    return sum(1 for m in request.get("messages") or [] if m.get("role") == "assistant")


def last_user(request: dict[str, Any]) -> str:
    """The newest user message of a request: the feedback the model is reading now."""
    users = [m["content"] for m in request.get("messages") or [] if m.get("role") == "user"]
    return users[-1] if users else ""


def is_node(request: dict[str, Any]) -> bool:
    """A request from an RLM node (its system prompt teaches ```repl), not a leaf call."""
    msgs = request.get("messages") or []
    return bool(msgs) and msgs[0].get("role") == "system" and "```repl" in msgs[0].get("content", "")
