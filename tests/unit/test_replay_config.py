"""A replay takes the recorded answers from its trace and every limit from the user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlm_sandbox.replay import Recording, TraceNotReplayable, replay_config
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.tenants import TenantLimits

HOSTILE_LIMITS = {
    "depth": 16,
    "max_lm_calls": None,
    "max_tokens": None,
    "max_cost": None,
    "timeout_s": None,
    "max_containers": 4096,
    "max_nodes": None,
    "max_tool_calls": None,
}


def recording(**start: Any) -> Recording:
    event = {"event": "run_start", "task": "t", "tenant": "victim", "limits": HOSTILE_LIMITS, **start}
    return Recording(Path("crafted.jsonl"), [event], event, [], {})


def configure(rec: Recording, base: RLMConfig, origins: dict[str, str] | None = None) -> RLMConfig:
    return replay_config(
        rec, base, api_base="http://127.0.0.1:1", trace="/tmp/x.jsonl",
        origin=lambda name: (origins or {}).get(name, "default"),
    )  # fmt: skip


def test_limits_and_tenant_come_from_the_user_never_the_trace() -> None:
    base = RLMConfig(max_containers=4, tenant="me")
    cfg = configure(recording(depth=3, max_steps=5), base)
    assert cfg.tenant == "me" and cfg.max_containers == 4
    assert cfg.timeout == 1800.0 and cfg.max_lm_calls == 500 and cfg.max_nodes == 1000
    assert cfg.max_tokens is None and cfg.max_cost is None
    assert (cfg.depth, cfg.max_steps) == (3, 5)  # the recorded shape, within the user's caps
    assert cfg.sandbox.backend == "docker" and cfg.depth_models == {}


def test_a_depth_past_the_users_container_cap_is_refused() -> None:
    with pytest.raises(TraceNotReplayable, match="max_containers is 4"):
        configure(recording(depth=16), RLMConfig(max_containers=4))
    tenants = {"me": TenantLimits(max_containers=2)}
    with pytest.raises(TraceNotReplayable, match="tenant 'me' max_containers is 2"):
        configure(recording(depth=3), RLMConfig(tenant="me", tenants=tenants))


def test_the_users_own_depth_is_a_ceiling_and_a_flag_wins() -> None:
    base = RLMConfig(depth=2, max_steps=8)
    with pytest.raises(TraceNotReplayable, match=r"allow at most 2 \(user file") as info:
        configure(recording(depth=3), base, {"depth": "user file /home/u/.config/rlm-sandbox.toml"})
    assert "--depth 3" in info.value.hint
    assert configure(recording(depth=2), base, {"depth": "env RLM_SANDBOX_DEPTH"}).depth == 2
    assert configure(recording(depth=3), base, {"depth": "flag --depth"}).depth == 2
    assert configure(recording(max_steps=30), base, {"max_steps": "flag --max-steps"}).max_steps == 8


@pytest.mark.parametrize("depth", [0, 17, 10**6, -1])
def test_a_recorded_depth_out_of_bounds_is_refused(depth: int) -> None:
    with pytest.raises(TraceNotReplayable):
        configure(recording(depth=depth), RLMConfig(max_containers=64))


@pytest.mark.parametrize("depth", ["3", 3.0, None, [3], True])
def test_a_recorded_depth_that_is_not_an_integer_is_ignored(depth: Any) -> None:
    assert configure(recording(depth=depth), RLMConfig()).depth == 1
