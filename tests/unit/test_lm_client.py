"""Both model clients over real HTTP, against the scripted server on 127.0.0.1.

Every behaviour a user relies on is checked on both paths: the OpenAI protocol over httpx
(``openai/*`` and ``--api-base`` servers, no LiteLLM) and LiteLLM (every other provider;
driven here as ``openai/scripted`` through :class:`LiteLLMClient` itself). No key, no
internet: a policy scripts the provider's behaviour (answers, 429s, 5xx, 401s, slowness).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from rlm_sandbox.errors import LMError
from rlm_sandbox.rlm.lm import (
    LiteLLMClient,
    LMClient,
    LMResponse,
    OpenAICompatClient,
    litellm_loaded,
    preload_litellm,
)
from rlm_sandbox.testing import (
    ScriptedModelServer,
    always_status,
    fail_then,
    rlm_policy,
    sequence_policy,
)

PROMPT = [{"role": "user", "content": 'TASK: What is "the code"?\n\nTEXT:\nx\nthe code is AB-12\n'}]
SECRET_KEY = "sk-test-secret-0123456789abcdef"
PATHS = {"httpx": OpenAICompatClient, "litellm": LiteLLMClient}


@pytest.fixture(scope="module", autouse=True)
def _litellm() -> None:
    """Pay the LiteLLM import once for the module (several seconds)."""
    preload_litellm()


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as srv:
        yield srv


@pytest.fixture(params=list(PATHS))
def path(request: pytest.FixtureRequest) -> str:
    return request.param


def client(srv: ScriptedModelServer, path: str, **kw: object) -> LMClient:
    options: dict[str, object] = {"api_key": srv.api_key, "retry_wait_s": 0.01, "retry_max_wait_s": 0.05}
    options.update(kw)
    return PATHS[path](srv.model_name, api_base=srv.url, **options)  # type: ignore[arg-type]


def test_import_does_not_import_litellm_or_httpx() -> None:
    code = (
        "import rlm_sandbox.rlm.lm, sys; "
        "assert 'litellm' not in sys.modules, 'litellm imported eagerly'; "
        "assert 'httpx' not in sys.modules, 'httpx imported eagerly'"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr


def test_preload_is_thread_safe_and_configures_litellm() -> None:
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(preload_litellm())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in results}) == 1
    litellm = results[0]
    assert litellm_loaded()
    assert litellm.suppress_debug_info is True  # type: ignore[attr-defined]
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"].lower() == "true"


def test_both_clients_implement_the_interface(server: ScriptedModelServer, path: str) -> None:
    assert isinstance(client(server, path), LMClient)


def test_completion_records_text_and_usage(server: ScriptedModelServer, path: str) -> None:
    resp = client(server, path).completion(PROMPT)
    assert isinstance(resp, LMResponse)
    assert resp.text == "AB-12"
    assert resp.prompt_tokens > 0 and resp.completion_tokens > 0
    assert resp.cost_usd == 0.0  # the scripted model is not in the price map
    assert resp.latency_s > 0
    assert resp.model
    assert resp.attempts == 1
    assert server.requests.count == 1
    body = server.requests.last()
    assert body is not None
    assert body["messages"] == PROMPT
    assert body["model"] == "scripted"
    assert not body.get("stream")


def test_temperature_extra_and_max_tokens_are_sent(server: ScriptedModelServer, path: str) -> None:
    client(server, path, temperature=0.25, extra={"top_p": 0.5}).completion(PROMPT, max_tokens=17)
    body = server.requests.last()
    assert body is not None
    assert body["temperature"] == 0.25
    assert body["top_p"] == 0.5
    assert body["max_tokens"] == 17


def test_rate_limit_twice_then_success(server: ScriptedModelServer, path: str) -> None:
    server.policy = fail_then(rlm_policy, 429, 2)
    resp = client(server, path).completion(PROMPT)
    assert resp.text == "AB-12"
    assert resp.attempts == 3
    assert server.requests.count == 3


def test_retry_after_is_honoured(server: ScriptedModelServer, path: str) -> None:
    server.policy = fail_then(rlm_policy, 429, 1, headers={"Retry-After": "0.6"})
    start = time.perf_counter()
    resp = client(server, path, retry_max_wait_s=5.0).completion(PROMPT)
    assert resp.attempts == 2
    assert time.perf_counter() - start >= 0.6  # a lower bound: waiting less would ignore the header


def test_server_error_forever_gives_up_after_max_retries(server: ScriptedModelServer, path: str) -> None:
    server.policy = always_status(500)
    with pytest.raises(LMError) as info:
        client(server, path, max_retries=3).completion(PROMPT)
    err = info.value
    assert err.kind == "server"
    assert server.requests.count == 3
    assert "after 3 attempts" in str(err)


@pytest.mark.parametrize("status", [502, 503])
def test_other_5xx_are_retried(server: ScriptedModelServer, path: str, status: int) -> None:
    server.policy = fail_then(sequence_policy("fine"), status, 1)
    assert client(server, path).completion(PROMPT).text == "fine"
    assert server.requests.count == 2


def test_auth_error_is_not_retried_and_hides_the_key(server: ScriptedModelServer, path: str) -> None:
    server.policy = always_status(401, f"Incorrect API key provided: {SECRET_KEY}")
    with pytest.raises(LMError) as info:
        client(server, path, api_key=SECRET_KEY).completion(PROMPT)
    err = info.value
    assert err.kind == "auth"
    assert server.requests.count == 1
    assert "OPENAI_API_KEY" in str(err)
    assert SECRET_KEY not in str(err) and SECRET_KEY not in repr(err)
    assert SECRET_KEY not in repr(client(server, path, api_key=SECRET_KEY))


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "bad_request"), (403, "auth"), (404, "not_found"), (422, "bad_request")],
)
def test_client_errors_are_not_retried(
    server: ScriptedModelServer, path: str, status: int, kind: str
) -> None:
    server.policy = always_status(status)
    with pytest.raises(LMError) as info:
        client(server, path).completion(PROMPT)
    assert info.value.kind == kind
    assert server.requests.count == 1


def test_a_call_timeout_overrides_the_clients(server: ScriptedModelServer, path: str) -> None:
    server.latency_s = 1.0
    assert client(server, path, timeout_s=0.2).completion(PROMPT, timeout_s=10).text == "AB-12"
    assert server.requests.count == 1
    server.latency_s = 2.0
    with pytest.raises(LMError) as info:
        client(server, path, timeout_s=30, max_retries=5, retry_wait_s=0.1).completion(PROMPT, timeout_s=0.4)
    assert info.value.kind == "timeout"
    # 0.4 s in all: the first attempt used them up, so there was no time for a second.
    assert server.requests.count == 2 and info.value.attempts == 1
    assert "0.4 s" in str(info.value)


def test_timeout_is_one_deadline_for_every_attempt_and_wait(server: ScriptedModelServer, path: str) -> None:
    server.policy = always_status(503)
    server.latency_s = 0.3
    start = time.perf_counter()
    with pytest.raises(LMError) as info:
        # 20 attempts would take 6 s of server time alone; the call has 1.5 s in all.
        client(server, path, max_retries=20, retry_wait_s=0.2, retry_max_wait_s=0.4).completion(
            PROMPT, timeout_s=1.5
        )
    elapsed = time.perf_counter() - start
    assert info.value.kind in ("server", "timeout")  # the last attempt may be cut by the deadline
    assert 1 <= info.value.attempts < 20 and server.requests.count == info.value.attempts
    assert "were up" in str(info.value) or "did not answer within 1.5 s" in str(info.value)
    assert elapsed < 6.0, elapsed  # generous (noisy machine): 20 attempts could not fit


def test_connection_refused_mentions_api_base(path: str) -> None:
    with ScriptedModelServer() as srv:
        url = srv.url
    dead = PATHS[path](
        "openai/scripted", api_base=url, api_key="sk-x", max_retries=2, retry_wait_s=0.01, timeout_s=5
    )
    with pytest.raises(LMError) as info:
        dead.completion(PROMPT)
    assert info.value.kind == "connection"
    assert "--api-base" in str(info.value)
    assert info.value.attempts == 2


@pytest.mark.parametrize("model", ["no-such-provider/model-x", "totally-unknown-model"])
def test_unknown_model_name(model: str) -> None:
    with pytest.raises(LMError) as info:
        LiteLLMClient(model, api_key="sk-x", retry_wait_s=0.01).completion(PROMPT)
    assert info.value.kind == "not_found"
    assert "not known to LiteLLM" in str(info.value)
    assert "openai/gpt-4o-mini" in str(info.value)


def test_concurrent_calls_overlap_and_reuse_connections(path: str) -> None:
    with ScriptedModelServer(latency_s=0.5) as srv:
        lm = client(srv, path)
        lm.completion(PROMPT)  # warm the pooled HTTP client
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            texts = list(pool.map(lambda _: lm.completion(PROMPT).text, range(16)))
        elapsed = time.perf_counter() - start
        assert texts == ["AB-12"] * 16
        assert srv.requests.count == 17
        assert elapsed < 8.0, elapsed  # generous: serial would be 8 s; concurrent is ~0.5 s
        # Sequential calls ride on pooled keep-alive connections, not one per call.
        srv.latency_s = 0.0
        before = srv.requests.connections
        for _ in range(5):
            lm.completion(PROMPT)
        assert srv.requests.connections - before <= 1


def test_invalid_arguments(path: str) -> None:
    with pytest.raises(ValueError):
        PATHS[path]("")
    with pytest.raises(ValueError):
        PATHS[path]("openai/x", max_retries=0)


def test_a_plain_http_server_gets_no_tls_setup_and_its_redirects_are_not_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No TLS is ever spoken to an ``http://`` server, so the client sets none up (the CA
    bundle costs a twentieth of a second of the first call); and it follows none of its
    redirects, so no request leaves it for an unverified ``https://`` URL. With a proxy, or
    an ``https://`` server, both stay as the OpenAI SDK has them."""
    import http.server

    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", "https://example.invalid/v1/chat/completions")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        plain = OpenAICompatClient("openai/x", api_base=base, api_key="sk-x", max_retries=1)
        assert plain._transport_options() == {"verify": False, "follow_redirects": False}
        with pytest.raises(LMError) as info:
            plain.completion(PROMPT)
        assert "307" in str(info.value) and "redirect" in str(info.value)
    finally:
        httpd.shutdown()
    tls = OpenAICompatClient("openai/x", api_base="https://api.example.invalid/v1", api_key="sk-x")
    assert tls._transport_options() == {"follow_redirects": True}
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert plain._transport_options() == {"follow_redirects": True}
