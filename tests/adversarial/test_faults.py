"""Faults on the host's side: the model times out, the Docker engine goes away mid-run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.gc import collect_garbage
from rlm_sandbox.testing import HTTPReply, ScriptedModelServer

from ..conftest import containers_of
from ..helpers import cells_then_final, cli, json_out
from .conftest import ROWS, RUNTIME, SECRET_VARS

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


class EngineProxy:
    """A unix socket that forwards to the real engine until ``cut()`` drops every connection."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target = path, target
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cut_done = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.cut_done = True
        self.listener.close()
        os.unlink(self.path)
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass


def test_engine_disappears_mid_run(scripted, run_id: str, tmp_path: Path) -> None:
    proxy = EngineProxy(tmp_path / "engine.sock")
    server = scripted(cells_then_final("import time\ntime.sleep(30)"))
    cfg = RLMConfig(
        api_base=server.url,
        sandbox=SandboxConfig(docker_url=f"unix://{proxy.path}", cell_timeout=20, kill_grace=1),
    )
    engine = RLM(model=server.model_name, config=cfg, api_key=server.api_key)
    engine.listeners.append(
        lambda ev: threading.Timer(1.0, proxy.cut).start() if ev.get("event") == "node_start" else None
    )
    t0 = time.monotonic()
    result = engine.run(context="abc", task="t", run_id=run_id)
    took = time.monotonic() - t0
    assert result.status == "sandbox_error" and result.exit_code == 4, result
    assert "engine" in (result.error or "").lower(), result.error
    assert took < 30
    # With the engine back (the real socket), gc removes what the cut left behind.
    deadline = time.monotonic() + 10
    while containers_of(run_id) and time.monotonic() < deadline:
        collect_garbage(run_id=run_id, include_live=True)
        time.sleep(0.2)
    assert containers_of(run_id) == []


def test_a_model_that_never_answers_is_cut_at_the_call_deadline(scripted, run_id: str) -> None:
    """``lm_timeout`` is the whole call's deadline, retries included: a server that holds the
    answer past it ends the call once, not ``lm_retries`` times over."""

    def slow(request: dict) -> str:
        time.sleep(3)
        return "too late"

    server = scripted(slow)
    cfg = RLMConfig(api_base=server.url, lm_timeout=1, lm_retries=4)
    t0 = time.monotonic()
    result = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
        context="x", task="t", run_id=run_id
    )
    assert result.status == "lm_error" and result.exit_code == 5, result
    assert "did not answer within 1 s" in (result.error or "") and server.requests.count == 1
    assert (
        time.monotonic() - t0 < 20
    )  # generous (noisy machine): 4 full attempts would be 12 s of server time


def test_unique_runs_do_not_see_each_other(run_id: str) -> None:
    """gc of one run (or tenant) leaves another's containers alone."""
    from rlm_sandbox import Sandbox

    other = f"other-{uuid.uuid4().hex[:8]}"
    with Sandbox(SandboxConfig(run_id=run_id)) as mine, Sandbox(SandboxConfig(run_id=other)):
        report = collect_garbage(run_id=other, include_live=True)
        assert [i.id for i in report.removed] and mine.execute("print(1)").stdout == "1\n"
    assert containers_of(other) == []


def test_a_silent_model_server_cannot_hold_a_run_past_its_timeout(scripted, tmp_path: Path) -> None:
    """A server that accepts every request and never answers: ``--timeout 20`` ends the run
    at 20 s plus the documented grace (the fallback's try, then the stop), as a budget stop
    naming the timeout, with no container left -- whatever the client's timeouts and retries."""
    from rlm_sandbox.rlm.budget import TIMEOUT_GRACE_S
    from rlm_sandbox.testing import never_answers

    server = scripted(never_answers)
    tenant = f"silent-{uuid.uuid4().hex[:8]}"
    trace = tmp_path / "t.jsonl"
    args = ["run", "--model", server.model_name, "--api-base", server.url, "--task", "t", "--timeout", "20"]
    t0 = time.monotonic()
    proc = cli(
        *args,
        "--tenant",
        tenant,
        "--trace",
        str(trace),
        "--json",
        stdin=b"abc",
        env={"OPENAI_API_KEY": server.api_key},
        timeout=240,
    )
    took = time.monotonic() - t0
    out = json_out(proc)
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    stops = [e["budget"] for e in events if e["event"] == "budget"]
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=rlm-sandbox.tenant={tenant}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    shown = proc.stdout.decode() + proc.stderr.decode() + trace.read_text()
    breached = any(v in shown for v in SECRET_VARS.values())
    ROWS.append(
        {
            "attack": "silent model server (--timeout 20)",
            "runtime": RUNTIME,
            "status": out["status"],
            "outcome": (out["error"] or "")[:160],
            "seconds": round(took, 2),
            "breached": breached,
        }
    )
    assert proc.returncode == 3 and out["status"] == "budget_exhausted" and stops == ["timeout"], out
    assert "budget_exhausted (timeout)" in proc.stderr.decode()
    # Generous: 20 s of budget, the documented grace, and 30 s for the process to start
    # (LiteLLM's import) on a busy machine. Without the abandonment it ran past 150 s.
    assert took < 20 + TIMEOUT_GRACE_S + 30, took
    assert left == [] and not breached
    # The root's call was sent to the model and ended at the run's deadline: the client gives
    # up there itself (its timeout is the run's time left), or the run abandons it.
    kinds = {e["event"] for e in events}
    assert "lm_sent" in kinds and ({"lm_cut", "lm_abandoned"} & kinds)


HOSTILE_ANSWERS = {
    # A server that answers with terminal escapes (retitle the window, clear the screen) and
    # echoes the key it was sent, in an HTML page instead of a completion.
    "escapes_and_key_echo": lambda key: HTTPReply(
        200, f"\x1b]0;owned\x07\x1b[2J<html>key {key} \x1b[31mrejected</html>", content_type="text/html"
    ),
    # A server that floods: 40 MB where a completion is a few KB.
    "flood": lambda key: HTTPReply(200, b'{"choices": "' + b"A" * (40 << 20) + b'"}'),
}


@pytest.mark.parametrize("answer", sorted(HOSTILE_ANSWERS))
def test_a_hostile_model_server_is_read_as_untrusted(attack, answer: str) -> None:
    """What a model server answers reaches the person as a short, clean excerpt: no escape
    sequence, no key, no unbounded read (the body is cut at 32 MB), and no retry of garbage."""
    make = HOSTILE_ANSWERS[answer]
    out = attack("print('never runs')", policy=lambda request: make(ScriptedModelServer.api_key))
    result = out.result
    assert result.status == "lm_error" and result.exit_code == 5, result
    assert result.lm_calls == 1 and len(out.bodies) == 1  # not retried
    error = result.error or ""
    assert "did not answer with a chat completion" in error and len(error) < 600
    assert "\x1b" not in error and "\x07" not in error and ScriptedModelServer.api_key not in error
    assert "--api-base" in (result.hint or "")
    assert out.seconds < 30  # generous (noisy machine): contained at the first answer
