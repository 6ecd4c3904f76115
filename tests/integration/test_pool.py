"""The warm pool hands out fresh, hardened sandboxes, one per node, and cleans up after itself."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.pool import SandboxPool

from ..conftest import containers_of

pytestmark = pytest.mark.docker


def wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_pool_hands_out_fresh_sandboxes_and_never_reuses_them(
    sandbox_config: SandboxConfig, run_id: str
) -> None:
    with SandboxPool(sandbox_config, 2) as pool:
        assert wait_for(lambda: pool.ready == 2)
        t0 = time.perf_counter()
        a, pooled_a = pool.acquire(lambda p: "A:" + p)
        took = time.perf_counter() - t0
        b, pooled_b = pool.acquire(lambda p: "B:" + p)
        assert pooled_a and pooled_b and a.id != b.id and took < 0.5
        a.execute("secret = 'only in a'")
        assert b.execute("print('secret' in dir())").stdout == "False\n"
        assert a.execute("print(llm_query('x'))").stdout == "A:x\n"
        assert b.execute("print(llm_query('x'))").stdout == "B:x\n"
        a.close()
        b.close()
        assert wait_for(lambda: pool.ready == 2)  # refilled with new containers
        c, _ = pool.acquire()
        assert c.id not in (a.id, b.id)
        c.close()
    assert wait_for(lambda: containers_of(run_id) == [], 10)


def test_idle_pool_empties_and_cold_starts_on_a_miss(run_id: str) -> None:
    cfg = SandboxConfig(run_id=run_id)
    with SandboxPool(cfg, 1, idle_timeout=1.0) as pool:
        assert wait_for(lambda: pool.ready == 1)
        assert wait_for(lambda: pool.ready == 0 and containers_of(run_id) == [], 15)
        sb, pooled = pool.acquire()
        assert not pooled and sb.execute("print(1)").stdout == "1\n"
        sb.close()


def test_pool_respects_its_growth_bound(run_id: str) -> None:
    cfg = SandboxConfig(run_id=run_id)
    with SandboxPool(cfg, 4, can_grow=lambda total: total < 1) as pool:
        assert wait_for(lambda: pool.ready == 1)
        time.sleep(1.0)
        assert pool.ready == 1 and len(containers_of(run_id)) == 1


def test_streamed_file_arrives_byte_exact(sandbox_config: SandboxConfig, tmp_path: Path) -> None:
    from rlm_sandbox import Sandbox

    path = tmp_path / "big.bin"
    chunk = bytes(range(256)) * 4096
    with path.open("wb") as f:
        for i in range(40):  # 40 MB, with every byte value
            f.write(chunk[i:] + chunk[:i])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with Sandbox(sandbox_config) as sb:
        info = sb.load_context(path, kind="bytes")
        assert info.bytes == path.stat().st_size and info.type == "bytes"
        r = sb.execute("import hashlib\nprint(hashlib.sha256(context).hexdigest())")
        assert r.stdout.strip() == digest
