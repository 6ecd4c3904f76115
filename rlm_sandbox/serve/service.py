"""The service's state, shared by every route: its configuration, runs, runner and metrics,
and the two steps every way of starting a run shares (who is asking; start the run)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.serve.auth import authenticate
from rlm_sandbox.serve.config import ServeConfig, Tenant
from rlm_sandbox.serve.errors import ApiError, unauthorized, validation_error
from rlm_sandbox.serve.limits import RunLimits
from rlm_sandbox.serve.metrics import Metrics
from rlm_sandbox.serve.records import RunRecord
from rlm_sandbox.serve.registry import Registry
from rlm_sandbox.serve.runner import Runner


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = Registry(config.tenants, on_finish=self.metrics.run_ended)
        self.runner = Runner(config.model, config.sub_model)
        self.spool_root: Path | None = None
        self.image_error: str | None = None
        self.hurry: asyncio.Event | None = None  # set by a second SIGTERM: cancel now
        self.started = time.time()

    # ---- lifecycle (the app's lifespan)

    def open(self) -> None:
        from rlm_sandbox.sandbox.registry import live

        self.hurry = asyncio.Event()
        parent = self.config.spool_dir
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool_root = Path(tempfile.mkdtemp(prefix="rlm-serve-", dir=parent))
        self.metrics.watch(self.registry, lambda: len(live.ids()))

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop taking runs, let the running ones finish within ``grace_s``, cancel the
        rest, remove every container and the spool. Safe to call twice."""
        from rlm_sandbox.sandbox.registry import live

        await self.registry.shutdown(grace_s, self.hurry or asyncio.Event())
        await asyncio.to_thread(live.remove_all)
        if self.spool_root is not None:
            await asyncio.to_thread(shutil.rmtree, self.spool_root, True)

    # ---- what every route needs

    def tenant(self, request: Request) -> Tenant:
        """The tenant of the request's bearer token, or a 401."""
        tenant = authenticate(request.headers.get("authorization"), self.config.tenants.values())
        if tenant is None:
            self.metrics.rejected.labels("", "unauthorized").inc()
            raise unauthorized()
        request.state.tenant = tenant.name
        return tenant

    def spool_for(self, run_id: str) -> Path:
        assert self.spool_root is not None, "the service is not open"
        path = self.spool_root / run_id
        os.mkdir(path, 0o700)
        return path

    def start(
        self,
        run_id: str,
        tenant: Tenant,
        task: str,
        limits: RunLimits,
        context: Any,
        spool: Path | None = None,
    ) -> RunRecord:
        """Start (or queue) a run; inside :meth:`Registry.admit`. A 422 when the request's
        limits cannot run (looser than the service's, or deeper than the tenant's
        containers allow)."""
        tighter = limits.tighter(self.config.base)
        try:
            config = self.config.run_config(tenant, **tighter)
            config.limits().check()
        except ValidationError as exc:
            raise validation_error(exc.errors(include_input=False, include_url=False)) from None
        except ConfigError as exc:
            raise ApiError(422, exc.message, code="invalid_limits") from None
        cap = tenant.limits.max_containers
        if cap is not None and cap < config.depth:
            raise validation_error(
                [{"loc": ("depth",), "msg": f"deeper than the tenant's max_containers ({cap}) allow",
                  "type": "less_than_equal"}]
            )  # fmt: skip
        record = RunRecord(run_id, tenant.name, task)
        self.registry.submit(record, self.runner.job(context, config, spool))
        self.metrics.submitted.labels(tenant.name).inc()
        return record


def service_of(request: Request) -> Service:
    return request.app.state.service
