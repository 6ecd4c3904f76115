"""The prestart (sandbox/prestart.py): a forked child starts a container for a configuration,
the process takes it only for exactly that configuration, and whoever ends first, nothing is
left. Each case is its own process (a fork needs a process without threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ..conftest import ROOT, containers_of

pytestmark = pytest.mark.docker

SCRIPT = """
import json, os, sys, time
from rlm_sandbox.sandbox import prestart

run_id, case, path = sys.argv[1], sys.argv[2], sys.argv[3]
prestart.fork(run_id)
from pathlib import Path

from rlm_sandbox.sandbox.config import SandboxConfig

cfg = SandboxConfig(run_id=run_id, node_id=run_id + ".root", tenant=run_id, memory="256m")
if prestart.in_child():
    prestart.child_start(lambda: cfg, lambda: (path, "str", 1 << 40) if case.startswith("preload") else None)
out = {"child": prestart._pending.pid}
if case == "other":  # the run computed another configuration: declined
    out["taken"] = prestart.take(cfg.model_copy(update={"memory": "512m"}), 30) is not None
elif case == "abandon":  # the run ended before its root started
    prestart.abandon()
    out["taken"] = False
else:
    from rlm_sandbox.sandbox.core import Sandbox
    from rlm_sandbox.sandbox.input_file import spool_root

    handover = prestart.take(cfg, 30)
    out["taken"] = handover is not None
    out["preloaded"] = handover.preload is not None
    sb = Sandbox.adopt(cfg, handover)
    out["input_file"] = sb.input_file
    if case == "preload-changed":  # the file changed after the child loaded it
        Path(path).write_text("changed\\n" * 300_000)
    data = Path(path) if case.startswith("preload") else "x" * (2 << 20)
    out["via"] = sb.load_context(data).via
    out["cell"] = sb.execute("print(len(context))").stdout
    out["exit"] = sb.backend.exit_info(sb.id).running
    out["dir"] = sb._input_file.dir
    if case == "die":  # the run dies with its container alive: the child removes it
        print(json.dumps(out), flush=True)
        os._exit(3)
    sb.close()
    out["dir_left"] = os.path.exists(out["dir"])
print(json.dumps(out), flush=True)
"""


def run_case(run_id: str, case: str, path: str = "-") -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, run_id, case, path],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gone(run_id: str, child: int, seconds: float = 30.0) -> bool:
    """The child has ended (it may still be starting the container when the run declines)
    and no container of the run is left."""
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{child}") or containers_of(run_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_run_takes_the_container_made_for_its_configuration(run_id: str) -> None:
    out = run_case(run_id, "take")
    assert out["taken"] and out["input_file"] and out["exit"] is True
    assert out["cell"] == f"{2 << 20}\n"
    assert not out["dir_left"] and containers_of(run_id) == []  # close removed it, at once


def test_the_child_loads_the_runs_one_file_while_the_run_imports(run_id: str, tmp_path) -> None:
    path = tmp_path / "big.log"
    path.write_text("line of the input\n" * 200_000)
    out = run_case(run_id, "preload", str(path))
    assert out["preloaded"] and out["via"] == "file" and out["cell"] == f"{3_600_000}\n"
    assert containers_of(run_id) == []


def test_a_file_changed_since_the_childs_load_is_loaded_again(run_id: str, tmp_path) -> None:
    path = tmp_path / "big.log"
    path.write_text("line of the input\n" * 200_000)
    out = run_case(run_id, "preload-changed", str(path))
    assert out["preloaded"] and out["cell"] == f"{len('changed') * 300_000 + 300_000}\n"


@pytest.mark.parametrize("case", ["other", "abandon"])
def test_a_declined_container_is_removed_by_the_child(run_id: str, case: str) -> None:
    out = run_case(run_id, case)
    assert out["taken"] is False
    assert gone(run_id, out["child"])


def test_a_run_that_dies_leaves_nothing_behind(run_id: str) -> None:
    out = run_case(run_id, "die")
    assert out["taken"] and out["cell"] == f"{2 << 20}\n"
    assert gone(run_id, out["child"])
    deadline = time.monotonic() + 10
    while os.path.exists(out["dir"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(out["dir"])
