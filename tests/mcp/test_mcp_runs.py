"""``rlm-sandbox mcp`` answering through the SDK's stdio client: real containers, the real
model HTTP path (a scripted model on loopback), progress notifications, cancellation by the
client, and no container left behind in any of these."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from ..conftest import tenant_containers
from ..helpers import never_finishes
from .client import server_params, session, wait_for

pytestmark = pytest.mark.docker
COUNT = 'How many lines contain "ERROR disk"?'


@pytest.fixture
def tenant(sandbox_image: str) -> Any:
    """A label for this test's containers; none may be left after it."""
    name = f"mcp-{uuid.uuid4().hex[:10]}"
    yield name
    left = tenant_containers(name)
    assert not left, f"containers left behind: {left}"


def test_answers_over_a_file_a_link_inside_and_text_with_progress(
    scripted, gen_log, tenant: str, tmp_path: Path
) -> None:
    stats = gen_log(300_000)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(stats.path, allowed / "big.log")
    (allowed / "alias.log").symlink_to(allowed / "big.log")  # a link that stays inside: fine
    model = scripted()
    params = server_params(
        model, tmp_path / "home", "--allow-dir", str(allowed), "--tenant", tenant, "--depth", "2"
    )
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async def main() -> list[Any]:
        async with session(params) as s:
            by_path = await s.call_tool(
                "rlm_query", {"task": COUNT, "path": str(allowed / "big.log")}, progress_callback=on_progress
            )
            by_link = await s.call_tool(
                "rlm_query", {"task": COUNT, "path": str(allowed / "alias.log"), "depth": 1}
            )
            by_text = await s.call_tool(
                "rlm_query", {"task": COUNT, "text": "ok\nERROR disk a\nERROR disk b\nfine\n", "depth": 1}
            )
            return [by_path, by_link, by_text]

    by_path, by_link, by_text = anyio.run(main)
    for result, expected in ((by_path, stats.disk_errors), (by_link, stats.disk_errors), (by_text, 2)):
        out = result.structured_content
        assert not result.is_error, result.content
        assert out["status"] == "ok" and out["answer"] == str(expected), out
        assert out["cost_usd"] >= 0 and out["lm_calls"] > 0 and out["tokens"]["prompt"] > 0
        text = result.content[0].text
        assert text.startswith(str(expected)) and "ok ·" in text and "model calls" in text
    assert by_path.structured_content["nodes"] > 1  # depth 2: children of their own
    assert by_link.structured_content["nodes"] == 1
    trace = Path(by_path.structured_content["trace"])
    assert trace.is_file() and trace.parent == tmp_path / "home" / "state" / "rlm-sandbox" / "traces"
    # Progress: notifications for the call that asked for them, growing, saying what moved.
    values = [v for v, _ in progress]
    assert len(values) >= 5 and values == sorted(set(values))
    messages = [m or "" for _, m in progress]
    assert messages[0].startswith("run started") and messages[-1].startswith("run ended: ok")
    assert any("model calls" in m and "sub-calls" in m for m in messages)


def test_cancelled_call_stops_its_run_and_removes_its_containers(
    scripted, tenant: str, tmp_path: Path
) -> None:
    model = scripted(never_finishes, latency_s=0.2)
    params = server_params(model, tmp_path / "home", "--tenant", tenant, "--max-steps", "500")
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with session(params) as s:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    seen["result"] = await s.call_tool("rlm_query", {"task": "t", "text": "some input"})

                tg.start_soon(call)
                up = await anyio.to_thread.run_sync(lambda: wait_for(lambda: tenant_containers(tenant), 120))
                assert up, "the run never started a container"
                tg.cancel_scope.cancel()  # the SDK tells the server: notifications/cancelled
            seen["gone"] = await anyio.to_thread.run_sync(
                lambda: wait_for(lambda: not tenant_containers(tenant), 10)
            )
            # The server lives on and answers the next call.
            seen["after"] = await s.call_tool("rlm_query", {"task": "t", "path": "x"})

    anyio.run(main)
    assert "result" not in seen  # the call was abandoned, not answered
    assert seen["gone"], "the cancelled run's containers are still there 10 s later"
    assert seen["after"].is_error and "without --allow-dir" in seen["after"].content[0].text
    assert run_end(tmp_path / "home")["status"] == "cancelled"


def test_client_going_away_mid_run_leaves_no_container(scripted, tenant: str, tmp_path: Path) -> None:
    model = scripted(never_finishes, latency_s=0.2)
    params = server_params(model, tmp_path / "home", "--tenant", tenant, "--max-steps", "500")

    async def main() -> None:
        async with session(params) as s, anyio.create_task_group() as tg:
            tg.start_soon(s.call_tool, "rlm_query", {"task": "t", "text": "some input"})
            up = await anyio.to_thread.run_sync(lambda: wait_for(lambda: tenant_containers(tenant), 120))
            assert up, "the run never started a container"
            tg.cancel_scope.cancel()  # leaving both blocks: stdin closed, then the SDK's shutdown

    anyio.run(main)
    assert wait_for(lambda: not tenant_containers(tenant), 10), tenant_containers(tenant)
    # The server cancelled the run and closed its trace before it exited (not killed mid-run).
    assert run_end(tmp_path / "home")["status"] == "cancelled"


def run_end(home: Path) -> dict[str, Any]:
    """The last event of the one trace the server wrote."""
    (trace,) = (home / "state" / "rlm-sandbox" / "traces").glob("mcp-*.jsonl")
    last = json.loads(trace.read_text().splitlines()[-1])
    assert last["event"] == "run_end", last
    return last


def test_a_budget_stop_is_a_tool_error_with_its_status(scripted, tenant: str, tmp_path: Path) -> None:
    model = scripted(never_finishes)
    params = server_params(model, tmp_path / "home", "--tenant", tenant, "--max-lm-calls", "3", "--no-trace")

    async def main() -> Any:
        async with session(params) as s:
            return await s.call_tool("rlm_query", {"task": "t", "text": "some input"})

    result = anyio.run(main)
    out = result.structured_content
    assert result.is_error and out["status"] == "budget_exhausted" and out["budget"] == "max_lm_calls"
    assert "The run did not answer: budget_exhausted (max_lm_calls)" in result.content[0].text
    assert out["lm_calls"] <= 3


def test_sigterm_mid_run_cancels_it_and_exits_0_with_only_protocol_on_stdout(
    scripted, tenant: str, tmp_path: Path
) -> None:
    """Raw JSON-RPC over the pipes (the SDK's client would close stdin first): every line on
    stdout is a protocol message, and SIGTERM with a run in flight ends it as cancelled,
    removes its containers and exits 0."""
    model = scripted(never_finishes, latency_s=0.2)
    params = server_params(model, tmp_path / "home", "--tenant", tenant, "--max-steps", "500")
    proc = subprocess.Popen(
        [params.command, *params.args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=params.cwd,
        env={**os.environ, **(params.env or {})},
    )
    assert proc.stdin is not None and proc.stdout is not None

    def send(message: dict[str, Any]) -> None:
        proc.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    try:
        hello = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        send({"id": 1, "method": "initialize", "params": hello})
        assert json.loads(proc.stdout.readline())["id"] == 1
        send({"method": "notifications/initialized"})
        call = {
            "name": "rlm_query",
            "arguments": {"task": "t", "text": "abc"},
            "_meta": {"progressToken": "p"},
        }
        send({"id": 2, "method": "tools/call", "params": call})
        assert wait_for(lambda: tenant_containers(tenant), 120), proc.stderr.read1().decode()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        lines = proc.stdout.read().decode().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    messages = [json.loads(line) for line in lines]  # nothing but JSON-RPC on stdout
    assert all(m.get("jsonrpc") == "2.0" for m in messages)
    assert any(m.get("method") == "notifications/progress" for m in messages)
    assert tenant_containers(tenant) == []
    assert run_end(tmp_path / "home")["status"] == "cancelled"
