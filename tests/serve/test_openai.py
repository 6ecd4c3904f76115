"""The official ``openai`` client, pointed at the service, works unchanged."""

from __future__ import annotations

import httpx
import openai
import pytest

from ..conftest import containers_of
from .harness import Service, haystack, wait_for

pytestmark = pytest.mark.docker


def _client(service: Service, short: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=service.tokens[short], **kw)


def test_chat_completions_answer_with_usage_of_the_whole_tree(service: Service) -> None:
    client = _client(service, "a")
    assert [m.id for m in client.models.list()] == ["rlm-sandbox"]
    reply = client.chat.completions.create(
        model="rlm-sandbox",
        messages=[
            {"role": "user", "content": haystack("OA-5150")},
            {"role": "user", "content": "What is the secret code?"},
        ],
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "OA-5150"
    assert reply.choices[0].finish_reason == "stop"
    run = reply.model_extra["rlm"]
    with service.client("a") as http:
        got = http.get(f"/v1/runs/{run['id']}").json()
    assert got["status"] == "ok" and got["lm_calls"] >= 2  # a root and its sub-calls
    assert reply.usage.prompt_tokens == got["tokens"]["prompt"] > 0
    assert reply.usage.completion_tokens == got["tokens"]["completion"] > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_context_field_streaming_and_typed_errors(service: Service) -> None:
    client = _client(service, "b", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="rlm-sandbox",
            messages=[{"role": "system", "content": "ignored: the context field is the input"},
                      {"role": "user", "content": "What is the secret code?"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"context": haystack("ST-2020"), "max_steps": 4},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ST-2020"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.url}/v1", api_key="not-a-token", max_retries=0).models.list()
    with pytest.raises(openai.UnprocessableEntityError, match="depth"):
        client.chat.completions.create(
            model="rlm-sandbox", messages=[{"role": "user", "content": "x"}], extra_body={"depth": 4}
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


def test_a_client_that_goes_away_cancels_its_run(service: Service) -> None:
    # the client gives up after 3 s and closes its connection
    with service.client("c", timeout=httpx.Timeout(60, read=3)) as client, pytest.raises(httpx.ReadTimeout):
        client.post(
            "/v1/chat/completions",
            json={
                "model": "rlm-sandbox",
                "messages": [{"role": "user", "content": "Sleep 300 seconds, then answer."}],
            },
        )
    with service.client("c") as client:
        newest = max(client.get("/v1/runs").json()["data"], key=lambda r: r["created"])
        wait_for(
            lambda: client.get(f"/v1/runs/{newest['id']}").json()["status"] == "cancelled", 15, "cancelled"
        )
        assert "went away" in client.get(f"/v1/runs/{newest['id']}").json()["error"]
    assert containers_of(newest["id"]) == []
