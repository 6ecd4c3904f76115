"""The second engine, started once per session and stopped at its end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .second_engine import SecondEngine


@pytest.fixture(scope="session")
def second_engine(sandbox_image: str) -> Iterator[SecondEngine]:
    from rlm_sandbox.sandbox.config import SandboxConfig
    from rlm_sandbox.sandbox.engines import EngineSpec
    from rlm_sandbox.sandbox.placement import Placement

    engine = SecondEngine().start()
    # Give it the sandbox image the way a run does (sent with save/load when missing).
    Placement([EngineSpec(url="unix:///var/run/docker.sock"), EngineSpec(url=engine.unix_url)], 16).prepare(
        SandboxConfig()
    )
    yield engine
    engine.stop()
