"""Many tenants' runs at once through the real service: answers, limits, events, cleanup."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from ..conftest import containers_of
from ..helpers import JSON_KEYS
from .conftest import TENANTS
from .harness import Service, events_of, haystack, wait_for

pytestmark = pytest.mark.docker
TASK = "What is the secret code?"


def _peak(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at once."""
    points = sorted(
        [(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda p: (p[0], p[1])
    )
    alive = peak = 0
    for _, step in points:
        alive += step
        peak = max(peak, alive)
    return peak


async def _submit_and_follow(service: Service, short: str, code: str) -> tuple[str, list[dict[str, Any]]]:
    async with httpx.AsyncClient(base_url=service.url, headers=service.auth(short), timeout=300) as client:
        posted = await client.post("/v1/runs", json={"task": TASK, "context": haystack(code)})
        assert posted.status_code == 202, posted.text
        body = posted.json()
        assert set(body) == {"id", "status"} and body["status"] in ("queued", "running")
        events: list[dict[str, Any]] = []
        async with client.stream("GET", f"/v1/runs/{body['id']}/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
        return body["id"], events


def test_thirty_runs_from_three_tenants_at_once(service: Service) -> None:
    jobs = [(short, f"{short.upper()}-{i:03d}") for short in ("a", "b", "c") for i in range(10)]

    async def main() -> list[tuple[str, list[dict[str, Any]]]]:
        return await asyncio.gather(*(_submit_and_follow(service, s, code) for s, code in jobs))

    done = asyncio.run(main())
    by_tenant: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
    for (short, code), (run_id, events) in zip(jobs, done, strict=True):
        assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end", events
        with service.client(short) as client:
            got = client.get(f"/v1/runs/{run_id}").json()
        assert list(got) == ["id", *JSON_KEYS], got  # run --json's object, plus its id
        assert got["status"] == "ok" and got["answer"] == code, got
        assert got["id"] == run_id and got["lm_calls"] > 0 and got["tokens"]["prompt"] > 0
        by_tenant.setdefault(short, []).append((run_id, events))
    for short, runs in by_tenant.items():
        limits = TENANTS[short]
        spans = [(ev[0]["ts"], ev[-1]["ts"]) for _, ev in runs]
        assert 1 <= _peak(spans) <= limits["max_runs"], (short, _peak(spans))
        if "max_containers" in limits:
            boxes = [
                (s["ts"], e["ts"])
                for _, ev in runs
                for s, e in zip(
                    [x for x in ev if x["event"] == "node_start"],
                    [x for x in ev if x["event"] == "node_end"],
                    strict=True,
                )
            ]
            assert _peak(boxes) <= limits["max_containers"]
    for run_id, _ in (r for runs in by_tenant.values() for r in runs):
        assert containers_of(run_id) == [], run_id


def test_a_late_sse_client_gets_every_event_in_order(service: Service) -> None:
    with service.client("c") as client:
        run_id = client.post(
            "/v1/runs", json={"task": "Sleep 2 seconds, then answer.", "context": "x" * 100}
        ).json()["id"]
        # Connect only once the run is well under way: its first events are long sent.
        wait_for(
            lambda: '"cell_start"' in client.get(f"/v1/runs/{run_id}/trace").text, 60, "the cell started"
        )
        late = events_of(client, run_id)
        trace = [json.loads(line) for line in client.get(f"/v1/runs/{run_id}/trace").text.splitlines()]
        again = events_of(client, run_id)  # after the end: the whole run once more
    assert [i for i, _, _ in late] == list(range(len(late)))
    assert [data for _, _, data in late] == trace == [data for _, _, data in again]
    assert [name for _, name, _ in late] == [e["event"] for e in trace]
    assert trace[0]["event"] == "run_start" and trace[-1]["event"] == "run_end"
    assert trace[-1]["status"] == "ok" and trace[-1]["answer"] == "slept 2"
    assert any(e["event"] == "cell" and "awake" in (e.get("output") or "") for e in trace)
    assert containers_of(run_id) == []


def test_a_multipart_upload_runs_over_the_uploaded_file(service: Service) -> None:
    with service.client("b") as client:
        posted = client.post(
            "/v1/runs",
            data={"task": TASK, "max_steps": "5"},
            files={"input": ("../../etc/app log.txt", haystack("UP-777").encode(), "text/plain")},
        )
        assert posted.status_code == 202, posted.text
        events = events_of(client, posted.json()["id"])
        got = client.get(f"/v1/runs/{posted.json()['id']}").json()
    assert got["status"] == "ok" and got["answer"] == "UP-777", got
    assert events[0][2]["max_steps"] == 5  # the request's tighter limit is the run's
    assert service.spool_entries() == []  # the upload is removed with its run
