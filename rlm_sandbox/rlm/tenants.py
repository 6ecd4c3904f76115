"""Per-tenant limits shared by every run of a tenant in this process.

Teams that embed the controller serve several tenants from one process: a tenant's limits
(containers alive at once, total cost) must hold across all of its runs, not per run. The
ledger is process-wide and thread-safe; a run's :class:`~rlm_sandbox.budget.Budget` takes a
tenant slot next to its own for every container, reserves every LM call's worst-case cost
against the tenant's cap before the call is sent (``reserved_cost``, calls in flight of all
its runs), and adds the real cost when it returns.
Isolation between tenants does not rest on this: every container is its own (no shared
volumes, IPC or mounts) and labelled with its tenant.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TenantLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_containers: int | None = Field(None, ge=1, description="containers of this tenant alive at once")
    max_cost: float | None = Field(None, gt=0, description="USD this tenant may spend in this process")
    max_input_bytes: int | None = Field(
        None, ge=1, description="cap on one run's input once decompressed (bytes, or 8g, 512m)"
    )

    @field_validator("max_input_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        from rlm_sandbox.rlm.config import parse_size

        return parse_size(value)


@dataclass
class TenantAccount:
    name: str
    limits: TenantLimits
    containers_alive: int = 0
    cost_usd: float = 0.0
    reserved_cost: float = 0.0  # worst case of this tenant's calls in flight, all runs
    in_flight: int = 0
    abandoned: int = 0  # of those, calls abandoned at a deadline


class TenantLedger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: dict[str, TenantAccount] = {}

    def account(self, name: str, limits: TenantLimits | None) -> TenantAccount:
        """The tenant's account; the newest limits given for a tenant apply."""
        with self._lock:
            acct = self._accounts.get(name)
            if acct is None:
                acct = self._accounts[name] = TenantAccount(name, limits or TenantLimits())
            elif limits is not None:
                acct.limits = limits
            return acct

    def reset(self) -> None:
        with self._lock:
            self._accounts.clear()


ledger = TenantLedger()
