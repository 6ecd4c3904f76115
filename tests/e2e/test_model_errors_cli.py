"""Model errors a person can act on, through the real CLI against the scripted server: a key the
server refuses, a key that is not set, garbage instead of a chat completion, and the flags
that bound a model call (--lm-timeout, --lm-retries)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from rlm_sandbox.testing import ScriptedModelServer, always_status, garbage

from ..helpers import cli, json_out

pytestmark = pytest.mark.docker
KEY_VARS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE")


def run_cli(
    *args: str, env_extra: dict[str, str] | None = None, stdin: bytes = b"abc"
) -> subprocess.CompletedProcess:
    """``cli`` with the OpenAI variables removed from the child's environment."""
    saved = {k: os.environ.pop(k) for k in KEY_VARS if k in os.environ}
    try:
        return cli(*args, stdin=stdin, env=env_extra or {})
    finally:
        os.environ.update(saved)


def created_containers(tenant: str, since: float) -> list[str]:
    """Containers of ``tenant`` the engine *created* since ``since`` (even if already removed)."""
    out = subprocess.run(
        [
            "docker",
            "events",
            "--since",
            f"{since:.3f}",
            "--until",
            f"{time.time():.3f}",
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            f"label=rlm-sandbox.tenant={tenant}",
            "--format",
            "{{.ID}}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_refused_key_fails_at_once_naming_the_variable(scripted) -> None:
    server = scripted(always_status(401, "Incorrect API key provided"))
    proc = run_cli("run", "--model", server.model_name, "--api-base", server.url, "--task", "t", "--json")
    out = json_out(proc)
    err = " ".join(proc.stderr.decode().split())
    assert proc.returncode == 5 and out["status"] == "lm_error"
    assert server.requests.count == 1  # never retried
    assert "OPENAI_API_KEY" in out["error"] and "no API key was sent" in out["error"]
    assert "hint: export OPENAI_API_KEY" in err
    # With a key, the same answer: one request, the variable named, the key never shown.
    server2 = scripted(always_status(403, f"key {ScriptedModelServer.api_key} may not use this model"))
    proc = run_cli(
        "run",
        "--model",
        server2.model_name,
        "--api-base",
        server2.url,
        "--task",
        "t",
        env_extra={"OPENAI_API_KEY": ScriptedModelServer.api_key},
    )
    text = " ".join((proc.stderr.decode() + proc.stdout.decode()).split())
    assert proc.returncode == 5 and server2.requests.count == 1
    assert "permission denied" in text and "OPENAI_API_KEY" in text
    assert ScriptedModelServer.api_key not in text


def test_a_server_that_needs_no_key_runs_without_one(scripted) -> None:
    server = scripted()
    proc = run_cli(
        "run",
        "--model",
        server.model_name,
        "--api-base",
        server.url,
        "--task",
        "What is the secret code?",
        stdin=b"line\nthe secret code is ZZ-1\n",
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == "ZZ-1"


@pytest.mark.parametrize("command", ["run", "demo"])
def test_a_missing_key_fails_before_any_container(command: str, tmp_path: Path) -> None:
    tenant = f"nokey-{uuid.uuid4().hex[:8]}"
    trace = tmp_path / "t.jsonl"
    since = time.time() - 1
    args = [command, "--model", "openai/gpt-4o-mini", "--tenant", tenant, "--trace", str(trace), "--json"]
    if command == "run":
        args += ["--task", "t"]
    proc = run_cli(*args)
    err = " ".join(proc.stderr.decode().split())
    assert proc.returncode == 5, err[-2000:]
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out["status"] == "lm_error" and out["lm_calls"] == 0 and out["containers"] == 0
    assert "OPENAI_API_KEY is not set" in out["error"]
    assert "hint: export OPENAI_API_KEY" in err
    assert created_containers(tenant, since) == []
    events = [json.loads(line)["event"] for line in trace.read_text().splitlines()]
    assert "node_start" not in events and "lm_start" not in events and events[-1] == "run_end"


GARBAGE = {
    "html": (
        garbage("<html><head><title>Proxy login</title></head><body>sign in</body></html>"),
        "Proxy login",
    ),
    "invalid_json": (garbage('{"choices": [{"mess', content_type="application/json"), '{"choices": [{"mess'),
    "empty_object": (garbage({}), "without choices (keys: none)"),
    "no_choices": (garbage({"id": "x", "object": "chat.completion"}), "without choices (keys: id, object)"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_from_the_server_says_what_came_back(scripted, case: str) -> None:
    policy, shown = GARBAGE[case]
    server = scripted(policy)
    proc = run_cli(
        "run",
        "--model",
        server.model_name,
        "--api-base",
        server.url,
        "--task",
        "t",
        env_extra={"OPENAI_API_KEY": ScriptedModelServer.api_key},
    )
    err = " ".join(proc.stderr.decode().split())  # as read, whatever the line breaks
    assert proc.returncode == 5, err[-2000:]
    assert server.requests.count == 1  # not retried: a server to fix, not to wait for
    assert "did not answer with a chat completion" in err and server.url in err and shown in err
    assert "APIResponse" not in err and "wait and run again" not in err
    assert "hint: point --api-base at an OpenAI-compatible API" in err
    assert ScriptedModelServer.api_key not in err


def test_lm_retries_and_lm_timeout_are_flags(scripted) -> None:
    failing = scripted(always_status(500))
    key = {"OPENAI_API_KEY": ScriptedModelServer.api_key}
    proc = run_cli(
        "run",
        "--model",
        failing.model_name,
        "--api-base",
        failing.url,
        "--task",
        "t",
        "--lm-retries",
        "2",
        env_extra=key,
    )
    assert proc.returncode == 5 and failing.requests.count == 2
    assert "after 2 attempts" in " ".join(proc.stderr.decode().split())
    slow = scripted(latency_s=6.0)
    proc = run_cli(
        "run",
        "--model",
        slow.model_name,
        "--api-base",
        slow.url,
        "--task",
        "t",
        "--lm-timeout",
        "1.5",
        "--lm-retries",
        "5",
        "--json",
        env_extra=key,
    )
    out = json_out(proc)
    # 1.5 s for the call in all: the one attempt used them, none was left for another.
    assert proc.returncode == 5 and out["status"] == "lm_error" and "within 1.5 s" in out["error"]
    assert slow.requests.count == 1
    assert "--lm-timeout" in " ".join(proc.stderr.decode().split())
    # ... and they are settings like any other.
    proc = run_cli(
        "run",
        "--model",
        failing.model_name,
        "--api-base",
        failing.url,
        "--task",
        "t",
        env_extra=key | {"RLM_SANDBOX_LM_RETRIES": "3"},
    )
    assert proc.returncode == 5 and failing.requests.count == 2 + 3
    shown = cli("config", "show", "--json", env={"RLM_SANDBOX_LM_TIMEOUT": "42"})
    settings = json.loads(shown.stdout)["settings"]
    assert (
        settings["lm_timeout"]["value"] == 42.0
        and settings["lm_timeout"]["source"] == "env RLM_SANDBOX_LM_TIMEOUT"
    )
    assert settings["lm_retries"]["source"] == "default"
