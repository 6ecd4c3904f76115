"""What the unit tests share: no engine at all, a fresh tenant ledger, and a harness that runs
the whole controller through the in-memory seam (see ``seam.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rlm_sandbox.rlm.tenants import ledger

from .seam import Harness, make_harness


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prove the unit tests need no engine: any Docker client would fail at once."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")


@pytest.fixture(autouse=True)
def fresh_tenants() -> Iterator[None]:
    """The tenant ledger is process-wide: every test starts (and leaves) it empty."""
    ledger.reset()
    yield
    ledger.reset()


@pytest.fixture
def seam() -> Iterator[Callable[..., Harness]]:
    """``seam(policy, **config)``: a harness (see ``make_harness``); after the test, no fake
    kernel of it may be alive, whatever path the test took."""
    made: list[Harness] = []

    def make(policy: Any, **kw: Any) -> Harness:
        harness = make_harness(policy, **kw)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        assert harness.backend.alive() == [], "a fake kernel was left alive"
