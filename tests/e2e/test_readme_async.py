"""The README's asyncio example works as written: its block runs, with the model switched to
the scripted one on loopback (the only change), answers both questions, cancels the slow run
(no container left, its trace says cancelled) and asks the session its two questions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_sandbox.testing import ScriptedModelServer, generate_log, rlm_policy

from ..conftest import tenant_containers

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
MODEL_LINE = 'arlm = AsyncRLM(model="openai/gpt-4o-mini", config=RLMConfig(depth=2, max_cost=1.0))'


def async_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### asyncio", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "the README's asyncio section has no python block"
    return found.group(1)


def test_the_readme_asyncio_example_runs_as_written(tmp_path: Path, run_id: str) -> None:
    code = async_block()
    assert MODEL_LINE in code, "the example's model line changed: update this test with it"

    def policy(request: dict) -> object:
        # The two gathered questions answer at once; the third run ("Summarise") is slow.
        if any("Summarise" in m.get("content", "") for m in request["messages"]):
            import time

            time.sleep(8)  # still thinking when the example cancels it (after 5 s)
        return rlm_policy(request)

    generate_log(tmp_path / "big.log", 200_000, seed=21)
    with ScriptedModelServer(policy) as server:
        code = code.replace(
            MODEL_LINE,
            f'arlm = AsyncRLM(model="{server.model_name}", config=RLMConfig(depth=2, max_cost=1.0, '
            f'api_base="{server.url}", tenant="{run_id}"))',
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "OPENAI_API_KEY": ScriptedModelServer.api_key},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "How many requests failed? ok" in out and "Which host failed most? ok" in out
    assert "cancelled" in out.splitlines()
    assert "node root at depth 0" in out
    assert tenant_containers(run_id) == []
