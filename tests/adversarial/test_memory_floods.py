"""Floods against the host's memory: what a cell's requests can make the host hold.

A cell can forge ``llm_request`` frames on its own channel (``llm_query.__self__.link``), many
and large, while the model is slow to answer them. Each run here happens in a process of its
own (``memrun.py``) so that the peak resident set asserted on (``VmHWM``) is the run's alone;
the scripted model stays in the test's process. On b2b2e77 the depth-1 flood took that
process past 3 GB; bounded (``held.py``), it stays under half of that.

Runtime-dependent numbers are generous on purpose (the machine is shared): the assertions are
about bounds an order apart, not timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.testing import ScriptedModelServer

from ..helpers import ROOT, _is_node, cells_then_final, root_then_policy
from .conftest import ROWS, RUNTIME, SECRET_VARS

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

MB = 1 << 20

# The reproduction of the issue: one 10 MB buffer, re-sent as fresh requests on the kernel's
# own link to the host (the issue's ``llm_query.__self__.chan.send`` before the kernel split).
FLOOD = """
buf = b'x' * (10 << 20)
link = llm_query.__self__.link
for i in range({n}):
    link.send({{"t": "llm_request", "id": link._new_id(), "cell": link.current_cell, "sizes": [len(buf)]}}, buf)
print('sent', {n})
"""

# A child re-sends its own context (a parent's prompt) the same way.
CHILD_FLOOD = """
buf = context.encode()
link = llm_query.__self__.link
for i in range({n}):
    link.send({{"t": "llm_request", "id": link._new_id(), "cell": link.current_cell, "sizes": [len(buf)]}}, buf)
print('sent', {n})
"""


def slow_leaves(node_policy: Any, latency_s: float) -> Any:
    """Nodes answer at once; a plain model call (a leaf) takes ``latency_s`` and answers with
    the length of its prompt."""

    def policy(request: dict[str, Any]) -> str:
        if _is_node(request):
            return node_policy(request)
        time.sleep(latency_s)
        users = [m.get("content") or "" for m in request.get("messages") or [] if m.get("role") == "user"]
        return f"prompt of {len(users[-1]) if users else 0} chars"

    return policy


def contained_after(trace: Path) -> float | None:
    """Seconds from the root's first cell starting to the root node ending: how long the
    attack ran before the run had it contained (throttled to its end, or killed)."""
    if not trace.exists():
        return None
    events = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    start = next((e["t"] for e in events if e["event"] == "cell_start" and e["node"] == "root"), None)
    end = next((e["t"] for e in events if e["event"] == "node_end" and e["node"] == "root"), None)
    return None if start is None or end is None else round(end - start, 2)


def run_isolated(
    policy: Any,
    run_id: str,
    sandbox_runtime: str | None,
    tmp_path: Path,
    attack: str,
    *,
    sandbox: dict[str, Any] | None = None,
    rlm: dict[str, Any] | None = None,
    context: str | None = None,
    context_bytes: int | None = None,
    timeout: float = 500,
) -> dict[str, Any]:
    """One run in a child process against a scripted model served from here; the report
    (result, ``vmhwm_kb``, seconds) is checked for planted secrets and recorded as a row."""
    server = ScriptedModelServer(policy, keep_bodies=4).start()
    trace = tmp_path / "trace.jsonl"
    spec: dict[str, Any] = {
        "model": server.model_name,
        "api_base": server.url,
        "api_key": server.api_key,
        "run_id": run_id,
        "task": "Summarise the input.",
        "sandbox": {"kill_grace": 1, "memory": "256m", "runtime": sandbox_runtime, **(sandbox or {})},
        "rlm": {"max_steps": 3, "timeout": 120, "trace": str(trace), **(rlm or {})},
    }
    if context_bytes is not None:
        spec["context_bytes"] = context_bytes
    else:
        spec["context"] = context if context is not None else "some input"
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.adversarial.memrun", json.dumps(spec)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        bodies = server.requests.bodies
    finally:
        server.close()
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"the run's process failed ({proc.returncode}): {proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    blob = json.dumps([report, proc.stderr, bodies]) + (trace.read_text() if trace.exists() else "")
    breached = any(v in blob for v in SECRET_VARS.values())
    result = report["result"]
    report["peak_mb"] = round(report["vmhwm_kb"] / 1024)
    contained = contained_after(trace)
    ROWS.append(
        {
            "attack": attack,
            "runtime": RUNTIME,
            "status": result["status"],
            "outcome": (result["error"] or str(result["answer"]))[:160],
            # From the attack's first cell to its node's end; the whole run when untraced.
            "seconds": contained if contained is not None else round(seconds, 2),
            "breached": breached,
            "peak_rss_mb": report["peak_mb"],
        }
    )
    assert not breached, "a planted host secret appears in the run's output or model traffic"
    return report


def assert_contained(report: dict[str, Any], *, peak_mb: int) -> None:
    """Ended (throttled, then killed or timed out), typed, and under ``peak_mb``."""
    result = report["result"]
    assert result["status"] in ("ok", "sandbox_error", "budget_exhausted"), result
    if result["status"] == "sandbox_error":
        # The kernel's own cell limit cuts a forged write half-way: the host names the broken
        # frame; a bound that could not be honoured is named by its setting.
        text = result["error"].lower()
        assert any(w in text for w in ("frame", "protocol", "held", "memory")), result["error"]
    assert report["peak_mb"] < peak_mb, (
        f"the run's process peaked at {report['peak_mb']} MB (bound {peak_mb} MB): {result}"
    )


def test_forged_request_flood_is_held_to_the_bound(
    run_id: str, sandbox_runtime: str | None, tmp_path: Path
) -> None:
    """300 forged 10 MB requests while every leaf takes 10 s: on b2b2e77 the host read them
    all (3.2-3.5 GB peak); now its reader stops at the sandbox's bound and the kernel's
    writes block, so the run's process stays well under 1.5 GB."""
    policy = slow_leaves(cells_then_final(FLOOD.format(n=300)), latency_s=10)
    report = run_isolated(
        policy,
        run_id,
        sandbox_runtime,
        tmp_path,
        "forged_request_flood_depth1",
        sandbox={"cell_timeout": 45},
    )
    assert_contained(report, peak_mb=1500)


def test_forged_request_flood_at_depth_2(run_id: str, sandbox_runtime: str | None, tmp_path: Path) -> None:
    """The same flood from the root of a depth-2 run: each forged request becomes a child
    whose context is the 10 MB buffer, and every child floods the host with its context in
    turn. The whole tree shares one bound: the root's prompts leave room for the children
    (and are released once a child has loaded them), the children's leaf calls drain. On
    b2b2e77 this run's process went past 4 GB; bounded, it stays near 1.4 GB (the run's
    1 GiB of counted requests, the engine's own ~200 MB, and the model client's transient
    copies), under 2 GB."""
    root = cells_then_final(FLOOD.format(n=300))
    child = cells_then_final(CHILD_FLOOD.format(n=40))
    policy = slow_leaves(root_then_policy(root, child), latency_s=10)
    report = run_isolated(
        policy,
        run_id,
        sandbox_runtime,
        tmp_path,
        "forged_request_flood_depth2",
        sandbox={"cell_timeout": 45},
        rlm={"depth": 2, "max_containers": 8, "timeout": 150},
    )
    assert_contained(report, peak_mb=2000)
    assert report["result"]["max_depth_reached"] == 2, report["result"]


def test_a_flood_with_no_progress_is_killed_with_a_typed_error(
    run_id: str, sandbox_runtime: str | None, tmp_path: Path
) -> None:
    """When the model answers nothing for longer than ``held_stall_timeout`` while the bound
    is full, the flooding sandbox is killed with HostMemoryExceeded naming that setting."""
    policy = slow_leaves(cells_then_final(FLOOD.format(n=200)), latency_s=60)
    report = run_isolated(
        policy,
        run_id,
        sandbox_runtime,
        tmp_path,
        "forged_request_flood_stalled",
        sandbox={"cell_timeout": 60, "held_stall_timeout": 5, "max_held_bytes": 128 * MB},
        rlm={"lm_timeout": 90},
    )
    result = report["result"]
    assert result["status"] == "sandbox_error", result
    assert "held_stall_timeout" in result["error"] and "nothing was released" in result["error"], result
    assert report["peak_mb"] < 1000, report


def test_a_request_larger_than_the_bound_is_refused(
    run_id: str, sandbox_runtime: str | None, tmp_path: Path
) -> None:
    """One request that could never fit is refused before its payload is read."""
    policy = slow_leaves(cells_then_final("r = llm_query('x' * (40 << 20))"), latency_s=0)
    report = run_isolated(
        policy,
        run_id,
        sandbox_runtime,
        tmp_path,
        "request_larger_than_the_bound",
        sandbox={"cell_timeout": 30, "max_held_bytes": 32 * MB},
    )
    result = report["result"]
    assert result["status"] == "sandbox_error", result
    assert "max_held_bytes" in result["error"], result
    assert result["lm_calls"] == 1, result  # the root's step; no leaf call was made


@pytest.mark.parametrize("depth", [1, 2])
def test_a_250_mb_prompt_works_end_to_end(
    run_id: str, sandbox_runtime: str | None, tmp_path: Path, depth: int
) -> None:
    """A legitimate 250 MB ``llm_query`` prompt passes under the default bounds: at depth 1
    it is a leaf call (answered with its length); at depth 2 it becomes a child's context
    (released once loaded), and the child reports its length."""
    size = 250 * MB
    cell = f"r = llm_query('y' * {size})\nprint(r)"
    child = cells_then_final("n = len(context)\nprint(n)", final="FINAL_VAR(n)")
    root = cells_then_final(cell, final="FINAL_VAR(r)")
    policy = slow_leaves(root_then_policy(root, child) if depth == 2 else root, latency_s=0)
    report = run_isolated(
        policy,
        run_id,
        sandbox_runtime,
        tmp_path,
        f"legit_250mb_prompt_depth{depth}",
        sandbox={"cell_timeout": 120, "memory": "1536m", "io_timeout": 120},
        rlm={"depth": depth, "lm_timeout": 300, "timeout": 400},
    )
    result = report["result"]
    assert result["status"] == "ok", result
    expected = f"prompt of {size} chars" if depth == 1 else str(size)
    assert result["answer"] == expected, result
