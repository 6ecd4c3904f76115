"""``/v1/runs``: start a run, read it, follow its events, read its trace, cancel it.

``POST /v1/runs`` takes JSON ``{"task", "context", ...limits}`` or a multipart form with a
``task`` field and an ``input`` file part (streamed to a spool file), and answers 202 with
``{"id", "status"}``. Every other route answers 404 for a run of another tenant, exactly as
for a run that does not exist.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from rlm_sandbox.safe_text import json_text
from rlm_sandbox.serve.errors import ApiError, SafeJSONResponse
from rlm_sandbox.serve.limits import RunRequest, parse
from rlm_sandbox.serve.records import RunRecord
from rlm_sandbox.serve.registry import new_run_id
from rlm_sandbox.serve.service import Service, service_of
from rlm_sandbox.serve.spool import MAX_JSON_BYTES, read_capped, spool_form, too_large

#: Room for the JSON around a context (the task, the limits, escapes).
JSON_OVERHEAD = 1 << 20


async def read_json(request: Request, input_cap: int) -> Any:
    """A JSON body whose input may be up to ``input_cap`` bytes (held whole: at most
    :data:`MAX_JSON_BYTES` of input; a larger one goes in a multipart upload)."""
    body = await read_capped(request, min(input_cap, MAX_JSON_BYTES) + JSON_OVERHEAD, input_cap)
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None


async def create_run(request: Request) -> Response:
    svc = service_of(request)
    tenant = svc.tenant(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/json", "multipart/form-data"):
        raise ApiError(
            415,
            "send application/json ({task, context}) or multipart/form-data (task, input)",
            code="media_type",
        )
    with svc.registry.admit(tenant):
        run_id = new_run_id()
        if kind == "multipart/form-data":
            record = await _from_form(svc, request, tenant, run_id)
        else:
            data = await read_json(request, tenant.max_input_bytes)
            req = parse(RunRequest, data)
            if len(req.context.encode("utf-8", "surrogatepass")) > tenant.max_input_bytes:
                raise too_large(tenant.max_input_bytes)
            record = svc.start(run_id, tenant, req.task, req.limits(), req.context)
    request.state.run = record.id
    return SafeJSONResponse(
        {"id": record.id, "status": record.status},
        status_code=202,
        headers={"Location": f"/v1/runs/{record.id}"},
    )


async def _from_form(svc: Service, request: Request, tenant: Any, run_id: str) -> RunRecord:
    spool = svc.spool_for(run_id)
    try:
        upload = await spool_form(request, spool, tenant.max_input_bytes)
        req = parse(RunRequest, upload.fields)
        if upload.path is not None and req.context:
            raise ApiError(
                422, "give the input as the 'input' file or as 'context', not both", code="invalid_form"
            )
        context = upload.path if upload.path is not None else req.context
        return svc.start(run_id, tenant, req.task, req.limits(), context, spool)
    except BaseException:
        shutil.rmtree(spool, ignore_errors=True)
        raise


def _record(request: Request) -> RunRecord:
    svc = service_of(request)
    record = svc.registry.lookup(svc.tenant(request), request.path_params["run_id"])
    request.state.run = record.id
    return record


async def get_run(request: Request) -> Response:
    return SafeJSONResponse(_record(request).to_json())


async def list_runs(request: Request) -> Response:
    svc = service_of(request)
    records = svc.registry.of_tenant(svc.tenant(request))
    return SafeJSONResponse(
        {"object": "list", "data": [{"id": r.id, "status": r.status, "created": r.created} for r in records]}
    )


async def cancel_run(request: Request) -> Response:
    record = _record(request)
    await service_of(request).registry.cancel(record, "cancelled by its tenant (DELETE /v1/runs/ID)")
    return SafeJSONResponse(record.to_json())


async def run_trace(request: Request) -> Response:
    return Response(_record(request).trace_lines(), media_type="application/x-ndjson")


async def run_events(request: Request) -> Response:
    """Server-Sent Events: every event of the run from its first (or after ``Last-Event-ID``),
    live, ending with ``run_end``; a comment line every 15 s keeps idle proxies from closing."""
    record = _record(request)
    last = request.headers.get("last-event-id", "")
    start = int(last) + 1 if last.isdigit() else 0

    async def stream() -> Any:
        async for index, event in record.follow(start):
            if event is None:
                yield b": keep-alive\n\n"
                continue
            name = str(event.get("event", "message")).replace("\n", " ")
            yield f"id: {index}\nevent: {name}\ndata: {json_text(event, default=str)}\n\n".encode()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


ROUTES = [
    Route("/v1/runs", create_run, methods=["POST"]),
    Route("/v1/runs", list_runs, methods=["GET"]),
    Route("/v1/runs/{run_id}", get_run, methods=["GET"]),
    Route("/v1/runs/{run_id}", cancel_run, methods=["DELETE"]),
    Route("/v1/runs/{run_id}/events", run_events, methods=["GET"]),
    Route("/v1/runs/{run_id}/trace", run_trace, methods=["GET"]),
]
