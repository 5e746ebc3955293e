"""The gateway's errors in OpenAI's shape, for the OpenAI-compatible front door.

`{"error": {"message", "type", "param", "code"}}` with the status OpenAI would
use, so the `openai` SDK raises the exception it would raise for OpenAI itself:
before a response starts as an HTTP answer (`openai_response`), after as a
`data:` chunk (`openai_event`).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from gateway.errors import GatewayError, InvalidRequest, ModelNotFound, UpstreamBadRequest

__all__ = ["openai_event", "openai_response"]

#: The statuses whose error body the OpenAI front door answers as the upstream did.
_CALLER_ERRORS = (400, 404, 413, 422)


def openai_response(exc: GatewayError) -> JSONResponse:
    """An error of the OpenAI-compatible endpoints, before a response started."""
    status, body = _openai_error(exc)
    return JSONResponse(body, status_code=status, headers=exc.headers())


def openai_event(exc: GatewayError) -> bytes:
    """The `data: {"error": ...}` chunk that ends a chat completion stream: the SDK
    raises `openai.APIError` on it instead of returning a short answer."""
    return b"data: " + json.dumps(_openai_error(exc)[1]).encode() + b"\n\n"


def _openai_error(exc: GatewayError) -> tuple[int, dict[str, Any]]:
    """OpenAI's status and `{"error": {"message", "type", "param", "code"}}` for `exc`.

    OpenAI answers an invalid field with 400, where the stream protocol says 422.
    """
    upstream = exc.upstream or {}
    if isinstance(exc, UpstreamBadRequest) and upstream.get("status") in _CALLER_ERRORS:
        # The caller's request was refused: answer as the upstream did.
        error = {key: upstream.get(key) for key in ("message", "type", "param", "code")}
        return upstream["status"], {"error": {**error, "message": exc.message}}
    status = 400 if isinstance(exc, InvalidRequest) else exc.status
    if status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    param = "model" if isinstance(exc, ModelNotFound) else None
    error = {"message": exc.message, "type": kind, "param": param, "code": exc.code}
    return status, {"error": error}
