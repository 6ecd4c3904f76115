"""The CLI as a user runs it: a child process, real containers, the scripted model on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.testing import ScriptedModelServer

from ..conftest import ROOT, containers_of, tenant_containers
from ..helpers import JSON_KEYS, cli, json_out, never_finishes

pytestmark = pytest.mark.docker
COUNT = 'How many lines contain "ERROR disk"?'
KEY_ENV = {"OPENAI_API_KEY": ScriptedModelServer.api_key}


def spawn(*args: str, stdin: int | None = subprocess.PIPE, **env: str) -> subprocess.Popen[bytes]:
    """``rlm-sandbox ARGS`` in a child process, with the scripted server's key (and ``env``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rlm_sandbox.cli", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **KEY_ENV, **env},
    )


def base_args(server: ScriptedModelServer, run_id: str | None = None) -> list[str]:
    args = ["run", "--model", server.model_name, "--api-base", server.url]
    return args + (["--tenant", run_id] if run_id else [])


def test_json_shape_and_same_answer_as_the_api(scripted, gen_log, run_id: str, tmp_path: Path) -> None:
    stats = gen_log(1_000_000)
    server = scripted()
    trace = tmp_path / "trace.jsonl"
    proc = cli(
        *base_args(server),
        "--task",
        COUNT,
        "-i",
        str(stats.path),
        "--json",
        "--trace",
        str(trace),
        env=KEY_ENV,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json_out(proc)
    assert list(out) == JSON_KEYS
    assert out["status"] == "ok" and out["answer"] == str(stats.disk_errors) and out["error"] is None
    assert set(out["tokens"]) == {"prompt", "completion"} and out["trace"] == str(trace)
    assert out["nodes"] == 1 and out["containers"] == 1 and out["max_depth_reached"] == 1
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {"run_start", "node_start", "lm_call", "cell", "sub_call", "node_end", "run_end"} <= {
        e["event"] for e in events
    }
    api = RLM(model=server.model_name, config=RLMConfig(api_base=server.url), api_key=server.api_key).run(
        context=stats.path, task=COUNT, run_id=run_id
    )
    assert api.to_json()["answer"] == out["answer"] and list(api.to_json()) == JSON_KEYS
    assert (api.steps, api.lm_calls, api.nodes) == (out["steps"], out["lm_calls"], out["nodes"])


def test_stdin_input_and_plain_output(scripted, gen_log) -> None:
    stats = gen_log(300_000)
    server = scripted()
    proc = cli(
        *base_args(server), "--task", "What is the secret code?", stdin=stats.path.read_bytes(), env=KEY_ENV
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode() == "QX-4417\n"
    assert "ok in" in proc.stderr.decode()


def test_usage_errors_exit_2(scripted, tmp_path: Path) -> None:
    server = scripted()
    missing = cli(*base_args(server), "--task", "t", "-i", str(tmp_path / "nope.log"), env=KEY_ENV)
    assert missing.returncode == 2 and "input file not found" in missing.stderr.decode()
    no_task = cli("run", "--model", "x")
    assert no_task.returncode == 2 and "--task" in no_task.stderr.decode()
    bad_depth = cli(*base_args(server), "--task", "t", "--depth", "0", stdin=b"x")
    assert bad_depth.returncode == 2
    too_few = cli(
        *base_args(server), "--task", "t", "--depth", "3", "--max-containers", "2", stdin=b"x", env=KEY_ENV
    )
    assert too_few.returncode == 2 and "max-containers" in too_few.stderr.decode()


def test_budget_and_lm_exit_codes(scripted) -> None:
    loops = scripted(never_finishes)
    proc = cli(*base_args(loops), "--task", "t", "--max-steps", "2", "--json", stdin=b"abc", env=KEY_ENV)
    out = json_out(proc)
    assert (
        proc.returncode == 3 and out["status"] == "budget_exhausted" and "max-steps" in proc.stderr.decode()
    )
    from rlm_sandbox.testing import always_status

    dead = scripted(always_status(401))
    proc = cli(*base_args(dead), "--task", "t", "--json", stdin=b"abc", env=KEY_ENV)
    out = json_out(proc)
    assert proc.returncode == 5 and out["status"] == "lm_error" and "API key" in out["error"]
    assert ScriptedModelServer.api_key not in proc.stderr.decode() + proc.stdout.decode()


def _wait_for_containers(label: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=rlm-sandbox.tenant={label}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if found:
            return found
        time.sleep(0.1)
    return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_mid_run_remove_every_container(scripted, run_id: str, tmp_path: Path, sig: int) -> None:
    server = scripted(never_finishes, latency_s=0.3)
    trace = tmp_path / "t.jsonl"
    proc = spawn(*base_args(server, run_id), "--task", "t", "--trace", str(trace))
    proc.stdin.write(b"some input")  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    assert _wait_for_containers(run_id), proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    time.sleep(0.5)
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    assert code != 0
    assert tenant_containers(run_id) == []
    last = json.loads(trace.read_text().splitlines()[-1])
    assert last["event"] == "run_end" and last["status"] in ("error", "budget_exhausted")


def test_a_killed_controllers_root_container_is_removed_by_its_keeper(
    scripted, run_id: str, tmp_path: Path
) -> None:
    """The CLI's root container was started by a child forked at its start (sandbox/prestart.py),
    which keeps it for the run: SIGKILL the run, and the keeper removes it, input file too."""
    server = scripted(never_finishes, latency_s=0.3)
    trace = tmp_path / "trace.jsonl"
    big = tmp_path / "big.log"
    big.write_text("line of input\n" * 200_000)  # 2.8 MB: through the input file
    proc = spawn(*base_args(server, run_id), "--task", "t", "-i", str(big), "--trace", str(trace), stdin=None)
    assert _wait_for_containers(run_id), proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "node_start" not in (trace.read_text() if trace.exists() else ""):
        time.sleep(0.05)
    start = next(json.loads(line) for line in trace.read_text().splitlines() if '"node_start"' in line)
    assert start["prestarted"] is True and start["pooled"] is False
    from rlm_sandbox.sandbox.input_file import DIR_PREFIX, spool_root

    spools = list(Path(spool_root()).glob(f"{DIR_PREFIX}{proc.pid}-*"))
    assert len(spools) == 1  # named for the run, not for the child that made it
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (tenant_containers(run_id) or spools[0].exists()):
        time.sleep(0.1)
    assert tenant_containers(run_id) == [] and containers_of(run_id) == []
    assert not spools[0].exists()


def test_gc_removes_what_a_killed_controller_left(scripted, run_id: str) -> None:
    server = scripted(never_finishes, latency_s=0.3)
    # No prestart: its keeper would remove the container, and this is gc's test.
    proc = spawn(*base_args(server, run_id), "--task", "t", RLM_SANDBOX_PRESTART="0")
    proc.stdin.write(b"input")  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    left = _wait_for_containers(run_id)
    assert left
    proc.kill()
    proc.wait(timeout=30)
    assert tenant_containers(run_id) == left  # nobody cleaned up: the controller was SIGKILLed
    # A controller killed mid-load of a large input left its input file (sandbox/input_file.py).
    from rlm_sandbox.sandbox.input_file import DIR_PREFIX, spool_root

    spool = Path(spool_root()) / f"{DIR_PREFIX}{proc.pid}-{run_id}"
    spool.mkdir(mode=0o700)
    (spool / "input").write_bytes(b"a whole input" * 1000)
    dry = cli("gc", "--dry-run", "--tenant", run_id)
    assert (
        dry.returncode == 0 and "would remove 1" in dry.stdout.decode() and tenant_containers(run_id) == left
    )
    assert str(spool) in dry.stdout.decode() and spool.exists()
    other = cli("gc", "--tenant", run_id + "-other")
    assert "removed 0" in other.stdout.decode() and tenant_containers(run_id) == left
    # Input files have no tenant: those of dead controllers go whatever the filters.
    assert not spool.exists() and "input file(s) of controllers that died:" in other.stdout.decode()
    done = cli("gc", "--tenant", run_id)
    assert done.returncode == 0 and "removed 1" in done.stdout.decode()
    assert tenant_containers(run_id) == [] and containers_of(run_id) == []


def test_stdin_streams_byte_exact_into_the_kernel(scripted, gen_log) -> None:
    import hashlib

    from ..helpers import cells_then_final

    stats = gen_log(5_000_000)
    data = stats.path.read_bytes()
    server = scripted(
        cells_then_final(
            "import hashlib\nh = hashlib.sha256(context.encode()).hexdigest()", final="FINAL_VAR(h)"
        )
    )
    proc = cli(*base_args(server), "--task", "hash it", "--json", stdin=data, env=KEY_ENV)
    assert json_out(proc)["answer"] == hashlib.sha256(data).hexdigest()


def test_fan_out_really_overlaps(scripted, tmp_path: Path) -> None:
    from ..helpers import cells_then_final

    code = "answers = llm_query_batched([f'q{i}' for i in range(16)])\nprint(len(answers))"
    server = scripted(cells_then_final(code, final="FINAL(done)"), latency_s=0.5)
    trace = tmp_path / "t.jsonl"
    args = ["--task", "t", "--json", "--max-concurrency", "16", "--trace", str(trace)]
    out = json_out(cli(*base_args(server), *args, stdin=b"x", env=KEY_ENV))
    assert out["status"] == "ok" and out["lm_calls"] == 18
    (cell,) = [e for e in map(json.loads, trace.read_text().splitlines()) if e["event"] == "cell"]
    # 16 calls of 0.5 s one after another would take 8 s; overlapped, about one latency.
    assert cell["output"].strip() == "16" and cell["wall_s"] < 16 * 0.5 / 4, cell["wall_s"]
