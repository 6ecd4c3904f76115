"""``POST /v1/chat/completions`` and ``GET /v1/models``: an RLM called as if it were a model.

The last ``user`` message is the task; the input is the request's ``context`` field when it
has one, else the text of the messages before that last user message (joined by blank
lines). The answer is the message's content and ``usage`` sums the whole recursion tree.
The official ``openai`` client works unchanged (``base_url=.../v1``, ``api_key=TOKEN``).
Depth and budgets may be tightened with extra body fields (``depth``, ``max_steps``,
``max_lm_calls``, ``max_cost``, ``timeout``); OpenAI's own ``max_tokens`` is about one
reply and is ignored, like the sampling fields an RLM does not use.

A run that ends without an answer is a 422 whose ``type`` is the run's status (``503`` if
the service cancelled it): not a 5xx, which clients would retry, paying for the run again.
``stream: true`` is served too: the answer comes as one chunk when the run ends, with
comment lines while it works. A client that goes away cancels its run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from rlm_sandbox.safe_text import json_text
from rlm_sandbox.serve.errors import ApiError, SafeJSONResponse, not_found
from rlm_sandbox.serve.limits import MAX_TASK_CHARS, RunLimits, parse
from rlm_sandbox.serve.records import RunRecord
from rlm_sandbox.serve.registry import new_run_id
from rlm_sandbox.serve.routes import read_json
from rlm_sandbox.serve.service import Service, service_of
from rlm_sandbox.serve.spool import too_large

MODEL_ID = "rlm-sandbox"
KEEPALIVE_S = 15.0


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # temperature, n, max_tokens...: not an RLM's
    model: str
    messages: list[Message] = Field(min_length=1)
    context: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    depth: int | None = None
    max_steps: int | None = None
    max_lm_calls: int | None = None
    max_cost: float | None = None
    timeout: float | None = None

    def limits(self) -> RunLimits:
        fields = ("depth", "max_steps", "max_lm_calls", "max_cost", "timeout")
        return parse(RunLimits, {f: getattr(self, f) for f in fields if getattr(self, f) is not None})


def text_of(message: Message, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(422, f"messages.{index}: only text content is supported", code="invalid_content")
        parts.append(part["text"])
    return "".join(parts)


def task_and_input(req: ChatRequest) -> tuple[str, str]:
    users = [i for i, m in enumerate(req.messages) if m.role == "user"]
    if not users:
        raise ApiError(422, "messages: no user message (its text is the task)", code="no_task")
    last = users[-1]
    task = text_of(req.messages[last], last)
    if not task.strip() or len(task) > MAX_TASK_CHARS:
        raise ApiError(422, f"the last user message must hold a task of 1 to {MAX_TASK_CHARS} characters")
    if req.context is not None:
        return task, req.context
    earlier = (text_of(m, i) for i, m in enumerate(req.messages[:last]))
    return task, "\n\n".join(t for t in earlier if t)


async def chat_completions(request: Request) -> Response:
    svc = service_of(request)
    tenant = svc.tenant(request)
    with svc.registry.admit(tenant):
        data = await read_json(request, tenant.max_input_bytes)
        req = parse(ChatRequest, data)
        if req.model != MODEL_ID:
            raise ApiError(404, f"the model {req.model[:100]!r} does not exist; this service offers {MODEL_ID!r}",
                           code="model_not_found")  # fmt: skip
        task, context = task_and_input(req)
        if len(context.encode("utf-8", "surrogatepass")) > tenant.max_input_bytes:
            raise too_large(tenant.max_input_bytes)
        record = svc.start(new_run_id(), tenant, task, req.limits(), context)
    request.state.run = record.id
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return StreamingResponse(_stream(svc, record, include_usage), media_type="text/event-stream")
    await _until_done(svc, request, record)
    return SafeJSONResponse(completion(record))


async def _until_done(svc: Service, request: Request, record: RunRecord) -> None:
    """Wait for the run; cancel it if the client goes away first."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    finished = asyncio.ensure_future(record.done.wait())
    try:
        await asyncio.wait([watcher, finished], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        finished.cancel()
        if not record.done.is_set():
            await svc.registry.cancel(record, "the client went away")


def _failure(record: RunRecord) -> ApiError:
    out = record.outcome or {}
    status = record.status
    message = f"the run {record.id} ended {status}: {out.get('error') or 'no answer'}"
    return ApiError(503 if status == "cancelled" else 422, message, type=status, code=status)


def _usage(record: RunRecord) -> dict[str, int]:
    tokens = (record.outcome or {}).get("tokens") or {}
    prompt, completion_ = int(tokens.get("prompt") or 0), int(tokens.get("completion") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion_, "total_tokens": prompt + completion_}


def completion(record: RunRecord) -> dict[str, Any]:
    out = record.outcome or {}
    if out.get("answer") is None:
        raise _failure(record)
    return {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion",
        "created": int(record.created),
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": out["answer"]},
                "finish_reason": "stop" if record.status == "ok" else "length",
                "logprobs": None,
            }
        ],
        "usage": _usage(record),
        "rlm": record.to_json(),
    }


def _chunk(record: RunRecord, delta: dict[str, Any], finish: str | None, **more: Any) -> bytes:
    body = {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion.chunk",
        "created": int(record.created),
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        if delta or finish
        else [],
        **more,
    }
    return f"data: {json_text(body, default=str)}\n\n".encode()


async def _stream(svc: Service, record: RunRecord, include_usage: bool) -> Any:
    try:
        yield _chunk(record, {"role": "assistant", "content": ""}, None)
        while not record.done.is_set():
            try:
                await asyncio.wait_for(asyncio.shield(record.done.wait()), KEEPALIVE_S)
            except TimeoutError:
                yield b": the run is working\n\n"
        out = record.outcome or {}
        if out.get("answer") is None:
            yield f"data: {json_text(_failure(record).body())}\n\n".encode()
            return
        yield _chunk(record, {"content": out["answer"]}, None)
        yield _chunk(record, {}, "stop" if record.status == "ok" else "length")
        if include_usage:
            yield _chunk(record, {}, None, usage=_usage(record))
        yield b"data: [DONE]\n\n"
    finally:
        if not record.done.is_set():
            await svc.registry.cancel(record, "the client went away")


def _model(created: int) -> dict[str, Any]:
    return {"id": MODEL_ID, "object": "model", "created": created, "owned_by": "rlm-sandbox"}


async def list_models(request: Request) -> Response:
    svc = service_of(request)
    svc.tenant(request)
    return SafeJSONResponse({"object": "list", "data": [_model(int(svc.started))]})


async def get_model(request: Request) -> Response:
    svc = service_of(request)
    svc.tenant(request)
    if request.path_params["model"] != MODEL_ID:
        raise not_found("model")
    return SafeJSONResponse(_model(int(svc.started)))


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]

__all__ = ["MODEL_ID", "ROUTES", "completion"]
