"""Trace readers against type-confused traces: a trace file is untrusted input.

Every reader (trace show/summary/html, replay) must either show what it can (an event it
cannot read counts as unknown) or refuse the file with a clear error: never crash.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_sandbox.trace.events import EVENTS
from rlm_sandbox.trace.tree import build

FIELDS = [
    "event", "run", "t", "ts", "node", "parent", "depth", "step", "index", "code", "output", "error",
    "answer", "status", "steps", "wall_s", "duration_s", "start_s", "container", "pooled", "task",
    "model", "sub_model", "purpose", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s",
    "response", "request_sha256", "kind", "prompt_chars", "tool", "timed_out", "budget", "tokens",
    "limits", "max_steps", "lm_calls", "nodes", "containers", "models", "levels", "engines", "timings",
]  # fmt: skip

confused = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.just("n" + "9" * 40), st.just([]), st.just({}),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)  # fmt: skip
event_name = st.one_of(st.sampled_from(sorted(EVENTS)), confused)
node_id = st.one_of(st.sampled_from(["root", "n1", "n2"]), confused)
events = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"event": event_name, "node": node_id, "parent": node_id},
            optional={f: confused for f in FIELDS if f not in ("event", "node", "parent")},
        ),
        confused,
    ),
    max_size=12,
)


def render_all(run: Any) -> None:
    from rich.console import Console

    from rlm_sandbox.trace.html import render_html
    from rlm_sandbox.trace.render import show, summary

    console = Console(file=io.StringIO(), width=120)
    console.print(show(run))
    console.print(summary(run))
    for node in run.walk():
        console.print(show(run, node.id))
    render_html(run)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_trace_views_never_crash_on_type_confused_events(evs: list[Any]) -> None:
    render_all(build(evs))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events)
def test_replay_reads_or_refuses_type_confused_traces(tmp_path_factory, evs: list[Any]) -> None:
    from rlm_sandbox.replay import ReplayPolicy, TraceNotReplayable, compare, load_recording

    path = Path(tmp_path_factory.mktemp("t")) / "t.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in evs) + "\n")
    try:
        recording = load_recording(path)
    except TraceNotReplayable:
        return
    policy = ReplayPolicy(recording)
    policy(
        {
            "messages": [
                {"role": "system", "content": "depth 1 of at most 2"},
                {"role": "user", "content": "x"},
            ]
        }
    )
    compare(recording, [e for e in evs if isinstance(e, dict)], policy.served)
