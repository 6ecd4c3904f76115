"""The real service in a child process, as an operator starts it: ``rlm-sandbox serve``
with tenants in a ``--config`` file, model keys in its environment, the scripted model on
loopback, JSON logs on stderr (kept in a file the tests read)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rlm_sandbox.testing import ScriptedModelServer, rlm_policy

from ..helpers import _is_node, _steps_done

SLEEP_TASK = re.compile(r"Sleep (\d+(?:\.\d+)?) seconds")


def policy(request: dict[str, Any]) -> Any:
    """The scripted RLM model, except for a task "Sleep N seconds": a cell that sleeps N
    seconds, then an answer (so a test can hold a run mid-cell)."""
    if _is_node(request):
        first_user = next((m for m in request["messages"] if m.get("role") == "user"), {})
        match = SLEEP_TASK.search(str(first_user.get("content")))
        if match:
            if _steps_done(request) == 0:
                return f"Sleeping.\n```repl\nimport time\ntime.sleep({match.group(1)})\nprint('awake')\n```"
            return f"FINAL(slept {match.group(1)})"
    return rlm_policy(request)


def haystack(code: str, lines: int = 200) -> str:
    filler = "".join(f"2025-01-01 INFO worker {i} did its job\n" for i in range(lines))
    return filler + f"The secret code is {code}\n" + filler


@dataclass
class Service:
    proc: subprocess.Popen
    url: str
    tenants: dict[str, str]  # short name -> real name (unique per service)
    tokens: dict[str, str]  # short name -> bearer token
    log: Path
    tmp: Path  # the service's TMPDIR: its spool lives under it
    extra_tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, short: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[short]}"}

    def client(self, short: str | None = None, **kw: Any) -> httpx.Client:
        headers = self.auth(short) if short else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 120), **kw)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def spool_entries(self) -> list[Path]:
        return [p for root in self.tmp.glob("rlm-serve-*") for p in root.iterdir()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_service(
    tmp: Path,
    model: ScriptedModelServer,
    tenants: dict[str, dict[str, Any]],
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Service:
    """Start ``rlm-sandbox serve --port 0`` with ``tenants`` (short name -> limits)."""
    tag = uuid.uuid4().hex[:6]
    names = {short: f"{short}-{tag}" for short in tenants}
    tokens = {short: f"tok-{short}-{secrets.token_hex(16)}" for short in tenants}
    lines = []
    for short, limits in tenants.items():
        lines.append(f'[tenants."{names[short]}"]')
        lines.append(f'token_sha256 = "{hashlib.sha256(tokens[short].encode()).hexdigest()}"')
        lines += [f"{k} = {json.dumps(v)}" for k, v in limits.items()]
    config = tmp / f"serve-{tag}.toml"
    config.write_text("\n".join(lines) + "\n")
    spool_tmp = tmp / f"tmp-{tag}"
    spool_tmp.mkdir()
    log = tmp / f"serve-{tag}.log"
    full_env = {
        **os.environ,
        "OPENAI_API_KEY": model.api_key,
        "RLM_SANDBOX_MODEL": model.model_name,
        "RLM_SANDBOX_API_BASE": model.url,
        "RLM_SANDBOX_CELL_TIMEOUT": "600",
        "XDG_CONFIG_HOME": str(tmp / "xdg"),
        "TMPDIR": str(spool_tmp),
        **(env or {}),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlm_sandbox.cli", "serve", "--port", "0", "--config", str(config), *args],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=full_env,
            cwd=cwd or tmp,
        )
    url = _wait_listening(proc, log)
    return Service(proc, url, names, tokens, log, spool_tmp)


def _wait_listening(proc: subprocess.Popen, log: Path, limit_s: float = 120) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        for line in log.read_text().splitlines():
            if '"listening"' in line:
                return json.loads(line)["url"]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve did not start listening:\n{log.read_text()[-3000:]}")


def events_of(client: httpx.Client, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    """``(id, event, data)`` of every Server-Sent Event of a run, until the stream ends."""
    out: list[tuple[int, str, dict[str, Any]]] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if not line:
                if "data" in fields:
                    out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value
    return out


def containers_with(label: str, value: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}={value}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def wait_for(predicate: Any, limit_s: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit_s} s: {what}")
        time.sleep(every)
