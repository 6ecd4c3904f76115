"""``backend="local"``: the same kernel as a plain subprocess (no Docker, and no sandbox)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from rlm_sandbox.errors import ConfigError, SandboxCrashed
from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.core import Sandbox
from rlm_sandbox.sandbox.local_backend import shared_local_backend
from rlm_sandbox.testing import rlm_policy

from ..helpers import cells_then_final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_the_kernel_runs_as_a_subprocess_with_state_limits_and_no_host_secrets(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret-local")
    with Sandbox(backend="local", cell_timeout=5) as sb:
        assert sb.id and sb.id.startswith("local-")
        sb.load_context(["doc one", "doc two"])
        r = sb.execute("import os\nn = len(context)\nprint(n, type(context).__name__, dict(os.environ))")
        assert r.error is None and r.stdout.startswith("2 list {")
        assert "sk-host-secret-local" not in r.stdout
        assert sb.execute("print(n * 21)").stdout == "42\n"
        slow = sb.execute("while True:\n    pass", timeout=0.5)
        assert slow.timed_out and "time limit" in (slow.error or "")
        assert sb.execute("print(n)").stdout == "2\n"  # interrupted, not lost
        child = sb.execute("import subprocess\np = subprocess.Popen(['sleep', '60'])\nprint(p.pid)")
        pid = int(child.stdout)
        assert _alive(pid)
        workdir = sb.execute("import os\nprint(os.getcwd())").stdout.strip()
        assert workdir.startswith("/tmp/rlm-local-")
    # Closing kills the whole process group (SIGKILL lands at once; the orphan is reaped by
    # init a moment later) and removes the private directory.
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not Path(workdir).exists()
    assert shared_local_backend().list({}) == []


def test_a_kernel_that_exits_is_a_typed_crash() -> None:
    with Sandbox(backend="local") as sb, pytest.raises(SandboxCrashed) as info:
        sb.execute("import os\nos._exit(3)")
    assert "exited with code 3" in str(info.value)


def test_a_memory_bomb_hits_the_address_space_limit() -> None:
    with Sandbox(backend="local", memory="128m") as sb:
        r = sb.execute("x = bytearray(1 << 30)")
        assert r.ename == "MemoryError", r
        assert sb.execute("print('still here')").stdout == "still here\n"


def test_a_run_says_it_was_unsafe_everywhere(scripted, tmp_path: Path) -> None:
    server = scripted(rlm_policy)
    trace = tmp_path / "t.jsonl"
    context = "\n".join(f"line {i}" for i in range(5000)) + "\nThe secret code is QX-4417.\n"
    cfg = RLMConfig(api_base=server.url, depth=2, trace=str(trace), sandbox=SandboxConfig(backend="local"))
    result = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
        context=context, task="What is the secret code?"
    )
    assert result.status == "ok" and result.answer == "QX-4417", result
    assert result.nodes > 1
    assert result.to_json()["unsafe_backend"] == "local"
    start = json.loads(trace.read_text().splitlines()[0])
    assert start["event"] == "run_start" and start["unsafe"] is True and start["backend"] == "local"
    assert shared_local_backend().list({}) == []


def test_docker_runs_do_not_grow_an_unsafe_key(scripted) -> None:
    from rlm_sandbox.rlm.result import RLMResult

    r = RLMResult(None, "ok", None, 0, 0, {"prompt": 0, "completion": 0}, 0.0, 0.0, 0, 0, 0, None)
    assert "unsafe_backend" not in r.to_json()


def test_refused_for_tenants(scripted) -> None:
    server = scripted(cells_then_final("print(1)"))
    cfg = RLMConfig(api_base=server.url, tenant="acme", sandbox=SandboxConfig(backend="local"))
    with pytest.raises(ConfigError, match="refused for tenants"):
        RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(context="x", task="t")


def test_the_cli_flag_warns_and_marks_the_json(scripted, tmp_path: Path) -> None:
    from ..helpers import cli, json_out

    server = scripted(cells_then_final("print(len(context))", final="FINAL(counted)"))
    src = tmp_path / "in.txt"
    src.write_text("hello\n" * 100)
    base = ["run", "--model", server.model_name, "--api-base", server.url, "--task", "t", "-i", str(src)]
    proc = cli(*base, "--backend", "local", "--json", env={"OPENAI_API_KEY": server.api_key})
    out = json_out(proc)
    assert out["status"] == "ok" and out["answer"] == "counted" and out["unsafe_backend"] == "local"
    assert "with NO sandbox" in " ".join(proc.stderr.decode().split())
    refused = cli(*base, "--backend", "local", "--tenant", "acme", env={"OPENAI_API_KEY": server.api_key})
    assert refused.returncode == 2 and b"refused for tenants" in refused.stderr
    # Not a setting: the environment cannot switch the sandbox off.
    env_try = cli(*base, "--json", env={"OPENAI_API_KEY": server.api_key, "RLM_SANDBOX_BACKEND": "local"})
    assert env_try.returncode == 2 or "unsafe_backend" not in env_try.stdout.decode()


def test_sessions_are_refused_for_tenants_too(scripted) -> None:
    server = scripted(cells_then_final("print(1)"))
    cfg = RLMConfig(api_base=server.url, tenant="acme", sandbox=SandboxConfig(backend="local"))
    rlm = RLM(model=server.model_name, config=cfg, api_key=server.api_key)
    with pytest.raises(ConfigError, match="refused for tenants"), rlm.session(context="x"):
        pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("after", ["spin", "sleep-between-cells"])
def test_a_dead_controller_takes_its_local_kernel_and_daemons_along(tmp_path: Path, after: str) -> None:
    """SIGKILL the controller while the cell spins with signals blocked (or the kernel idles
    between cells): the kernel, its children and the daemons it detached all end."""
    from ..helpers import ARMED, kill_controller_when_armed

    code = (
        "import os, signal, subprocess, json\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGALRM, signal.SIGUSR1, signal.SIGTERM])\n"
        "pids = [os.getpid(), subprocess.Popen(['sleep', '600']).pid]\n"
        "for i in range(2):\n"
        "    r, w = os.pipe()\n"
        "    first = os.fork()\n"
        "    if first == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            os.write(w, str(os.getpid()).encode())\n"
        "            while True:\n"
        "                pass\n"
        "        os._exit(0)\n"
        "    os.waitpid(first, 0)\n"
        "    pids.append(int(os.read(r, 32)))\n"
        f"llm_query('{ARMED} ' + json.dumps(pids))\n" + ("while True:\n    pass\n" if after == "spin" else "")
    )
    armed, _killed_at = kill_controller_when_armed(
        code, "local-orphan", tmp_path / "controller.log", backend="local"
    )
    pids = json.loads(armed.split(" ", 1)[1])
    assert len(pids) == 4
    try:
        deadline = time.monotonic() + 20  # generous: the supervisor acts within milliseconds
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], "processes outlived their controller"
    finally:
        for p in pids:  # never leave a spinner on the machine, whatever happened
            try:
                os.kill(p, 9)
            except OSError:
                pass
