"""Every run of the service, per tenant: capacity, the queue, cancelling, shutting down.

A tenant has ``max_runs`` runs going at once; more wait in its queue (first in, first out),
up to ``max_queued``; past that a request is a 429 with ``Retry-After`` (an estimate from
the tenant's recent runs). Capacity is taken *before* a body is read (:meth:`admit`), so a
full queue never costs the service a 1 GB upload, and given back if the request fails.

A tenant reaches only its own runs: :meth:`lookup` answers 404 for another tenant's run
exactly as for one that never existed. Finished runs are kept (for ``GET``, the trace and
late SSE clients) up to :data:`KEEP_FINISHED`, oldest forgotten first.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from rlm_sandbox.serve.config import Tenant
from rlm_sandbox.serve.errors import ApiError, not_found
from rlm_sandbox.serve.records import RunRecord

KEEP_FINISHED = 256  # their events (responses, cell outputs) stay in memory
#: How long a cancelled run may take to end (AsyncRLM's own grace, and a little more).
CANCEL_WAIT_S = 8.0
DEFAULT_RETRY_S = 5

Job = Callable[[RunRecord], Awaitable[None]]


def new_run_id() -> str:
    """Sortable and unguessable (though a guessed id of another tenant is a 404 anyway)."""
    return f"srv-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(6)}"


class Registry:
    def __init__(
        self, tenants: dict[str, Tenant], on_finish: Callable[[RunRecord], None] | None = None
    ) -> None:
        self.tenants = tenants
        self.runs: dict[str, RunRecord] = {}
        self.accepting = True
        self._on_finish = on_finish or (lambda _r: None)
        self._queues: dict[str, deque[tuple[RunRecord, Job]]] = {t: deque() for t in tenants}
        self._running: dict[str, int] = dict.fromkeys(tenants, 0)
        self._pending: dict[str, int] = dict.fromkeys(tenants, 0)
        self._durations: dict[str, deque[float]] = {t: deque(maxlen=20) for t in tenants}
        self._finished: deque[str] = deque()

    # ---- counts (metrics read them)

    def running(self, tenant: str) -> int:
        return self._running[tenant]

    def queued(self, tenant: str) -> int:
        return len(self._queues[tenant])

    # ---- taking runs

    @contextmanager
    def admit(self, tenant: Tenant) -> Iterator[None]:
        """Hold a place for one run of ``tenant`` while its request is read: a 503 while
        shutting down, a 429 when its runs and queue are full."""
        if not self.accepting:
            raise ApiError(
                503, "the service is shutting down", type="server_error", code="shutting_down",
                headers={"Retry-After": str(DEFAULT_RETRY_S)},
            )  # fmt: skip
        name = tenant.name
        taken = self._running[name] + len(self._queues[name]) + self._pending[name]
        if taken >= tenant.max_runs + tenant.max_queued:
            raise ApiError(
                429,
                f"tenant {name!r} has {tenant.max_runs} runs going and {tenant.max_queued} waiting "
                "(max_runs, max_queued): try again later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.retry_after(tenant))},
            )
        self._pending[name] += 1
        try:
            yield
        finally:
            self._pending[name] -= 1

    def retry_after(self, tenant: Tenant) -> int:
        """Seconds until a place is likely free: the tenant's mean run time, once per
        round of ``max_runs`` runs ahead in its queue."""
        seen = self._durations[tenant.name]
        if not seen:
            return DEFAULT_RETRY_S
        rounds = math.ceil((len(self._queues[tenant.name]) + 1) / tenant.max_runs)
        return max(1, min(600, math.ceil(sum(seen) / len(seen) * rounds)))

    def submit(self, record: RunRecord, job: Job) -> str:
        """Start ``record`` now or queue it (inside :meth:`admit`); its status."""
        tenant = self.tenants[record.tenant]
        self.runs[record.id] = record
        if self._running[tenant.name] < tenant.max_runs:
            self._start(record, job)
        else:
            self._queues[tenant.name].append((record, job))
        return record.status

    def lookup(self, tenant: Tenant, run_id: str) -> RunRecord:
        record = self.runs.get(run_id)
        if record is None or record.tenant != tenant.name:
            raise not_found()
        return record

    def of_tenant(self, tenant: Tenant) -> list[RunRecord]:
        return [r for r in self.runs.values() if r.tenant == tenant.name]

    # ---- running

    def _start(self, record: RunRecord, job: Job) -> None:
        self._running[record.tenant] += 1
        record.start()
        record.handle = asyncio.get_running_loop().create_task(self._run(record, job), name=record.id)

    async def _run(self, record: RunRecord, job: Job) -> None:
        try:
            await job(record)
        finally:
            if not record.done.is_set():  # the job always finishes it; this is the safety net
                record.finish(record.ended("error", "the run ended without an outcome"))
            self._running[record.tenant] -= 1
            if record.started is not None and record.finished is not None:
                self._durations[record.tenant].append(record.finished - record.started)
            self._ended(record)
            self._next(record.tenant)

    def _next(self, tenant: str) -> None:
        queue = self._queues[tenant]
        while queue and self.accepting and self._running[tenant] < self.tenants[tenant].max_runs:
            record, job = queue.popleft()
            self._start(record, job)

    def _ended(self, record: RunRecord) -> None:
        self._on_finish(record)
        self._finished.append(record.id)
        while len(self._finished) > KEEP_FINISHED:
            self.runs.pop(self._finished.popleft(), None)

    # ---- stopping

    async def cancel(self, record: RunRecord, reason: str) -> None:
        """Stop ``record``: taken out of its queue, or its run cancelled (every container
        removed); returns once it has ended (at most :data:`CANCEL_WAIT_S`)."""
        if record.done.is_set():
            return
        queue = self._queues[record.tenant]
        for item in queue:
            if item[0] is record:
                queue.remove(item)
                record.finish(record.ended("cancelled", reason))
                self._ended(record)
                return
        if record.handle is not None:
            record.cancel_reason = reason
            record.handle.cancel(reason)
        try:
            await asyncio.wait_for(asyncio.shield(record.done.wait()), CANCEL_WAIT_S)
        except TimeoutError:
            pass

    async def shutdown(self, grace_s: float, hurry: asyncio.Event) -> None:
        """Take no more runs, cancel the queued ones, give the running ones ``grace_s``
        (or until ``hurry`` is set), then cancel the rest and wait for them to end."""
        self.accepting = False
        reason = "the service is shutting down"
        for queue in self._queues.values():
            while queue:
                record, _job = queue[0]
                await self.cancel(record, reason)
        await _wait_for_runs([r for r in self.runs.values() if not r.done.is_set()], grace_s, hurry)
        await asyncio.gather(*(self.cancel(r, reason) for r in self.runs.values() if not r.done.is_set()))


async def _wait_for_runs(records: list[RunRecord], limit_s: float, hurry: asyncio.Event) -> None:
    """Until every one of ``records`` has ended, ``limit_s`` has passed or ``hurry`` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    pending = {asyncio.ensure_future(r.done.wait()) for r in records}
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        while pending and not hurry.is_set() and (left := deadline - loop.time()) > 0:
            _done, pending = await asyncio.wait(
                {*pending, hurried}, timeout=left, return_when="FIRST_COMPLETED"
            )
            pending.discard(hurried)
    finally:
        for waiter in (*pending, hurried):
            waiter.cancel()
