"""One shape for every answer that is not a success, the one OpenAI's API uses, so the
``openai`` client (and any HTTP client) reads our errors as it reads OpenAI's:
``{"error": {"message", "type", "param", "code"}}``.

A message never quotes a request header (a token lives there), and a 422 lists what is
wrong with each field without echoing the value sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse

from rlm_sandbox.safe_text import json_text


class ApiError(Exception):
    """An HTTP error with the status, a machine-readable type and a message a person can act on."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        detail: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = dict(headers or {})
        self.detail = list(detail or [])

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": None, "code": self.code}
        if self.detail:
            error["param"] = ".".join(str(p) for p in self.detail[0].get("loc", ()))
            error["detail"] = self.detail
        return {"error": error}


class SafeJSONResponse(JSONResponse):
    """JSON with control and invisible characters escaped (a model's text is untrusted)."""

    def render(self, content: Any) -> bytes:
        return json_text(content, default=str).encode("utf-8")


def error_response(exc: ApiError) -> SafeJSONResponse:
    return SafeJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "missing or invalid bearer token: send Authorization: Bearer TOKEN",
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="rlm-sandbox"'},
    )


def not_found(what: str = "run") -> ApiError:
    return ApiError(404, f"no such {what}", type="not_found_error", code="not_found")


def validation_error(errors: Sequence[Mapping[str, Any]], what: str = "request") -> ApiError:
    """422 from pydantic's errors: the field, the reason, never the value that was sent."""
    detail = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]
    first = detail[0] if detail else {"loc": [], "msg": "invalid"}
    where = ".".join(first["loc"]) or what
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return ApiError(422, f"invalid {where}: {first['msg']}{more}", code="invalid_field", detail=detail)
