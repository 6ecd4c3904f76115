"""The Starlette application: the routes, one error shape, the access log, the lifespan.

At start the service opens its spool directory and builds the sandbox image in the
background (``/healthz`` is 503 until it is there); at the end it stops every run, removes
every container and the spool. SIGTERM's grace period is :mod:`rlm_sandbox.serve.server`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rlm_sandbox.sandbox.readiness import build_image, readiness
from rlm_sandbox.serve import openai_compat, routes
from rlm_sandbox.serve.access_log import AccessLog, log_event
from rlm_sandbox.serve.errors import ApiError, SafeJSONResponse, error_response
from rlm_sandbox.serve.metrics import CONTENT_TYPE
from rlm_sandbox.serve.service import Service, service_of


async def healthz(request: Request) -> Response:
    """Could a run start now: the engine answers and the image is there. 200 when both hold,
    else 503 with what is missing (for a load balancer, and for a person)."""
    svc = service_of(request)
    report = await asyncio.to_thread(readiness, svc.config.base.sandbox)
    if svc.image_error and not report["image"]["ok"]:
        report["image"]["error"] = f"the build failed: {svc.image_error}"
    running = sum(svc.registry.running(t) for t in svc.registry.tenants)
    report |= {"accepting": svc.registry.accepting, "runs_running": running}
    return SafeJSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


async def metrics(request: Request) -> Response:
    return Response(service_of(request).metrics.text(), media_type=CONTENT_TYPE)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    tenant = request.scope.get("state", {}).get("tenant") or ""
    if exc.status in (413, 422, 429):
        service_of(request).metrics.rejected.labels(tenant, str(exc.code or exc.status)).inc()
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found_error", 405: "invalid_request_error"}
    return error_response(
        ApiError(exc.status_code, str(exc.detail), type=kinds.get(exc.status_code, "invalid_request_error"),
                 headers=exc.headers)
    )  # fmt: skip


async def _unexpected(request: Request, exc: Exception) -> Response:
    log_event("error", error=f"{type(exc).__name__}: {exc}"[:2000], path=request.url.path)
    return error_response(ApiError(500, "internal error (it is in the service's log)", type="server_error"))


def build_app(service: Service) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.open()
        build = asyncio.ensure_future(asyncio.to_thread(build_image, service.config.base.sandbox))
        build.add_done_callback(
            lambda f: setattr(service, "image_error", None if f.cancelled() else f.result())
        )
        try:
            yield
        finally:
            await service.close(0.0)

    app = Starlette(
        routes=[
            *routes.ROUTES,
            *openai_compat.ROUTES,
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        middleware=[Middleware(AccessLog, count=_counter(service))],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def _counter(service: Service) -> Any:
    def count(method: str, route: str, code: int) -> None:
        known = route in _KNOWN_ROUTES
        service.metrics.requests.labels(method, route if known else "(other)", str(code)).inc()

    return count


_KNOWN_ROUTES = {
    "/v1/runs",
    "/v1/runs/{id}",
    "/v1/runs/{id}/events",
    "/v1/runs/{id}/trace",
    "/v1/chat/completions",
    "/v1/models",
    "/healthz",
    "/metrics",
}
