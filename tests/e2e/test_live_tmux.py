"""The live tree as a person sees it: ``rlm-sandbox demo`` in a real terminal (tmux)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from rlm_sandbox.sandbox.backend import LABEL_TENANT

from ..conftest import unavailable

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


@pytest.fixture
def terminal(sandbox_image: str) -> Iterator[Callable[[str], str]]:
    """A detached tmux session; returns a function that starts a command and a screen reader."""
    if shutil.which("tmux") is None:
        unavailable("tmux is not installed: .ci/run installs it (bash scripts/ensure-test-tools.sh)")
    name = f"rlm-test-{uuid.uuid4().hex[:6]}"

    def start(command: str) -> str:
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", "130", "-y", "45", command], check=True
        )
        return name

    yield start
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def screen(session: str) -> str:
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    ).stdout


def wait_for(session: str, predicate: Callable[[str], bool], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen(session)
        if predicate(text):
            return text
        time.sleep(0.15)
    raise AssertionError(f"the screen never showed what was expected; it showed:\n{text}")


def demo_command(tmp_path: Path, *args: str) -> str:
    cli = f"{shlex.quote(sys.executable)} -m rlm_sandbox.cli"
    return (
        f"cd {shlex.quote(str(Path(__file__).resolve().parents[2]))} && "
        f"{cli} demo --trace {shlex.quote(str(tmp_path / 'trace.jsonl'))} {' '.join(args)}; "
        "echo EXIT=$?; sleep 120"
    )


def test_demo_shows_the_live_tree_and_the_answer(terminal, tmp_path: Path) -> None:
    session = terminal(demo_command(tmp_path, "--latency", "0.3"))
    # While it runs: the tree with the root and its children, each with a status.
    during = wait_for(session, lambda s: " d1 " in s and "budget left" in s, timeout=90)
    assert "root" in during and "rlm-sandbox · openai/scripted" in during
    assert any(word in during for word in ("thinking", "running a cell", "waiting on", "starting"))
    after = wait_for(session, lambda s: "EXIT=" in s, timeout=120)
    assert "EXIT=0" in after
    lines = after.splitlines()
    assert "173" in [line.strip() for line in lines], after  # the answer, on its own line
    assert "done" in after and "trace:" in after
    assert "running a cell" not in after.split("budget left")[-1]


def test_ctrl_c_stops_cleanly_and_says_so(terminal, tmp_path: Path) -> None:
    tenant = f"tmux-{uuid.uuid4().hex[:6]}"
    session = terminal(demo_command(tmp_path, "--latency", "1", "--tenant", tenant))
    wait_for(session, lambda s: " d1 " in s, timeout=90)
    subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
    after = wait_for(session, lambda s: "EXIT=" in s, timeout=30)
    assert "interrupted" in after and "EXIT=130" in after, after
    # The last frame is true (issue 14): nothing still "thinking", no container still up.
    frame = after.split("the run was stopped and every container removed")[0]
    assert "0 containers up" in frame and "stopped: interrupted (SIGINT)" in frame, after
    for busy in ("thinking", "running a cell", "waiting on", "starting"):
        assert busy not in frame, after
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"label": f"{LABEL_TENANT}={tenant}"}) == []
    assert "Traceback" not in after
