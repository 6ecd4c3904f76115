"""What the service refuses, and how: 401, 404, 413, 415, 422, 429 with Retry-After; a body
or a log line never carries a token."""

from __future__ import annotations

import httpx
import pytest

from ..conftest import containers_of
from .conftest import INTRUDER_TOKEN
from .harness import Service, haystack, wait_for

pytestmark = pytest.mark.docker


def _no_token_in(service: Service, text: str) -> None:
    for token in [*service.tokens.values(), INTRUDER_TOKEN, "wrong-token-123"]:
        assert token not in text


def test_no_token_or_a_wrong_one_is_401(service: Service) -> None:
    with httpx.Client(base_url=service.url) as client:
        answers = [
            client.post("/v1/runs", json={"task": "t", "context": "c"}),
            client.get("/v1/models"),
            client.get("/v1/runs/whatever", headers={"Authorization": "Bearer wrong-token-123"}),
            client.post("/v1/runs", json={"task": "t"}, headers={"Authorization": "Basic d3Jvbmc6MTIz"}),
            client.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer wrong-token-123"}),
            # a project file's tenant, even a trusted project's (--trust-project), is nobody
            client.get("/v1/models", headers={"Authorization": f"Bearer {INTRUDER_TOKEN}"}),
        ]
    for answer in answers:
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"]["type"] == "authentication_error"
        _no_token_in(service, answer.text)


def test_another_tenants_run_is_404_as_if_it_did_not_exist(service: Service) -> None:
    with service.client("a") as a, service.client("b") as b:
        run_id = a.post(
            "/v1/runs", json={"task": "What is the secret code?", "context": haystack("OWN-1")}
        ).json()["id"]
        for method, path in [
            ("GET", f"/v1/runs/{run_id}"),
            ("GET", f"/v1/runs/{run_id}/events"),
            ("GET", f"/v1/runs/{run_id}/trace"),
            ("DELETE", f"/v1/runs/{run_id}"),
        ]:
            theirs = b.request(method, path)
            missing = b.request(method, path.replace(run_id, "srv-20250101-000000-000000000000"))
            assert theirs.status_code == missing.status_code == 404
            assert theirs.json() == missing.json()
        assert run_id not in [r["id"] for r in b.get("/v1/runs").json()["data"]]
        assert run_id in [r["id"] for r in a.get("/v1/runs").json()["data"]]
        wait_for(lambda: a.get(f"/v1/runs/{run_id}").json()["status"] == "ok", 60, "a's run answered")


def test_an_input_over_the_tenants_cap_is_413_and_leaves_no_spool(service: Service) -> None:
    big = b"INFO a line of a log that is too big for this tenant\n" * 60_000  # ~3 MB > 1m
    with service.client("small") as client:
        form = client.post(
            "/v1/runs", data={"task": "What is the secret code?"}, files={"input": ("big.log", big)}
        )
        as_json = client.post("/v1/runs", json={"task": "What is the secret code?", "context": big.decode()})
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "rlm-sandbox", "messages": [{"role": "user", "content": big.decode()},
                                                       {"role": "user", "content": "Count the lines."}]},
        )  # fmt: skip
    for answer in (form, as_json, chat):
        assert answer.status_code == 413, answer.text[:500]
        assert answer.json()["error"]["code"] == "input_too_large"
        assert "1048576" in answer.json()["error"]["message"]
    assert service.spool_entries() == []


def test_a_full_queue_is_429_with_retry_after(service: Service) -> None:
    with service.client("small") as client:
        first = client.post("/v1/runs", json={"task": "Sleep 60 seconds, then answer.", "context": "x"})
        second = client.post("/v1/runs", json={"task": "Sleep 60 seconds, then answer.", "context": "x"})
        assert (first.status_code, second.status_code) == (202, 202)
        assert (first.json()["status"], second.json()["status"]) == ("running", "queued")
        third = client.post("/v1/runs", json={"task": "Sleep 1 seconds, then answer.", "context": "x"})
        assert third.status_code == 429, third.text
        assert int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["code"] == "queue_full"
        for posted in (second, first):  # the queued one first: it must never start
            gone = client.delete(f"/v1/runs/{posted.json()['id']}")
            assert gone.status_code == 200 and gone.json()["status"] == "cancelled"
        assert client.get(f"/v1/runs/{second.json()['id']}/trace").text.count("\n") == 1  # run_end only
        again = client.post("/v1/runs", json={"task": "Sleep 1 seconds, then answer.", "context": "x"})
        assert again.status_code == 202
        client.delete(f"/v1/runs/{again.json()['id']}")
    for posted in (first, second, again):
        assert containers_of(posted.json()["id"]) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": ""}, "task"),
        ({"task": "   "}, "task"),
        ({"context": "no task"}, "task"),
        ({"task": "t", "depth": 0}, "depth"),
        ({"task": "t", "depth": 3}, "depth"),  # the service runs at depth 1: only tighter
        ({"task": "t", "max_steps": 10_000}, "max_steps"),
        ({"task": "t", "max_cost": "SECRET-VALUE-42"}, "max_cost"),
        ({"task": "t", "colour": "red"}, "colour"),
        ({"task": ["not", "text"]}, "task"),
    ],
)
def test_bad_fields_are_422_naming_the_field_not_its_value(service: Service, body: dict, field: str) -> None:
    with service.client("a") as client:
        answer = client.post("/v1/runs", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["param"] == field and field in error["message"]
    assert "SECRET-VALUE-42" not in answer.text
    _no_token_in(service, answer.text)


def test_malformed_bodies_are_refused_with_a_reason(service: Service) -> None:
    with service.client("a") as client:
        not_json = client.post("/v1/runs", content=b"{nope", headers={"content-type": "application/json"})
        wrong_type = client.post("/v1/runs", content=b"task=x", headers={"content-type": "text/plain"})
        two_files = client.post(
            "/v1/runs", data={"task": "t"}, files=[("input", ("a.txt", b"a")), ("input", ("b.txt", b"b"))]
        )
        other_file = client.post("/v1/runs", data={"task": "t"}, files={"context": ("a.txt", b"a")})
        unknown_model = client.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    assert wrong_type.status_code == 415
    assert two_files.status_code == 422 and "twice" in two_files.json()["error"]["message"]
    assert other_file.status_code == 422 and "'input'" in other_file.json()["error"]["message"]
    assert unknown_model.status_code == 404 and unknown_model.json()["error"]["code"] == "model_not_found"
    assert service.spool_entries() == []


def test_the_log_is_one_json_object_per_request_without_a_token(service: Service) -> None:
    def logged() -> list[dict]:
        return [line for line in service.log_lines() if line["kind"] == "request"]

    before = len(logged())
    with service.client("a") as client:
        client.get("/v1/runs/whatever?api_key=QUERY-SECRET")
    with httpx.Client(base_url=service.url) as anonymous:
        anonymous.get("/v1/models", headers={"Authorization": "Bearer wrong-token-123"})
    # a line is written once its response is complete: a moment after the client has it
    wait_for(lambda: len(logged()) >= before + 2, 10, "both requests logged")
    requests = logged()
    text = service.log.read_text()
    _no_token_in(service, text)
    assert "QUERY-SECRET" not in text and "sk-scripted" not in text
    assert {"ts", "method", "path", "status", "ms", "tenant", "client"} <= set(requests[-1])
    assert requests[-1]["status"] == 401 and requests[-1]["tenant"] is None
    assert requests[-2]["status"] == 404 and requests[-2]["tenant"] == service.tenants["a"]
    assert requests[-2]["path"] == "/v1/runs/whatever"
