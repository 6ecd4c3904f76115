"""Where each node's container comes from and where it goes.

A node's sandbox is taken from a warm pool, started on one of several engines, or started
fresh on the one engine; every sandbox still open is tracked, so that a stop (a budget, an
error, Ctrl-C) closes them all, deepest first, whatever the nodes were doing. This is the
run's only door to the sandbox layer: the rest of the controller sees a :class:`Lease`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlm_sandbox.errors import ConfigError, EngineUnavailable
from rlm_sandbox.rlm.budget import Budget
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.sandbox.backend import Backend
from rlm_sandbox.sandbox.channel import LLMHandler
from rlm_sandbox.sandbox.core import Sandbox
from rlm_sandbox.sandbox.placement import Engine, Placement
from rlm_sandbox.sandbox.pool import SandboxPool

Warn = Callable[[str, dict[str, Any]], None]
Progress = Callable[[str], None]


@dataclass
class Lease:
    """A node's hold on one sandbox (and the engine it runs on) until it is released."""

    node_id: str
    sandbox: Sandbox
    engine: Engine | None
    pooled: bool
    start_s: float
    prestarted: bool = False  # started by the CLI's prestart child (sandbox/prestart.py)

    @property
    def engine_url(self) -> str | None:
        return self.engine.url if self.engine is not None else None


class RunContainers:
    def __init__(
        self,
        config: RLMConfig,
        run_id: str,
        budget: Budget,
        *,
        warn: Warn,
        progress: Progress,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self.backend = backend  # None: the one the sandbox config names (Docker)
        self.run_id = run_id
        self.budget = budget
        self._warn = warn
        self._progress = progress
        self._lock = threading.Lock()
        self._open: dict[str, Sandbox] = {}
        self.placement: Placement | None = None
        self.pool: SandboxPool | None = None
        size = config.effective_pool_size()
        if size and not config.engines:
            self.pool = SandboxPool(
                config.node_sandbox_config(run_id, "pool"),
                size,
                idle_timeout=config.pool_idle_timeout,
                progress=progress,
                backend=backend,
                can_grow=lambda total: (
                    budget.containers_alive + total < config.max_containers and not budget.cancelled.is_set()
                ),
            )

    # ---- set-up

    def start(self) -> None:
        """Probe the engines (when there are several) and start filling the warm pools."""
        if self.config.engines:
            self._prepare_engines()
        elif self.pool is not None:
            self.pool.start()

    def _prepare_engines(self) -> None:
        """Several engines: probe them, give them the image, cap the budget at their room,
        and give each its own warm pool (a pooled container must live where its node runs)."""
        cfg = self.config
        placement = Placement(cfg.engines, cfg.max_containers, warn=self._warn, progress=self._progress)
        placement.prepare(cfg.sandbox)
        room = placement.capacity()
        limits = self.budget.limits
        if room < limits.depth:
            raise ConfigError(
                f"the live engines have room for {room} containers, fewer than depth ({limits.depth})",
                hint="raise the engines' max (--engine URL,max=N), add engines, or lower --depth",
            )
        self.budget.limits = dataclasses.replace(limits, max_containers=min(limits.max_containers, room))
        self.placement = placement
        size = cfg.effective_pool_size()
        if not size:
            return
        budget = self.budget
        per_engine = -(-size // len(placement.live))
        for engine in placement.live:
            engine.pool = SandboxPool(
                cfg.node_sandbox_config(self.run_id, "pool", engine.url),
                per_engine,
                idle_timeout=cfg.pool_idle_timeout,
                progress=self._progress,
                can_grow=lambda total, e=engine: (
                    placement.pool_room(e, total)
                    and budget.containers_alive + placement.pools_held() < budget.limits.max_containers
                    and not budget.cancelled.is_set()
                ),
            ).start()

    # ---- a node's sandbox

    def acquire(self, node_id: str, handler: LLMHandler, *, prepare: bool = False) -> Lease:
        """A started sandbox for ``node_id``; on failure nothing is left held. ``prepare``
        (the run's first node): :meth:`start` first, in the same worker thread."""
        if prepare:
            self.start()
        t0 = time.perf_counter()
        engine = None
        if self.placement is not None:
            engine = self.placement.acquire(self.budget.check)
        pool = engine.pool if engine is not None else self.pool
        try:
            prestarted = node_id == "root" and engine is None and self.backend is None
            found = self._prestarted(handler) if prestarted else None
            prestarted = found is not None
            if found is not None:
                sandbox, pooled = found, False
            elif pool is not None:
                sandbox, pooled = pool.acquire(handler)
            else:
                sandbox = Sandbox(
                    self.config.node_sandbox_config(self.run_id, node_id, engine.url if engine else None),
                    llm_handler=handler,
                    progress=self._progress,
                    backend=self.backend,
                )
                pooled = False
                self._track(node_id, sandbox)  # before start: a stop must be able to close it
                sandbox.start()
        except BaseException as exc:
            self._untrack_and_close(node_id)
            if engine is not None:
                self.fail_engine(engine, exc)
                self.placement.release(engine)  # type: ignore[union-attr]
            raise
        self._track(node_id, sandbox)
        return Lease(node_id, sandbox, engine, pooled, time.perf_counter() - t0, prestarted)

    def prestarted(self) -> bool:
        """Has the CLI's prestart child (probably) started the root's container already?"""
        from rlm_sandbox.sandbox import prestart

        return self.backend is None and not self.config.engines and prestart.run_id() == self.run_id

    def _prestarted(self, handler: LLMHandler) -> Sandbox | None:
        """The root's container, when the CLI's prestart child started it for exactly the
        configuration the root would get (once per process; None otherwise)."""
        from rlm_sandbox.sandbox import prestart

        if prestart.run_id() != self.run_id:
            return None
        config = self.config.node_sandbox_config(self.run_id, "root", None)
        handover = prestart.take(config, config.start_timeout)
        if handover is None:
            return None
        return Sandbox.adopt(config, handover, llm_handler=handler, progress=self._progress)

    def release(self, lease: Lease) -> None:
        """Close the lease's sandbox and give its engine room back."""
        self._untrack_and_close(lease.node_id, lease.sandbox)
        if lease.engine is not None and self.placement is not None:
            self.placement.release(lease.engine)

    def fail_engine(self, engine: Engine | None, exc: BaseException) -> None:
        """An engine that stopped answering gets no more nodes of this run."""
        if engine is not None and self.placement is not None and isinstance(exc, EngineUnavailable):
            self.placement.mark_dead(engine, exc.message)

    def _track(self, node_id: str, sandbox: Sandbox) -> None:
        with self._lock:
            self._open[node_id] = sandbox

    def _untrack_and_close(self, node_id: str, sandbox: Sandbox | None = None) -> None:
        with self._lock:
            tracked = self._open.pop(node_id, None)
        for sb in {id(s): s for s in (sandbox, tracked) if s is not None}.values():
            sb.close()

    # ---- stopping and reporting

    def pools(self) -> list[SandboxPool]:
        if self.placement is not None:
            return [e.pool for e in self.placement.engines if e.pool is not None]
        return [self.pool] if self.pool is not None else []

    def close_all(self) -> None:
        """Close the pools and every sandbox still open, the root last."""
        for pool in self.pools():
            pool.close()
        with self._lock:
            still_open = sorted(self._open.items(), key=lambda kv: kv[0] == "root")
        for node_id, sandbox in still_open:
            try:
                sandbox.close()
            except Exception:
                pass
            with self._lock:
                if self._open.get(node_id) is sandbox:
                    del self._open[node_id]

    def pool_stats(self) -> dict[str, int] | None:
        pools = self.pools()
        if not pools:
            return None
        keys = ("size", "hits", "misses", "started", "discarded")
        return {key: sum(getattr(p, key) for p in pools) for key in keys}

    def engines_summary(self) -> list[dict[str, Any]] | None:
        return self.placement.summary() if self.placement is not None else None
