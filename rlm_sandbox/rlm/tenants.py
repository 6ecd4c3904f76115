"""Per-tenant limits shared by every run of a tenant in this process.

Teams that embed the controller serve several tenants from one process: a tenant's limits
(containers alive at once, total cost) must hold across all of its runs, not per run. The
ledger is process-wide and thread-safe; a run's :class:`~rlm_sandbox.budget.Budget` takes a
tenant slot next to its own for every container, reserves every LM call's worst-case cost
against the tenant's cap before the call is sent (``reserved_cost``, calls in flight of all
its runs), and adds the real cost when it returns.
Isolation between tenants does not rest on this: every container is its own (no shared
volumes, IPC or mounts) and labelled with its tenant.

``rlm-sandbox serve`` reads three more fields: ``token_sha256`` (who the tenant is: the
SHA-256 of its bearer token, never the token itself), ``max_runs`` and ``max_queued`` (how
many of its runs go at once, and how many may wait). The engine ignores them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlm_sandbox.sizes import parse_size

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

#: Guards every :class:`TenantAccount`'s counters: the runs of a tenant share them across threads.
TENANT_LOCK = threading.Lock()


class TenantLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_containers: int | None = Field(None, ge=1, description="containers of this tenant alive at once")
    max_cost: float | None = Field(None, gt=0, description="USD this tenant may spend in this process")
    max_input_bytes: int | None = Field(
        None, ge=1, description="cap on one run's input once decompressed (bytes, or 8g, 512m)"
    )

    max_runs: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="serve: runs of this tenant at once (None: 4); more wait in the queue",
    )
    max_queued: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="serve: runs of this tenant waiting to start (None: 32); more get 429",
    )
    token_sha256: str | None = Field(
        None,
        description="serve: hex SHA-256 of this tenant's bearer token (the token itself is never stored)",
    )

    @field_validator("token_sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digest = value.strip().lower()
        if not _SHA256_HEX.fullmatch(digest):
            raise ValueError(
                'not a SHA-256 in hex (64 characters 0-9a-f); make one with: printf %s "$TOKEN" | sha256sum'
            )
        return digest

    @field_validator("max_input_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
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
