"""Scripted policies and small helpers the RLM tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rlm_sandbox.testing import Policy, rlm_policy

ROOT = Path(__file__).resolve().parents[1]
# Exactly the keys of `--json` and RLMResult.to_json(), in their order.
JSON_KEYS = [
    "answer",
    "status",
    "error",
    "steps",
    "lm_calls",
    "tokens",
    "cost_usd",
    "wall_s",
    "nodes",
    "containers",
    "max_depth_reached",
    "trace",
    "citations",
    "lm_cache_hits",
    "warnings",
]


def _is_node(request: dict[str, Any]) -> bool:
    msgs = request.get("messages") or []
    return bool(msgs) and msgs[0].get("role") == "system" and "```repl" in str(msgs[0].get("content"))


def _steps_done(request: dict[str, Any]) -> int:
    return sum(1 for m in request.get("messages") or [] if m.get("role") == "assistant")


def cells_then_final(*cells: str, final: str = "FINAL(done)", leaf: str = "leaf answer") -> Policy:
    """An RLM node that runs ``cells`` (one per step) and then answers ``final``."""

    def policy(request: dict[str, Any]) -> str:
        if not _is_node(request):
            return leaf
        step = _steps_done(request)
        if step < len(cells):
            return f"Running step {step + 1}.\n```repl\n{cells[step]}\n```"
        return final

    return policy


def never_finishes(request: dict[str, Any]) -> str:
    """A root that keeps exploring and never answers."""
    if not _is_node(request):
        return "leaf"
    return "Let me look further.\n```repl\nprint(len(context))\n```"


def root_then_policy(root: Policy, rest: Policy = rlm_policy) -> Policy:
    """Use ``root`` for the root node's conversation and ``rest`` for everything else."""

    def policy(request: dict[str, Any]) -> Any:
        msgs = request.get("messages") or []
        if _is_node(request) and "depth 0 of" in str(msgs[0].get("content")):
            return root(request)
        return rest(request)

    return policy


def cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rlm_sandbox.cli", *args],
        input=stdin,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


def json_out(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    out = proc.stdout.decode()
    assert out.count("\n") == 1, (
        f"--json must print exactly one line, got: {out!r}\nstderr: {proc.stderr.decode()[-2000:]}"
    )
    return json.loads(out)


def with_cell_line(line: str, policy: Policy = rlm_policy) -> Policy:
    """``policy``, with ``line`` added at the end of the root's first cell (e.g. a citation
    the test wants refused)."""

    def wrapped(request: dict[str, Any]) -> Any:
        reply = policy(request)
        msgs = request.get("messages") or []
        is_root = _is_node(request) and "depth 0 of" in str(msgs[0].get("content"))
        if (
            is_root
            and _steps_done(request) == 0
            and isinstance(reply, str)
            and reply.rstrip().endswith("```")
        ):
            return reply.rstrip()[: -len("```")] + line + "\n```\n"
        return reply

    return wrapped


# A controller as a user's program runs it, in a child process the test can SIGKILL mid-cell.
_CONTROLLER = r"""
import json, sys
from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.sandbox.config import SandboxConfig
a = json.loads(sys.argv[1])
sandbox = SandboxConfig(backend=a["backend"], runtime=a["runtime"], cell_timeout=600, kill_grace=5)
cfg = RLMConfig(api_base=a["url"], max_steps=3, timeout=1200, sandbox=sandbox)
engine = RLM(model=a["model"], config=cfg, api_key=a["key"])
engine.run(context="some input", task="Summarise the input.", run_id=a["run_id"])
"""
ARMED = "ARMED"


def kill_controller_when_armed(
    code: str,
    run_id: str,
    log_path: Path,
    *,
    runtime: str | None = None,
    backend: str = "docker",
    settle_s: float = 0.5,
) -> tuple[str, float]:
    """Run a controller whose first cell is ``code`` in a child process; SIGKILL it once the
    cell calls ``llm_query("ARMED ...")``. Returns that prompt and the monotonic time of the kill.

    While the controller lives, later steps wait for the model (the kernel sits idle between
    cells), so the kill may land mid-cell or between cells as the cell chooses.
    """
    import signal
    import threading
    import time

    from rlm_sandbox.testing import ScriptedModelServer

    armed, release = threading.Event(), threading.Event()
    report: list[str] = []

    def policy(request: dict[str, Any]) -> str:
        if not _is_node(request):
            prompt = str((request.get("messages") or [{}])[-1].get("content"))
            if prompt.startswith(ARMED):
                report.append(prompt)
                armed.set()
            return "ok"
        if _steps_done(request) == 0:
            return f"Step 1.\n```repl\n{code}\n```"
        release.wait(60)
        return "FINAL(done)"

    server = ScriptedModelServer(policy).start()
    args = {
        "url": server.url,
        "model": server.model_name,
        "key": server.api_key,
        "run_id": run_id,
        "runtime": runtime,
        "backend": backend,
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CONTROLLER, json.dumps(args)], cwd=ROOT, stdout=log, stderr=log
        )
        try:
            if not armed.wait(120):
                raise AssertionError("the cell never reported armed:\n" + log_path.read_text()[-3000:])
            time.sleep(settle_s)  # let the cell get on with what it does after arming
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            release.set()
            server.close()
    return report[0], killed_at
