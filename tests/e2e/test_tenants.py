"""Tenants: labels on everything, limits shared by all runs of a tenant, nothing shared between tenants."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from rlm_sandbox import Sandbox
from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.tenants import TenantLimits, ledger
from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.docker_backend import docker_client

from ..conftest import tenant_containers
from ..helpers import never_finishes

pytestmark = pytest.mark.docker
COUNT = 'How many lines contain "ERROR disk"?'


def test_tenant_labels_every_container_and_the_trace(scripted, gen_log, run_id: str, tmp_path: Path) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    server = scripted()
    trace = tmp_path / "t.jsonl"
    seen: set[str] = set()
    cfg = RLMConfig(api_base=server.url, depth=2, tenant=tenant, trace=str(trace))
    rlm = RLM(model=server.model_name, config=cfg, api_key=server.api_key)
    rlm.listeners.append(lambda ev: seen.add(ev["container"]) if ev["event"] == "node_start" else None)
    client = docker_client()
    labels: list[dict] = []

    def spy(ev: dict) -> None:
        if ev["event"] == "node_start":
            labels.append(client.api.inspect_container(ev["container"])["Config"]["Labels"])

    rlm.listeners.append(spy)
    result = rlm.run(context=gen_log(100_000).path, task=COUNT, run_id=run_id)
    assert result.ok and len(seen) == result.nodes == 5
    assert all(lab["rlm-sandbox.tenant"] == tenant and lab["rlm-sandbox.run"] == run_id for lab in labels)
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert events[0]["event"] == "run_start" and events[0]["tenant"] == tenant
    assert tenant_containers(tenant) == []


def test_tenant_container_cap_spans_concurrent_runs(scripted, gen_log, run_id: str) -> None:
    tenant = f"capped-{uuid.uuid4().hex[:6]}"
    server = scripted()
    limits = {tenant: TenantLimits(max_containers=2)}
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(tenant_containers(tenant)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results = []

    def one() -> None:
        cfg = RLMConfig(api_base=server.url, depth=2, tenant=tenant, tenants=limits)
        results.append(
            RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
                context=gen_log(100_000).path, task=COUNT, run_id=run_id
            )
        )

    runs = [threading.Thread(target=one) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(300)
    done.set()
    watcher.join()
    assert [r.status for r in results] == ["ok", "ok"], results
    assert 1 <= peak <= 2


def test_tenant_cost_cap_spans_runs(run_id: str) -> None:
    from rlm_sandbox.rlm.lm import preload_litellm
    from rlm_sandbox.testing import ScriptedModelServer

    preload_litellm().register_model(
        {
            "openai/priced-tenant": {
                "input_cost_per_token": 0.0001,
                "output_cost_per_token": 0.0001,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    tenant = f"thrifty-{uuid.uuid4().hex[:6]}"
    limits = {tenant: TenantLimits(max_cost=0.5)}
    with ScriptedModelServer(never_finishes, served_name="priced-tenant") as server:

        def run(max_steps: int):
            cfg = RLMConfig(
                api_base=server.url, tenant=tenant, tenants=limits, max_steps=max_steps, lm_max_tokens=256
            )
            return RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
                context="abc", task="t", run_id=run_id
            )

        first = run(1)  # runs out of steps, having spent part of the tenant's money
        assert first.budget == "max_steps" and 0 < first.cost_usd < 0.5
        later = [run(50) for _ in range(3)]
    stopped = [r for r in later if r.budget == "tenant_max_cost"]
    assert stopped, [r.budget for r in later]
    assert "tenant" in (stopped[0].error or "")
    spent = ledger.account(tenant, None).cost_usd
    served = server.requests.prompt_tokens + server.requests.completion_tokens
    assert spent <= 0.5 and spent == pytest.approx(served * 0.0001, abs=1e-6)  # a hard cap
    assert ledger.account(tenant, None).reserved_cost == 0 and ledger.account(tenant, None).in_flight == 0


def test_nothing_is_shared_between_tenants(run_id: str) -> None:
    a_cfg = SandboxConfig(run_id=run_id, tenant="tenant-a")
    b_cfg = SandboxConfig(run_id=run_id, tenant="tenant-b")
    with Sandbox(a_cfg) as a, Sandbox(b_cfg) as b:
        a.execute(
            "open('/tmp/a-secret', 'w').write('A')\n"
            "open('/dev/shm/a-shm', 'w').write('A')\n"
            "import os\nprint(os.listdir('/tmp'))"
        )
        seen = b.execute(
            "import os\nprint(sorted(os.listdir('/tmp')), sorted(os.listdir('/dev/shm')))\n"
            "print([p for p in os.listdir('/proc') if p.isdigit()])"
        )
        assert "a-secret" not in seen.stdout and "a-shm" not in seen.stdout
        api = docker_client().api
        sources = set()
        for sb in (a, b):
            info = api.inspect_container(sb.id)
            # The one mount is the sandbox's own input file, read-only: never another's.
            (mount,) = info["Mounts"]
            assert mount["RW"] is False and mount["Destination"] == "/run/rlm-input"
            sources.add(mount["Source"])
            assert not info["HostConfig"]["Binds"]
            assert info["HostConfig"]["IpcMode"] == "private" and info["HostConfig"]["NetworkMode"] == "none"
            assert info["HostConfig"]["PidMode"] == ""  # own pid namespace
            assert not info["HostConfig"].get("VolumesFrom")
        assert len(sources) == 2
        # B cannot see A's processes.
        assert seen.stdout.count("'") < 40
