"""What both model clients share: which path a model takes, the retry policy and its deadline,
the keys' names, what a server's garbage looks like to a person, and that the OpenAI path
sends the request body LiteLLM would send."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from rlm_sandbox.errors import LMError
from rlm_sandbox.rlm.lm import LiteLLMClient, OpenAICompatClient, make_client, needs_litellm
from rlm_sandbox.rlm.lm.base import KEY_ENV, Failure, GaveUp, RetryPolicy, excerpt, missing_key, scrub
from rlm_sandbox.rlm.lm.openai_compat import request_body
from rlm_sandbox.testing import ScriptedModelServer, always_status, garbage, rlm_policy

PROMPT = [{"role": "user", "content": 'TASK: What is "the code"?\n\nTEXT:\nx\nthe code is AB-12\n'}]
NO_KEYS = [name for names in KEY_ENV.values() for name in names] + ["OPENAI_BASE_URL", "OPENAI_API_BASE"]


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NO_KEYS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as srv:
        yield srv


# ---- which path


@pytest.mark.parametrize(
    ("model", "api_base", "litellm"),
    [
        ("openai/gpt-4o-mini", None, False),  # OpenAI itself
        ("openai/my-local-model", "http://127.0.0.1:8000/v1", False),  # any OpenAI-compatible server
        ("openai/anthropic/claude-sonnet-4.5", "https://openrouter.ai/api/v1", False),  # a gateway
        ("gpt-4o-mini", None, False),  # a bare name LiteLLM files under openai
        ("llama3", "http://127.0.0.1:11434/v1", False),  # a bare unknown name sent to a named server
        ("llama3", None, True),  # ... and without one: LiteLLM says what is wrong with it
        ("openai/o1-pro", None, True),  # served through OpenAI's Responses API by LiteLLM
        ("anthropic/claude-sonnet-4-5", None, True),
        ("gemini/gemini-2.5-pro", None, True),
        ("bedrock/anthropic.claude-3-sonnet-20240229-v1:0", None, True),
        ("hosted_vllm/my-model", "http://127.0.0.1:8000/v1", True),  # LiteLLM's own provider
        ("litellm_proxy/gpt-4o-mini", "http://127.0.0.1:4000", True),
        ("ollama/llama3", "http://127.0.0.1:11434", True),  # Ollama's native API, not OpenAI's
    ],
)
def test_which_client_a_model_gets(model: str, api_base: str | None, litellm: bool) -> None:
    assert needs_litellm(model, api_base) is litellm
    client = make_client(model, api_base=api_base)
    assert isinstance(client, LiteLLMClient if litellm else OpenAICompatClient)
    assert client.model == model


# ---- the retry policy


def flaky(kinds: list[str], then: str = "done") -> tuple[list[float], object]:
    """An attempt that fails with ``kinds`` in turn, then succeeds; records the time each got."""
    given: list[float] = []

    def attempt(left: float) -> str:
        given.append(left)
        if len(given) <= len(kinds):
            raise Failure(kinds[len(given) - 1])
        return then

    return given, attempt


def kind_of(exc: BaseException) -> str:
    return exc.kind if isinstance(exc, Failure) else "other"


@pytest.mark.parametrize("kind", ["rate_limit", "timeout", "connection", "server"])
def test_transient_failures_are_retried(kind: str) -> None:
    _given, attempt = flaky([kind, kind])
    result, attempts = RetryPolicy(4, 0.01, 0.02).run(attempt, timeout_s=30, kind_of=kind_of)  # type: ignore[arg-type]
    assert (result, attempts) == ("done", 3)


@pytest.mark.parametrize("kind", ["auth", "bad_request", "not_found", "bad_response", "bad_config", "other"])
def test_other_failures_are_not(kind: str) -> None:
    given, attempt = flaky([kind])
    with pytest.raises(GaveUp) as info:
        RetryPolicy(4, 0.01, 0.02).run(attempt, timeout_s=30, kind_of=kind_of)  # type: ignore[arg-type]
    assert info.value.attempts == 1 and len(given) == 1 and not info.value.deadline
    assert isinstance(info.value.cause, Failure) and info.value.cause.kind == kind


def test_each_attempt_gets_only_the_time_left() -> None:
    given, attempt = flaky(["server", "server"])
    RetryPolicy(5, 0.2, 0.2).run(attempt, timeout_s=10, kind_of=kind_of)  # type: ignore[arg-type]
    assert given[0] <= 10 and given[1] < given[0] - 0.15 and given[2] < given[1] - 0.15


def test_no_wait_reaches_past_the_deadline() -> None:
    _given, attempt = flaky(["rate_limit"] * 10)
    start = time.monotonic()
    with pytest.raises(GaveUp) as info:
        # Retry-After asks for 5 s; the call has 1 s: giving up at once beats sleeping past it.
        RetryPolicy(10, 0.01, 8.0).run(attempt, timeout_s=1.0, kind_of=kind_of, retry_after=lambda e: 5.0)  # type: ignore[arg-type]
    assert info.value.attempts == 1 and info.value.deadline
    assert time.monotonic() - start < 1.0  # it did not sleep at all (5 s asked, not slept)


def test_retry_after_lengthens_the_wait_up_to_the_cap() -> None:
    _given, attempt = flaky(["rate_limit"])
    start = time.monotonic()
    RetryPolicy(3, 0.01, 0.5).run(attempt, timeout_s=30, kind_of=kind_of, retry_after=lambda e: 60.0)  # type: ignore[arg-type]
    waited = time.monotonic() - start
    assert waited >= 0.5  # the header was honoured up to the cap (a lower bound: never flaky)


# ---- keys


@pytest.mark.parametrize(
    ("model", "api_base", "api_key", "env", "missing"),
    [
        ("openai/gpt-4o-mini", None, None, {}, "OPENAI_API_KEY"),
        ("gpt-4o-mini", None, None, {}, "OPENAI_API_KEY"),
        ("openai/gpt-4o-mini", None, "sk-given", {}, None),
        ("openai/gpt-4o-mini", None, None, {"OPENAI_API_KEY": "sk-x"}, None),
        ("openai/gpt-4o-mini", None, None, {"OPENAI_API_KEY": "  "}, "OPENAI_API_KEY"),
        ("openai/local", "http://127.0.0.1:8000/v1", None, {}, None),  # a named server may need none
        ("openai/local", None, None, {"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}, None),
        ("gemini/gemini-2.5-pro", None, None, {}, "GEMINI_API_KEY"),
        ("gemini/gemini-2.5-pro", None, None, {"GOOGLE_API_KEY": "x"}, None),
        ("groq/llama3-8b-8192", None, None, {}, "GROQ_API_KEY"),
        ("bedrock/anthropic.claude-3-sonnet-20240229-v1:0", None, None, {}, None),  # profiles, roles
        ("anthropic/claude-sonnet-4-5", None, None, {}, None),  # workload identity
        ("ollama/llama3", None, None, {}, None),
        ("llama3", None, None, {}, None),  # unknown to LiteLLM: its own error says so
    ],
)
def test_missing_key(
    model: str, api_base: str | None, api_key: str | None, env: dict[str, str], missing: str | None
) -> None:
    assert missing_key(model, api_base=api_base, api_key=api_key, env=env) == missing


SAMPLE_MODELS = {
    "openai": "openai/gpt-4o-mini",
    "gemini": "gemini/gemini-2.5-pro",
    "groq": "groq/llama3-8b-8192",
    "mistral": "mistral/mistral-large-latest",
    "deepseek": "deepseek/deepseek-chat",
    "xai": "xai/grok-2",
    "together_ai": "together_ai/meta-llama/Llama-3-70b",
    "cerebras": "cerebras/llama3.1-8b",
    "openrouter": "openrouter/openai/gpt-4o",
}


@pytest.mark.parametrize("provider", sorted(KEY_ENV))
def test_the_key_table_agrees_with_litellm(
    provider: str, no_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusing a run for a missing key must never refuse one LiteLLM would have served: each
    provider of the table needs a key by LiteLLM's own check, and the variable we name is one
    that satisfies it."""
    from rlm_sandbox.rlm.lm import preload_litellm

    litellm = preload_litellm()
    model = SAMPLE_MODELS[provider]
    missing = litellm.validate_environment(model=model)["missing_keys"]
    assert KEY_ENV[provider][0] in missing, (provider, missing)
    monkeypatch.setenv(KEY_ENV[provider][0], "set-for-the-test")
    assert litellm.validate_environment(model=model)["missing_keys"] == []
    assert missing_key(model, api_base=None, api_key=None) is None


def test_a_missing_key_is_refused_before_any_request(no_keys: None, server: ScriptedModelServer) -> None:
    with pytest.raises(LMError) as info:
        OpenAICompatClient("openai/gpt-4o-mini").check_credentials()
    err = info.value
    assert err.kind == "auth" and err.attempts == 0 and "OPENAI_API_KEY" in str(err)
    assert "export OPENAI_API_KEY" in err.hint
    OpenAICompatClient("openai/gpt-4o-mini", api_base=server.url).check_credentials()  # may need none
    assert server.requests.count == 0


def test_a_server_that_wants_a_key_says_which(no_keys: None, server: ScriptedModelServer) -> None:
    server.policy = always_status(401, "Missing bearer token")
    with pytest.raises(LMError) as info:
        OpenAICompatClient(server.model_name, api_base=server.url).completion(PROMPT)
    assert info.value.kind == "auth" and server.requests.count == 1
    assert "no API key was sent" in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    assert "authorization" not in {k.lower() for k in (server.requests.last() or {})}


# ---- text from outside


def test_scrub_removes_keys_escapes_and_length() -> None:
    text = (
        "\x1b[31mdenied\x1b[0m for sk-live-abcdef123456 and the key my-own-key-123 "
        "(Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload, api_key=abcdef987654)\r\nnext line"
    )
    shown = scrub(text, key="my-own-key-123")
    for secret in ("abcdef123456", "my-own-key-123", "eyJhbGciOiJIUzI1NiJ9", "abcdef987654"):
        assert secret not in shown
    assert "\x1b" not in shown and "\n" not in shown and "\r" not in shown
    assert "denied" in shown and "next line" in shown
    assert len(scrub("x" * 5000)) <= 300


def test_excerpt_is_short_and_quoted() -> None:
    page = b"<html><head><title>Sign in</title></head><body>" + b"x" * 10_000 + b"</body></html>"
    shown = excerpt(page)
    assert shown.startswith("'<html><head><title>Sign in</title>") and len(shown) <= 170
    assert excerpt(b"") == "an empty body"
    assert excerpt(b"\xff\xfe\x00binary") != ""


# ---- garbage from a server


GARBAGE = {
    "html": (
        garbage("<html><head><title>Sign in to the proxy</title></head></html>"),
        "Sign in to the proxy",
    ),
    "invalid_json": (garbage('{"choices": [', content_type="application/json"), "not valid JSON"),
    "empty_object": (garbage({}), "without choices"),
    "no_choices": (garbage({"object": "chat.completion", "usage": {"prompt_tokens": 1}}), "without choices"),
}


@pytest.mark.parametrize("path", ["httpx", "litellm"])
@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_says_what_came_back_and_from_where(
    server: ScriptedModelServer, path: str, case: str
) -> None:
    policy, said = GARBAGE[case]
    server.policy = policy
    cls = OpenAICompatClient if path == "httpx" else LiteLLMClient
    with pytest.raises(LMError) as info:
        cls(server.model_name, api_base=server.url, api_key=server.api_key, retry_wait_s=0.01).completion(
            PROMPT
        )
    err = info.value
    assert err.kind == "bad_response" and server.requests.count == 1  # not retried: a server to fix
    text = str(err)
    assert said in text or (case == "invalid_json" and "not JSON" in text), text
    assert server.url in text
    assert "APIResponse" not in text and "wait and run again" not in err.hint
    assert "--api-base" in err.hint


def test_garbage_never_shows_the_key(server: ScriptedModelServer) -> None:
    key = "sk-secret-key-that-must-not-show-123"
    server.policy = garbage(f"<html>your key {key} is wrong \x1b]0;owned\x07</html>")
    with pytest.raises(LMError) as info:
        OpenAICompatClient(server.model_name, api_base=server.url, api_key=key).completion(PROMPT)
    assert key not in str(info.value) and "\x1b" not in str(info.value) and "\x07" not in str(info.value)


def test_an_error_inside_a_200_and_a_huge_body(
    server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.policy = garbage({"error": {"message": "model overloaded"}})
    with pytest.raises(LMError, match="model overloaded"):
        OpenAICompatClient(server.model_name, api_base=server.url).completion(PROMPT)
    from rlm_sandbox.rlm.lm import openai_wire

    monkeypatch.setattr(openai_wire, "MAX_RESPONSE_BYTES", 1000)
    server.policy = lambda request: "y" * 5000
    with pytest.raises(LMError, match="more than") as info:
        OpenAICompatClient(server.model_name, api_base=server.url).completion(PROMPT)
    assert info.value.kind == "bad_response"


# ---- the request body is LiteLLM's


@pytest.mark.parametrize("name", ["gpt-4o-mini", "o3", "gpt-5-mini", "my-local-model"])
@pytest.mark.parametrize("max_tokens", [None, 64])
def test_request_bodies_equal_litellms(name: str, max_tokens: int | None) -> None:
    with ScriptedModelServer(rlm_policy, served_name=name) as srv:
        for cls in (OpenAICompatClient, LiteLLMClient):
            cls(srv.model_name, api_base=srv.url, api_key=srv.api_key).completion(
                PROMPT, max_tokens=max_tokens
            )
        ours, theirs = srv.requests.bodies
    assert ours == theirs
    assert ours == request_body(srv.model_name, PROMPT, max_tokens=max_tokens)


# ---- LiteLLM only when a model needs it


@pytest.mark.parametrize(
    ("models", "imports"),
    [
        ({"model": "openai/gpt-4o-mini"}, False),
        ({"model": "openai/gpt-4o-mini", "sub_model": "anthropic/claude-sonnet-4-5"}, True),
        ({"model": "openai/x", "depth_models": {1: "gemini/gemini-2.5-pro"}}, True),
        ({"model": "hosted_vllm/x", "api_base": "http://127.0.0.1:9/v1"}, True),
    ],
)
def test_litellm_import_starts_only_when_a_model_needs_it(models: dict, imports: bool) -> None:
    config = {k: v for k, v in models.items() if k in ("depth_models", "api_base")}
    code = f"""
import json, sys
from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.lm import litellm_client
RLM(model={models["model"]!r}, sub_model={models.get("sub_model")!r}, config=RLMConfig(**{config!r}))
print(json.dumps({{"started": litellm_client._preload_thread is not None}}))
sys.stdout.flush()
import os; os._exit(0)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["started"] is imports


def test_a_missing_key_of_a_litellm_provider_is_refused_without_importing_it(no_keys: None) -> None:
    code = (
        "import sys, os\n"
        "from rlm_sandbox.errors import LMError\n"
        "from rlm_sandbox.rlm.lm.litellm_client import LiteLLMClient\n"
        "client = LiteLLMClient.__new__(LiteLLMClient)\n"  # made without starting the import
        "client.model, client.api_base, client._api_key = 'groq/llama3-8b-8192', None, None\n"
        "try:\n"
        "    client.check_credentials()\n"
        "except LMError as exc:\n"
        "    print(exc.kind, exc.attempts, 'GROQ_API_KEY' in str(exc), 'litellm' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in NO_KEYS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["auth", "0", "True", "False"], out.stderr


def test_urls_in_messages_lose_their_secrets(server: ScriptedModelServer) -> None:
    from rlm_sandbox.rlm.lm.base import shown_url

    assert shown_url("https://user:hunter2@gw.example.com:8443/v1?api-key=abc123&x") == (
        "https://user:***@gw.example.com:8443/v1?api-key=***&x"
    )
    server.policy = always_status(500)
    url = server.url.replace("http://", "http://me:hunter2@")
    with pytest.raises(LMError) as info:
        OpenAICompatClient(server.model_name, api_base=url, max_retries=1).completion(PROMPT)
    assert "hunter2" not in str(info.value) and "me:***@" in str(info.value)


def test_a_prompt_that_is_not_utf8_is_still_sent(server: ScriptedModelServer) -> None:
    text = "half a pair: \udc80 and the code is AB-12"
    resp = OpenAICompatClient(server.model_name, api_base=server.url).completion(
        [{"role": "user", "content": text}]
    )
    assert resp.text
    assert server.requests.last()["messages"][0]["content"] == text  # type: ignore[index]
