"""``rlm-sandbox doctor`` against the real engine: what passes here, what fails and says how to fix it."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rlm_sandbox.cli.main import main

pytestmark = pytest.mark.docker


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings from this machine's environment or files: each test says what it checks."""
    for key in list(os.environ):
        if key.startswith("RLM_SANDBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[Result, dict[str, Any]]:
    result = CliRunner().invoke(main, ["doctor", "--json", *args], env=env)
    out = json.loads(result.stdout)
    return result, {c["name"]: c for c in out["checks"]} | {"ok": out["ok"]}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_passes_on_this_machine(isolated: None, sandbox_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    result, checks = doctor()
    assert result.exit_code == 0, result.stdout
    assert checks["ok"] is True
    assert checks["docker engine"]["status"] == "ok" and "Docker " in checks["docker engine"]["detail"]
    assert checks["cgroups"]["detail"].startswith("cgroup v")
    hardened = checks["hardened start"]
    assert hardened["status"] == "ok", hardened
    for fact in ("no network (lo only)", "read-only root", "uid 10001", "memory 1024 MiB", "pids 128"):
        assert fact in hardened["detail"]
    assert checks["sandbox image"]["status"] == "ok" and sandbox_image in checks["sandbox image"]["detail"]
    assert checks["leftovers"]["status"] in ("ok", "warn")
    assert checks["model"]["status"] == "warn" and "RLM_SANDBOX_MODEL" in checks["model"]["fix"]
    # The human form: one line per check, marks first.
    plain = CliRunner().invoke(main, ["doctor"])
    assert plain.exit_code == 0
    lines = [line for line in plain.stdout.splitlines() if line[:1] in "✓✗!-"]
    assert len(lines) == len(checks) - 1 and lines[0].startswith("✓ docker engine:")


def test_reports_runsc(isolated: None, sandbox_image: str) -> None:
    import docker

    has_runsc = "runsc" in (docker.from_env().info().get("Runtimes") or {})
    _result, checks = doctor()
    runtime = checks["runtime"]
    assert "runsc" in runtime["detail"]
    assert runtime["status"] == ("ok" if has_runsc else "warn")
    if not has_runsc:
        assert "ensure-docker.sh" in runtime["fix"]
        return
    result, checks = doctor("--runtime", "runsc", "--memory", "256m")
    assert result.exit_code == 0, result.stdout
    assert "under runsc" in checks["hardened start"]["detail"]
    assert "memory 256 MiB" in checks["hardened start"]["detail"]


def test_a_missing_runtime_fails(isolated: None, sandbox_image: str) -> None:
    result, checks = doctor("--runtime", "no-such-runtime")
    assert result.exit_code == 1 and checks["runtime"]["status"] == "fail"
    assert checks["hardened start"]["status"] == "skip"


def test_reports_a_missing_key_without_printing_any(isolated: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("RLM_SANDBOX_MODEL", "openai/gpt-4o-mini")
    result, checks = doctor()
    key = checks["model key"]
    assert result.exit_code == 1 and checks["ok"] is False
    assert key["status"] == "fail" and "OPENAI_API_KEY" in key["detail"]
    assert "env RLM_SANDBOX_MODEL" in key["detail"] and key["fix"].startswith("export OPENAI_API_KEY=")
    secret = "sk-doctor-test-3f9a1c77e2"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    result, checks = doctor()
    assert checks["model key"]["status"] == "ok"
    plain = CliRunner().invoke(main, ["doctor"])
    assert secret not in result.stdout + plain.stdout + plain.stderr


def test_an_unknown_provider_fails(isolated: None) -> None:
    result, checks = doctor("--model", "nosuchprovider/some-model")
    assert result.exit_code == 1 and checks["model key"]["status"] == "fail"
    assert "provider" in checks["model key"]["detail"]


def test_api_base_unreachable_fails_and_reachable_passes(
    isolated: None, scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    url = f"http://127.0.0.1:{closed_port()}/v1"
    result, checks = doctor("--model", "openai/m", "--api-base", url)
    assert result.exit_code != 0
    assert checks["api base"]["status"] == "fail" and url in checks["api base"]["detail"]
    assert "flag --api-base" in checks["api base"]["detail"] and checks["api base"]["fix"]
    server = scripted()
    result, checks = doctor("--model", "openai/m", "--api-base", server.url)
    assert checks["api base"]["status"] == "ok" and "answered HTTP" in checks["api base"]["detail"]


@pytest.mark.parametrize("how", ["DOCKER_HOST", "--docker-url", "RLM_SANDBOX_DOCKER_URL"])
def test_engine_unreachable_fails_with_a_fix(
    isolated: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    url = f"unix://{tmp_path}/no-engine.sock"
    args: list[str] = []
    if how.startswith("--"):
        args = [how, url]
    else:
        monkeypatch.setenv(how, url)
    result, checks = doctor(*args)
    engine = checks["docker engine"]
    assert result.exit_code == 1 and engine["status"] == "fail"
    assert url in engine["detail"] and "ensure-docker.sh" in engine["fix"]
    assert checks["hardened start"]["status"] == "skip"
    plain = CliRunner().invoke(main, ["doctor", *args])
    assert plain.exit_code == 1 and "✗ docker engine" in plain.stdout and "fix:" in plain.stdout
    assert "Traceback" not in plain.stdout


def test_invalid_settings_exit_2(isolated: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_SANDBOX_MEMORY", "plenty")
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 2 and "env RLM_SANDBOX_MEMORY" in result.stderr


def test_doctor_reports_each_configured_engine() -> None:
    from click.testing import CliRunner

    from rlm_sandbox.cli.main import main

    r = CliRunner().invoke(
        main,
        ["doctor", "--engine", "unix:///var/run/docker.sock", "--engine", "unix:///run/rlm-no-engine.sock"],
    )
    text = " ".join(r.output.split())
    assert "engine unix:///var/run/docker.sock: Docker" in text
    assert "engine unix:///run/rlm-no-engine.sock" in text and "does not answer" in text
    r = CliRunner().invoke(main, ["doctor", "--engine", "unix:///run/rlm-no-engine.sock"])
    assert r.exit_code != 0 and "none of the 1 configured engines answers" in " ".join(r.output.split())
