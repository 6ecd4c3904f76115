"""A 1 GB upload streamed through ``multipart/form-data``: the service's memory stays flat."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from ..conftest import containers_of
from .harness import Service

pytestmark = pytest.mark.docker
GIB = 1 << 30
RSS_LIMIT = 400 << 20
BOUNDARY = "rlm-serve-test-boundary-7f3a"
CHUNK = (b"2025-01-01 INFO filler line of a very large upload\n" * 21_000)[: 1 << 20]


def _rss(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _body(size: int) -> tuple[Iterator[bytes], int]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="task"\r\n\r\nWhat is the secret code?\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="input"; filename="huge.log"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def parts() -> Iterator[bytes]:
        yield head
        for _ in range(size // len(CHUNK)):
            yield CHUNK
        yield tail

    return parts(), len(head) + size + len(tail)


def test_a_1_gb_upload_streams_to_disk_with_flat_memory(fresh_service) -> None:
    svc: Service = fresh_service(
        {"big": {"max_input_bytes": "2g"}}, env={"RLM_SANDBOX_MAX_INPUT_BYTES": "4g"}
    )
    pid = svc.proc.pid
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    body, length = _body(GIB)
    try:
        with svc.client("big", timeout=600) as client:
            answer = client.post(
                "/v1/runs",
                content=body,
                headers={
                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                    "Content-Length": str(length),
                },
            )
            assert answer.status_code == 202, answer.text
            run_id = answer.json()["id"]
            spooled = [p for p in svc.spool_entries() if p.name == run_id]
            assert [f.stat().st_size for f in spooled[0].iterdir()] == [GIB]  # all of it, on disk
            high_water = _rss(pid, "VmHWM")
            gone = client.delete(f"/v1/runs/{run_id}")  # the test is the upload, not a 1 GB run
    finally:
        done.set()
        sampler.join()
    print(
        f"\nservice RSS during a 1 GiB upload: peak {peak[0] >> 20} MiB, high-water mark {high_water >> 20} MiB"
    )
    assert peak[0] < RSS_LIMIT and high_water < RSS_LIMIT, (peak[0], high_water)
    assert gone.json()["status"] == "cancelled"
    assert containers_of(run_id) == []
    assert svc.spool_entries() == []


def test_an_upload_past_the_cap_stops_while_streaming(fresh_service) -> None:
    svc: Service = fresh_service({"capped": {"max_input_bytes": "8m"}})
    body, _length = _body(24 << 20)  # past the cap, within what the service drains after it
    with svc.client("capped", timeout=120) as client:
        answer = client.post(  # no Content-Length (chunked): only the streaming count can catch it
            "/v1/runs", content=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        )
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "input_too_large"
    assert svc.spool_entries() == []
    assert _rss(svc.proc.pid, "VmHWM") < RSS_LIMIT
