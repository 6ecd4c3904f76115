"""RLM nodes spread over two real Docker engines; an engine that is missing or dies mid-run."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import docker
import pytest

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.core import Sandbox
from rlm_sandbox.sandbox.docker_backend import DockerBackend
from rlm_sandbox.sandbox.engines import EngineSpec
from rlm_sandbox.sandbox.gc import collect_garbage

from ..conftest import containers_of
from .second_engine import SecondEngine

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]
LOCAL = "unix:///var/run/docker.sock"
COUNT = 'How many lines contain "ERROR disk"?'


def run_over(server, engines: list[str], trace: Path, run_id: str, context, **cfg):
    config = RLMConfig(
        api_base=server.url, depth=2, trace=str(trace), engines=[EngineSpec.parse(e) for e in engines], **cfg
    )
    engine = RLM(model=server.model_name, config=config, api_key=server.api_key)
    return engine, lambda: engine.run(context=context, task=COUNT, run_id=run_id)


def events_of(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines()]


def started_on(url: str, run_id: str, since: float) -> set[str]:
    """What the engine itself says it started for this run (its own event log)."""
    client = docker.DockerClient(base_url=url, timeout=30)
    try:
        stream = client.events(
            since=int(since) - 1,
            until=int(time.time()) + 1,
            filters={"type": "container", "event": "start", "label": f"rlm-sandbox.run={run_id}"},
            decode=True,
        )
        return {e["id"] for e in stream}
    finally:
        client.close()


def left_on(url: str, run_id: str) -> list[str]:
    return [i.id for i in DockerBackend(url).list({"rlm-sandbox.run": run_id})]


def test_a_depth_2_run_places_nodes_on_both_engines(
    second_engine: SecondEngine, scripted, gen_log, run_id: str, tmp_path: Path
) -> None:
    stats = gen_log(2_000_000)
    trace = tmp_path / "t.jsonl"
    since = time.time()
    _, go = run_over(scripted(), [LOCAL, second_engine.unix_url], trace, run_id, stats.path)
    result = go()
    assert result.status == "ok" and result.answer == str(stats.disk_errors), result
    starts = [e for e in events_of(trace) if e["event"] == "node_start"]
    by_engine: dict[str, set[str]] = {}
    for e in starts:
        by_engine.setdefault(e["engine"], set()).add(e["container"])
    assert set(by_engine) == {LOCAL, second_engine.unix_url}, by_engine
    for url, containers in by_engine.items():
        assert containers <= started_on(url, run_id, since), url  # each engine confirms its own
    assert not (by_engine[LOCAL] & by_engine[second_engine.unix_url])
    end = events_of(trace)[-1]
    assert {e["engine"]: e["nodes"] for e in end["engines"]} == {u: len(c) for u, c in by_engine.items()}
    assert left_on(second_engine.unix_url, run_id) == [] and containers_of(run_id) == []


def test_per_engine_limits_hold(
    second_engine: SecondEngine, scripted, gen_log, run_id: str, tmp_path: Path
) -> None:
    stats = gen_log(2_000_000)
    trace = tmp_path / "t.jsonl"
    peak = {LOCAL: 0, second_engine.unix_url: 0}
    alive = {LOCAL: 0, second_engine.unix_url: 0}
    lock = threading.Lock()
    nodes: dict[str, str] = {}

    def watch(ev: dict) -> None:
        with lock:
            if ev["event"] == "node_start":
                nodes[ev["node"]] = ev["engine"]
                alive[ev["engine"]] += 1
                peak[ev["engine"]] = max(peak[ev["engine"]], alive[ev["engine"]])
            elif ev["event"] == "node_end" and ev["node"] in nodes:
                alive[nodes[ev["node"]]] -= 1

    engine, go = run_over(
        scripted(latency_s=0.05),
        [f"{LOCAL},max=2", f"{second_engine.unix_url},max=3"],
        trace,
        run_id,
        stats.path,
    )
    engine.listeners.append(watch)
    result = go()
    assert result.status == "ok", result
    assert peak[LOCAL] <= 2 and peak[second_engine.unix_url] <= 3, peak
    assert peak[second_engine.unix_url] >= 1


def test_an_unreachable_engine_is_skipped_with_a_warning(
    scripted, gen_log, run_id: str, tmp_path: Path
) -> None:
    stats = gen_log(1_000_000)
    trace = tmp_path / "t.jsonl"
    _, go = run_over(scripted(), [LOCAL, "unix:///run/rlm-no-such-engine.sock"], trace, run_id, stats.path)
    result = go()
    assert result.status == "ok", result
    warnings = [e for e in events_of(trace) if e["event"] == "engine_warning"]
    assert (
        warnings
        and "rlm-no-such-engine" in warnings[0]["engine"]
        and "does not answer" in warnings[0]["message"]
    )


def test_no_reachable_engine_fails_the_run_clearly(scripted, run_id: str, tmp_path: Path) -> None:
    _, go = run_over(scripted(), ["unix:///run/rlm-no-such-engine.sock"], tmp_path / "t.jsonl", run_id, "abc")
    t0 = time.monotonic()
    result = go()
    assert result.status == "sandbox_error" and result.exit_code == 4
    assert "none of the 1 configured Docker engines answers" in (result.error or "")
    assert time.monotonic() - t0 < 30


def test_a_sandbox_over_tcp_with_mutual_tls(second_engine: SecondEngine, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(second_engine.certs))
    payload = "x" * 30_000_000
    with Sandbox(SandboxConfig(docker_url=second_engine.tcp_url, run_id="tls-test")) as sb:
        info = sb.load_context(payload)
        assert info.length == len(payload)
        r = sb.execute("print(len(context)); print('y' * 2_000_000)")
        assert r.stdout.startswith("30000000\n")
        for i in range(50):
            assert sb.execute(f"print({i} * 2)").stdout == f"{i * 2}\n"
    assert left_on(second_engine.unix_url, "tls-test") == []


def test_tls_without_certificates_is_a_clear_error(
    second_engine: SecondEngine, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    from rlm_sandbox.errors import ConfigError

    with pytest.raises(ConfigError, match="TLS files"):
        Sandbox(SandboxConfig(docker_url=second_engine.tcp_url)).start()


def test_the_second_engine_dies_mid_run(
    second_engine: SecondEngine, scripted, gen_log, run_id: str, tmp_path: Path
) -> None:
    stats = gen_log(2_000_000)
    trace = tmp_path / "t.jsonl"
    engine, go = run_over(
        scripted(latency_s=0.4), [LOCAL, second_engine.unix_url], trace, run_id, stats.path, pool_size=0
    )
    killed = threading.Event()

    def kill_once(ev: dict) -> None:
        if ev["event"] == "node_start" and ev.get("engine") == second_engine.unix_url and not killed.is_set():
            killed.set()
            threading.Timer(0.2, second_engine.kill).start()

    engine.listeners.append(kill_once)
    t0 = time.monotonic()
    try:
        result = go()
        took = time.monotonic() - t0
        assert killed.is_set()
        assert took < 90
        events = events_of(trace)
        failed = [
            e for e in events if e["event"] == "engine_warning" and e["engine"] == second_engine.unix_url
        ]
        assert failed and "failed mid-run" in failed[0]["message"], failed
        on_second = {
            e["node"] for e in events if e["event"] == "node_start" and e["engine"] == second_engine.unix_url
        }
        ends = {e["node"]: e for e in events if e["event"] == "node_end"}
        assert any(
            ends[n]["status"] == "error" and "engine" in (ends[n]["error"] or "").lower() for n in on_second
        )
        assert events[-1]["event"] == "run_end" and result.status in (
            "ok",
            "sandbox_error",
            "error",
            "budget_exhausted",
        )
        assert containers_of(run_id) == []  # the surviving engine keeps nothing
    finally:
        second_engine.start()
    # The dead engine's leftovers are garbage once it is back: gc over every engine removes them.
    deadline = time.monotonic() + 30
    while left_on(second_engine.unix_url, run_id) and time.monotonic() < deadline:
        collect_garbage(DockerBackend(second_engine.unix_url), run_id=run_id, include_live=True)
        time.sleep(0.5)
    assert left_on(second_engine.unix_url, run_id) == []


def test_the_cli_spreads_a_run_and_gc_cleans_every_engine(
    second_engine: SecondEngine, scripted, gen_log, tmp_path: Path
) -> None:
    from ..helpers import cli, json_out

    stats = gen_log(1_000_000)
    server = scripted()
    trace = tmp_path / "t.jsonl"
    proc = cli(
        "run", "--model", server.model_name, "--api-base", server.url, "--task", COUNT, "-i", str(stats.path),
        "--depth", "2", "--engine", f"{LOCAL},max=4", "--engine", f"{second_engine.unix_url},max=4",
        "--trace", str(trace), "--json",
        env={"OPENAI_API_KEY": server.api_key},
    )  # fmt: skip
    out = json_out(proc)
    assert out["status"] == "ok" and out["answer"] == str(stats.disk_errors), proc.stderr.decode()[-2000:]
    assert {e["engine"] for e in events_of(trace) if e["event"] == "node_start"} == {
        LOCAL,
        second_engine.unix_url,
    }
    # A container a dead controller left on the second engine: gc over both engines finds it.
    client = second_engine.client()
    try:
        orphan = client.containers.create(
            "rlm-sandbox-base:bookworm"
            if client.images.list("rlm-sandbox-base")
            else client.images.list()[0].id,
            command="true",
            labels={
                "rlm-sandbox": "1",
                "rlm-sandbox.run": "orphan-run",
                "rlm-sandbox.owner": f"{socket.gethostname()}:999999:1",
            },
        )
    finally:
        client.close()
    gc = cli("gc", "--run", "orphan-run", "--engine", LOCAL, "--engine", second_engine.unix_url)
    text = gc.stdout.decode()
    assert gc.returncode == 0, gc.stderr.decode()
    assert f"removed {orphan.id[:12]}" in text and f"on {second_engine.unix_url}" in text
    assert left_on(second_engine.unix_url, "orphan-run") == []
