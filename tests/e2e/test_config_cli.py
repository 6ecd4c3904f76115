"""Settings through the CLI: ``config show`` names every source; a run takes its settings from
a project's ``rlm-sandbox.toml`` and the environment, with flags on top."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rlm_sandbox.cli.main import main
from rlm_sandbox.testing import ScriptedModelServer

from ..helpers import json_out


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a child CLI: none of this machine's settings, a private user dir."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RLM_SANDBOX_")}
    return clean | {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "RLM_SANDBOX_NO_LIVE": "1"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    return root


def cli_in(
    cwd: Path, env: dict[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlm_sandbox.cli", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def show(cwd: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = cli_in(cwd, env, "config", "show", "--json", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_config_show_names_every_source(project: Path, env: dict[str, str], tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "rlm-sandbox" / "rlm-sandbox.toml"
    user.parent.mkdir(parents=True)
    user.write_text(
        'model = "openai/gpt-4o-mini"\ndepth = 2\nmax_steps = 20\n[tenants.acme]\nmax_cost = 3.0\n'
    )
    (project / "rlm-sandbox.toml").write_text("depth = 1\nmax_steps = 30\nmax_cost = 1.5\n")
    out = show(project, env | {"RLM_SANDBOX_MAX_STEPS": "40"}, "--max-cost", "0.5")
    s = out["settings"]
    assert s["model"] == {"value": "openai/gpt-4o-mini", "source": f"user file {user}"}
    assert s["depth"] == {"value": 1, "source": f"project file {project / 'rlm-sandbox.toml'}"}
    assert s["max_steps"] == {"value": 40, "source": "env RLM_SANDBOX_MAX_STEPS"}
    assert s["max_cost"] == {"value": 0.5, "source": "flag --max-cost"}
    assert s["memory"] == {"value": "1g", "source": "default"}
    assert s["tenants.acme.max_cost"] == {"value": 3.0, "source": f"user file {user}"}
    assert out["files"] == {"project": str(project / "rlm-sandbox.toml"), "user": str(user)}
    assert out["project_trust"]["trusted"] is False and out["ignored"] == []
    # The table a person reads carries the same facts.
    table = cli_in(project, env, "config", "show")
    text = table.stdout.decode()
    assert table.returncode == 0 and "flag" not in text and "env RLM_SANDBOX" not in text
    assert "project file" in text and "user file" in text and "max_steps" in text


def test_config_show_rejects_a_bad_file_in_one_line(project: Path, env: dict[str, str]) -> None:
    (project / "rlm-sandbox.toml").write_text("max_containers = 0\n")
    proc = cli_in(project, env, "config", "show")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.splitlines()[0] == (
        f"error: invalid setting max_containers = 0 (project file {project / 'rlm-sandbox.toml'}): "
        "Input should be greater than or equal to 1"
    )


def test_config_show_in_process(project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("RLM_SANDBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RLM_SANDBOX_DEPTH", "6")
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["config", "show", "--json", "--depth", "7", "--runtime", "runsc"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)["settings"]
    assert s["depth"] == {"value": 7, "source": "flag --depth"}
    assert s["runtime"] == {"value": "runsc", "source": "flag --runtime"}
    result = CliRunner().invoke(main, ["config", "show", "--json"])
    assert json.loads(result.stdout)["settings"]["depth"] == {"value": 6, "source": "env RLM_SANDBOX_DEPTH"}


def test_run_without_a_model_anywhere_is_a_usage_error(project: Path, env: dict[str, str]) -> None:
    proc = cli_in(project, env, "run", "--task", "t", stdin=b"x")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Missing option '--model'" in err and "RLM_SANDBOX_MODEL" in err


def test_run_with_a_bad_env_value_exits_2_naming_it(project: Path, env: dict[str, str]) -> None:
    proc = cli_in(
        project, env | {"RLM_SANDBOX_MAX_COST": "-1"}, "run", "--model", "m", "--task", "t", stdin=b"x"
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err
    assert "invalid setting max_cost = '-1' (env RLM_SANDBOX_MAX_COST)" in err


@pytest.mark.docker
def test_run_takes_model_and_depth_from_the_project_file(
    project: Path, env: dict[str, str], scripted, gen_log, sandbox_image: str
) -> None:
    stats = gen_log(300_000)
    server = scripted()
    tenant = f"cfg-{uuid.uuid4().hex[:8]}"
    (project / "rlm-sandbox.toml").write_text(
        f'model = "{server.model_name}"\napi_base = "{server.url}"\ndepth = 2\nmax_steps = 7\n'
        f'tenant = "{tenant}"\ntrace = "run-trace.jsonl"\n'
        "[tenants.other]\nmax_containers = 1\n"
    )
    key = {"OPENAI_API_KEY": ScriptedModelServer.api_key}
    # The user trusts this project (its api_base, trace and tenant apply); untrusted, it
    # could only tighten (tests/adversarial/test_untrusted_project.py).
    proc = cli_in(
        project,
        env | key | {"RLM_SANDBOX_MAX_STEPS": "8", "RLM_SANDBOX_TIMEOUT": "200"},
        "run",
        "--trust-project",
        "--task",
        'How many lines contain "ERROR disk"?',
        "-i",
        str(stats.path),
        "--json",
        "--timeout",
        "250",
    )
    out = json_out(proc)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert out["status"] == "ok" and out["answer"] == str(stats.disk_errors)
    assert out["trace"] == "run-trace.jsonl"
    # The model server (and so the key) came from a project file: the user is told where.
    said = " ".join(proc.stderr.decode().split())
    assert (
        f"the model server '{server.url}' comes from the trusted project file {project / 'rlm-sandbox.toml'}"
        in said
    )
    events = [json.loads(line) for line in (project / "run-trace.jsonl").read_text().splitlines()]
    start = events[0]
    assert start["event"] == "run_start"
    assert start["model"] == server.model_name and start["depth"] == 2 and start["tenant"] == tenant
    assert start["max_steps"] == 8  # env beats the file
    assert start["limits"]["timeout_s"] == 250  # the flag beats env; click's default shadows nothing
    assert start["limits"]["max_lm_calls"] == 500  # untouched: the built-in default
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=rlm-sandbox.tenant={tenant}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert left == []
