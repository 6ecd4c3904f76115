"""The adversarial suite's harness: every attack is the first cell of a real RLM run.

Each attack runs through the whole engine (API, scripted model on loopback, real containers)
under the runtime named by ``RLM_SANDBOX_TEST_RUNTIME`` (runc by default, ``runsc`` for
gVisor). The harness plants host secrets in the environment first and, after the run,
searches for them in everything the run produced: the result, the trace, and every request
the model server received. Rows are collected for ``scripts/security_report.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.result import RLMResult
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.testing import ScriptedModelServer

from ..helpers import cells_then_final

RUNTIME = os.environ.get("RLM_SANDBOX_TEST_RUNTIME", "runc")
SECRET = f"sk-adversarial-{secrets.token_hex(8)}"
SECRET_VARS = {
    "RLM_TEST_SECRET": SECRET,
    "ANTHROPIC_API_KEY": SECRET + "-anthropic",
    "AWS_SECRET_ACCESS_KEY": SECRET + "-aws",
}
ROWS: list[dict[str, Any]] = []
# What each module attacks: the container itself, or the host around it (the rest).
SURFACES = {
    "test_attacks": "container",
    "test_orphans": "orphans",
    "test_host": "host",
    "test_memory_floods": "host memory",
    "test_untrusted_project": "project file",
    "test_terminal": "terminal",
    "test_faults": "host faults",
    "test_inputs_and_citations": "inputs",
}


@pytest.fixture(scope="session", autouse=True)
def planted_secrets() -> Any:
    old = {k: os.environ.get(k) for k in SECRET_VARS}
    os.environ.update(SECRET_VARS)
    yield SECRET
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    path = os.environ.get("RLM_SANDBOX_SECURITY_REPORT")
    if path:
        Path(path).write_text(json.dumps({"runtime": RUNTIME, "rows": ROWS}, indent=2))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Keep each test's outcome on it, for :func:`row_surface`."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed


CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def row_surface(request: pytest.FixtureRequest) -> Any:
    """Tag the rows a test adds with its module, so the report can tell host from container;
    a test that records no run of its own (a CLI check, a hostile file) still gets a row."""
    before, t0 = len(ROWS), time.monotonic()
    yield
    if len(ROWS) == before and CALL_FAILED in request.node.stash:
        failed = request.node.stash[CALL_FAILED]
        ROWS.append(
            {
                "attack": request.node.name,
                "runtime": RUNTIME,
                "status": "FAILED" if failed else "passed",
                "outcome": "the test's own checks " + ("FAILED" if failed else "held"),
                "seconds": round(time.monotonic() - t0, 2),
                "breached": failed,
            }
        )
    for row in ROWS[before:]:
        row.setdefault("surface", SURFACES.get(request.module.__name__.rsplit(".", 1)[-1], "host"))


@pytest.fixture(scope="session")
def sandbox_runtime() -> str | None:
    return None if RUNTIME in ("", "runc") else RUNTIME


@dataclass
class Outcome:
    result: RLMResult
    events: list[dict[str, Any]]
    bodies: list[dict[str, Any]]
    seconds: float
    cells: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first_output(self) -> str:
        return self.cells[0]["output"] if self.cells else ""

    def everything(self) -> str:
        return json.dumps([self.result.to_json(), self.events, self.bodies], default=str)


@pytest.fixture
def attack(
    scripted, run_id: str, sandbox_runtime: str | None, tmp_path: Path, request: pytest.FixtureRequest
):
    """Run ``code`` as the first cell of a real run; return what happened, secrets checked."""

    def run(
        code: str,
        *,
        context: Any = "some input",
        sandbox: dict[str, Any] | None = None,
        rlm: dict[str, Any] | None = None,
        final: str = "FINAL(done)",
        policy: Any = None,
        during: Any = None,
    ) -> Outcome:
        server = ScriptedModelServer(policy or cells_then_final(code, final=final), keep_bodies=5000).start()
        trace = tmp_path / "trace.jsonl"
        sb = {
            "cell_timeout": 5,
            "kill_grace": 1,
            "memory": "256m",
            "runtime": sandbox_runtime,
            **(sandbox or {}),
        }
        cfg = RLMConfig(
            api_base=server.url,
            trace=str(trace),
            sandbox=SandboxConfig(**sb),
            **({"max_steps": 3, "timeout": 60} | (rlm or {})),
        )
        engine = RLM(model=server.model_name, config=cfg, api_key=server.api_key)
        if during is not None:
            engine.listeners.append(during)
        t0 = time.monotonic()
        try:
            result = engine.run(context=context, task="Summarise the input.", run_id=run_id)
        finally:
            server.close()
        seconds = time.monotonic() - t0
        events = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
        out = Outcome(result, events, server.requests.bodies, seconds)
        out.cells = [e for e in events if e["event"] == "cell"]
        blob = out.everything()
        breached = any(v in blob for v in SECRET_VARS.values())
        ROWS.append(
            {
                "attack": request.node.name,
                "runtime": RUNTIME,
                "status": result.status,
                "outcome": (result.error or (out.first_output.splitlines() or [""])[-1])[:160],
                "seconds": round(seconds, 2),
                "breached": breached,
            }
        )
        assert not breached, "a planted host secret appears in the run's output, trace or model traffic"
        assert result.wall_s < 60
        return out

    return run
