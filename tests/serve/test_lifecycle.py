"""Stopping runs and the service: DELETE mid-run, SIGTERM with runs in flight, and the
counters of /metrics against what was run."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import containers_of
from .harness import Service, events_of, haystack, wait_for

pytestmark = pytest.mark.docker


def _in_cell(client: httpx.Client, run_id: str) -> None:
    """Wait until the run's container exists and its cell is running."""
    wait_for(lambda: containers_of(run_id), 60, "the run's container started")
    wait_for(lambda: '"cell_start"' in client.get(f"/v1/runs/{run_id}/trace").text, 60, "the cell started")


def test_delete_cancels_a_run_mid_cell_and_its_containers_go_within_2_s(service: Service) -> None:
    with service.client("a") as client:
        run_id = client.post(
            "/v1/runs", json={"task": "Sleep 300 seconds, then answer.", "context": "x"}
        ).json()["id"]
        _in_cell(client, run_id)
        asked = time.monotonic()
        answer = client.delete(f"/v1/runs/{run_id}")
        wait_for(
            lambda: not containers_of(run_id), 2.0 - (time.monotonic() - asked), "containers removed", 0.02
        )
        assert answer.status_code == 200
        got = answer.json()
        assert got["id"] == run_id and got["status"] == "cancelled" and got["answer"] is None
        assert client.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"
        events = events_of(client, run_id)
    assert events[-1][1] == "run_end" and events[-1][2]["status"] == "cancelled"


def _follow(service: Service, short: str, run_id: str, into: dict[str, Any]) -> threading.Thread:
    def read() -> None:
        with service.client(short, timeout=120) as client:
            into[run_id] = events_of(client, run_id)

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_sigterm_lets_running_runs_finish_within_grace_then_cancels_and_exits_0(fresh_service) -> None:
    grace = 6.0
    svc: Service = fresh_service({"t": {"max_runs": 2, "max_queued": 5}}, args=("--grace", str(grace)))
    with svc.client("t") as client:
        quick = client.post("/v1/runs", json={"task": "Sleep 3 seconds, then answer.", "context": "x"}).json()
        slow = client.post(
            "/v1/runs", json={"task": "Sleep 300 seconds, then answer.", "context": "x"}
        ).json()
        waiting = client.post(
            "/v1/runs", json={"task": "Sleep 1 seconds, then answer.", "context": "x"}
        ).json()
        assert (quick["status"], slow["status"], waiting["status"]) == ("running", "running", "queued")
        _in_cell(client, quick["id"])
        _in_cell(client, slow["id"])
        seen: dict[str, Any] = {}
        readers = [_follow(svc, "t", r["id"], seen) for r in (quick, slow, waiting)]
        time.sleep(0.3)  # the streams are open
        sent = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        wait_for(
            lambda: not client.get("/healthz").json()["accepting"], 10, "the service stopped taking runs"
        )
        refused = client.post("/v1/runs", json={"task": "Sleep 1 seconds", "context": "x"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    code = svc.proc.wait(grace + 30)
    took = time.monotonic() - sent
    for reader in readers:
        reader.join(30)
    assert code == 0, svc.log.read_text()[-2000:]
    assert took < grace + 10, took  # the grace period, then cancelling takes a moment
    ends = {rid: events[-1][2] for rid, events in seen.items()}
    assert ends[quick["id"]]["status"] == "ok" and ends[quick["id"]]["answer"] == "slept 3"
    assert ends[slow["id"]]["status"] == "cancelled"
    assert ends[waiting["id"]]["status"] == "cancelled"
    for run in (quick, slow, waiting):
        assert containers_of(run["id"]) == []
    assert svc.spool_entries() == [] and not list(svc.tmp.glob("rlm-serve-*"))
    kinds = [line["kind"] for line in svc.log_lines()]
    assert "shutting_down" in kinds and kinds[-1] != "log", svc.log.read_text()[-2000:]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_parse_and_count_what_was_run(fresh_service) -> None:
    svc: Service = fresh_service({"x": {"max_runs": 2}, "y": {"max_runs": 2}})
    ids: dict[str, list[str]] = {"x": [], "y": []}
    with svc.client("x") as x, svc.client("y") as y:
        for client, short, code in ((x, "x", "MX-1"), (x, "x", "MX-2"), (y, "y", "MY-1")):
            ids[short].append(client.post("/v1/runs", json={"task": "What is the secret code?",
                                                            "context": haystack(code)}).json()["id"])  # fmt: skip
        slow = y.post("/v1/runs", json={"task": "Sleep 300 seconds, then answer.", "context": "x"}).json()[
            "id"
        ]
        ids["y"].append(slow)
        _in_cell(y, slow)
        mid = _samples(httpx.get(f"{svc.url}/metrics").text)
        y.delete(f"/v1/runs/{slow}")
        httpx.get(f"{svc.url}/v1/models")  # a 401
        outcomes = {}
        for short, client in (("x", x), ("y", y)):
            for rid in ids[short]:
                events_of(client, rid)  # until it ended
                outcomes[rid] = (short, client.get(f"/v1/runs/{rid}").json())
        text = httpx.get(f"{svc.url}/metrics").text
    assert mid[("rlm_serve_runs_running", (("tenant", svc.tenants["y"]),))] >= 1
    assert mid[("rlm_serve_containers_alive", (("tenant", svc.tenants["y"]),))] >= 1
    got = _samples(text)
    for short in ("x", "y"):
        tenant = (("tenant", svc.tenants[short]),)
        mine = [o for s, o in outcomes.values() if s == short]
        statuses = {o["status"] for o in mine}
        for status in statuses:
            key = ("rlm_serve_runs_total", (("status", status), ("tenant", svc.tenants[short])))
            assert got[key] == sum(o["status"] == status for o in mine)
        assert got[("rlm_serve_model_calls_total", tenant)] == sum(o["lm_calls"] for o in mine) > 0
        for kind in ("prompt", "completion"):
            key = ("rlm_serve_tokens_total", (("kind", kind), ("tenant", svc.tenants[short])))
            assert got[key] == sum(o["tokens"][kind] for o in mine)
        assert got[("rlm_serve_cost_usd_total", tenant)] == pytest.approx(sum(o["cost_usd"] for o in mine))
        assert got[("rlm_serve_run_duration_seconds_count", tenant)] == len(mine)
        assert got[("rlm_serve_runs_submitted_total", tenant)] == len(mine)
        assert got[("rlm_serve_queue_depth", tenant)] == 0
        assert got[("rlm_serve_runs_running", tenant)] == 0
        assert got[("rlm_serve_containers_alive", tenant)] == 0
    assert got[("rlm_serve_runs_total", (("status", "cancelled"), ("tenant", svc.tenants["y"])))] == 1
    assert got[("rlm_serve_requests_rejected_total", (("reason", "unauthorized"), ("tenant", "")))] == 1
    assert got[("rlm_serve_process_containers_alive", ())] == 0
    assert (
        got[("rlm_serve_http_requests_total", (("code", "202"), ("method", "POST"), ("route", "/v1/runs")))]
        == 4
    )


def test_healthz_says_what_is_missing(service: Service, fresh_service) -> None:
    ok = httpx.get(f"{service.url}/healthz")
    assert ok.status_code == 200 and ok.json()["engine"]["ok"] and ok.json()["image"]["ok"]
    svc: Service = fresh_service({"t": {}}, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    down = httpx.get(f"{svc.url}/healthz")
    assert down.status_code == 503 and down.json()["status"] == "fail"
    assert not down.json()["engine"]["ok"] and "no Docker engine" in down.json()["engine"]["error"]
