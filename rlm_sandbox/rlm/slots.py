"""Nodes and container slots: the part of a run's :class:`~rlm_sandbox.rlm.budget.Budget` that
admits a node and takes a container slot for it, per run and per tenant.

Why it is its own module: the budget's model-call reservations (worst cases, holds, waiting
for calls in flight) are one concern; the no-deadlock admission of containers is another,
with its own rule: a node at depth ``d`` takes a slot only if enough slots stay free for one
chain of descendants below it (``free > depth_limit - 1 - d``), in its run and in its
tenant's. :class:`ContainerSlots` is a mixin of ``Budget``: it works on the budget's lock,
counters and stop (``check``, ``_exhaust``, ``wall_left``), declared below.
"""

from __future__ import annotations

import asyncio
import threading

from rlm_sandbox.rlm.limits import Limits
from rlm_sandbox.rlm.tenants import TENANT_LOCK, TenantAccount


class ContainerSlots:
    """Counts nodes and the containers alive at once (a mixin of ``Budget``)."""

    limits: Limits
    tenant: TenantAccount | None
    cancelled: threading.Event
    _lock: threading.Condition
    _tenant_slots: int
    nodes: int
    max_depth_reached: int
    containers_started: int
    containers_alive: int

    def admit_node(self, depth: int) -> None:
        """Count a new RLM node and take a container slot for it (waiting if needed)."""
        reserve = self._count_node(depth)
        with self._lock:
            while (poll := self._try_slot(reserve)) is not None:
                if poll == 0.0:
                    return
                self._lock.wait(poll)
        self._no_slot()

    async def aadmit_node(self, depth: int) -> None:
        """:meth:`admit_node` for the asyncio engine: a fan-out waiting for container slots
        sleeps on the loop instead of holding a thread per child."""
        reserve = self._count_node(depth)
        while True:
            with self._lock:
                poll = self._try_slot(reserve)
            if poll is None:
                break
            if poll == 0.0:
                return
            await asyncio.sleep(min(poll, 0.05))
        self._no_slot()

    def _count_node(self, depth: int) -> int:
        """The node counted (or ``max_nodes`` stops the run); the slots its level must leave free."""
        self.check()
        with self._lock:
            lim = self.limits
            over = lim.max_nodes is not None and self.nodes >= lim.max_nodes
            if not over:
                self.nodes += 1
                self.max_depth_reached = max(self.max_depth_reached, depth + 1)
        if over:
            raise self._exhaust("max_nodes", f"the run created its limit of {lim.max_nodes} RLM nodes")
        return max(0, lim.depth - 1 - depth)

    def _try_slot(self, reserve: int) -> float | None:
        """Called with the lock held: 0.0 when a slot was taken, else how long to wait before
        trying again, or None when waiting is over (stopped, or out of time)."""
        if self.cancelled.is_set():
            return None
        free = self.limits.max_containers - self.containers_alive
        if free > reserve and self._tenant_admits(reserve):
            self.containers_alive += 1
            return 0.0
        left = self.wall_left()
        if left is not None and left <= 0:
            return None
        # Another run of the tenant frees its slots without notifying us: poll briskly then.
        poll = 0.1 if self.tenant is not None and self.tenant.limits.max_containers else 0.5
        return poll if left is None else max(0.01, min(poll, left))

    def _no_slot(self) -> None:
        self.check()
        raise self._exhaust("timeout", "the wall-time budget ran out while waiting for a container slot")

    def _tenant_admits(self, reserve: int) -> bool:
        """Called with the lock held: take a tenant slot too, under the same reserve rule."""
        tenant = self.tenant
        if tenant is None:
            return True
        with TENANT_LOCK:
            cap = tenant.limits.max_containers
            if cap is not None and cap - tenant.containers_alive <= reserve:
                return False
            tenant.containers_alive += 1
            self._tenant_slots += 1
            return True

    def container_started(self) -> None:
        """A node got a running container (its slot was taken by :meth:`admit_node`): what
        ``containers`` reports, so a node whose start failed (a dead engine) is not counted."""
        with self._lock:
            self.containers_started += 1

    def release_container(self) -> None:
        with self._lock:
            self.containers_alive = max(0, self.containers_alive - 1)
            if self.tenant is not None and self._tenant_slots > 0:
                with TENANT_LOCK:
                    self.tenant.containers_alive = max(0, self.tenant.containers_alive - 1)
                    self._tenant_slots -= 1
            self._lock.notify_all()
