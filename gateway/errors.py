"""Every failure the gateway reports, with its HTTP status and its SSE error code.

    GatewayError                    status  code                    retryable
     ├── InvalidJSON                 400    invalid_json
     ├── ModelNotAllowed             400    model_not_allowed
     ├── Unauthorized                401    unauthorized             (with WWW-Authenticate)
     ├── Forbidden                   403    forbidden
     ├── NotFound                    404    not_found
     │    └── ModelNotFound          404    model_not_found
     ├── MethodNotAllowed            405    method_not_allowed
     ├── BodyTooLarge                413    body_too_large
     ├── UnsupportedMediaType        415    unsupported_media_type
     ├── InvalidRequest              422    invalid_request
     ├── RateLimited                 429    rate_limited             yes
     ├── TooManyStreams              429    too_many_streams         yes
     ├── OverCapacity                503    over_capacity            yes
     ├── ResumeUnavailable           409    resume_unavailable
     ├── Cancelled                   409    cancelled
     ├── Shutdown                    503    shutdown                 yes
     ├── StoreUnavailable            503    store_unavailable        yes
     ├── GenerationLost              503    generation_lost          yes
     ├── Internal                    500    internal
     └── UpstreamError (the upstream failed; never the caller's fault, so never 4xx but 429)
          ├── UpstreamUnavailable    502    upstream_unavailable     yes
          ├── UpstreamTimeout        504    upstream_timeout         yes
          ├── UpstreamRateLimited    429    upstream_rate_limited    yes
          ├── UpstreamFailed         502    upstream_error           yes
          ├── UpstreamIncomplete     502    upstream_incomplete      yes
          ├── UpstreamAuth           502    upstream_auth
          └── UpstreamBadRequest     502    upstream_bad_request

Before a response starts an error is sent as its status with
`{"error": {"code", "message"}}`; after, as an SSE `error` event whose data is
`{"code", "message", "retryable"}` (plus `retry_after` when known). An error
the upstream explained adds `upstream`: its HTTP status and its error object's
`message`, `type`, `code` and `param`, bounded and with credentials masked (and
the message is the upstream's). `from_upstream` is the one place that
translates `openai` exceptions.
The OpenAI-compatible endpoints answer the same errors in OpenAI's shape
(`openai_response`, `openai_event`), so the `openai` SDK raises the exception
it would raise for OpenAI itself.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from typing import Any, ClassVar

import httpx2
import openai
from starlette.responses import JSONResponse

from gateway.logs import REDACTED, redact

__all__ = [
    "BodyTooLarge",
    "Cancelled",
    "Forbidden",
    "GatewayError",
    "GenerationLost",
    "Internal",
    "InvalidJSON",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotAllowed",
    "ModelNotFound",
    "NotFound",
    "OverCapacity",
    "RateLimited",
    "ResumeUnavailable",
    "Shutdown",
    "StoreUnavailable",
    "TooManyStreams",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamAuth",
    "UpstreamBadRequest",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamIncomplete",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_response",
    "from_event_data",
    "from_upstream",
    "openai_event",
    "openai_response",
    "upstream_detail",
]


#: The longest `Retry-After` passed on from an upstream: beyond it, a client should
#: rather try again than believe the upstream.
_MAX_RETRY_AFTER = 3600.0
#: The longest text of an upstream's error object passed on.
_MAX_DETAIL = 1000
#: API keys as providers print them ("Incorrect API key provided: sk-proj-...").
_KEY = re.compile(r"\b(?:sk|pk|rk|gsk|xai|key)[-_][\w*.-]{6,}", re.IGNORECASE)
#: The statuses whose error body the OpenAI front door answers as the upstream did.
_CALLER_ERRORS = (400, 404, 413, 422)


class GatewayError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False
    default_message: ClassVar[str] = "Internal error."

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        upstream: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        #: The upstream's own account of the error (`upstream_detail`), when it gave one.
        self.upstream = upstream
        super().__init__(self.message)

    @property
    def retry_seconds(self) -> int | None:
        """`retry_after` as clients get it, in the header, body and event alike: whole
        seconds, rounded up (never 0), so nobody comes back too early."""
        return None if self.retry_after is None else max(1, math.ceil(self.retry_after))

    def headers(self) -> dict[str, str]:
        if self.retry_seconds is None:
            return {}
        return {"Retry-After": str(self.retry_seconds)}

    def body(self) -> dict[str, Any]:
        """The JSON body of an error answered before a stream starts."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_seconds is not None:
            error["retry_after"] = self.retry_seconds
        if self.upstream is not None:
            error["upstream"] = self.upstream
        return {"error": error}

    def event_data(self) -> str:
        """The data of the SSE `error` event that ends a stream."""
        data: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.retry_seconds is not None:
            data["retry_after"] = self.retry_seconds
        if self.upstream is not None:
            data["upstream"] = self.upstream
        return json.dumps(data)


class InvalidJSON(GatewayError):
    status, code, default_message = 400, "invalid_json", "The body is not valid JSON."


class ModelNotAllowed(GatewayError):
    status, code, default_message = 400, "model_not_allowed", "That model is not available."


class Unauthorized(GatewayError):
    """Missing, wrong, expired or forged credentials; the message never says which."""

    status, code, default_message = 401, "unauthorized", "Authentication required."

    def __init__(
        self,
        message: str | None = None,
        *,
        invalid: bool = False,
        retry_after: float | None = None,
        upstream: dict[str, Any] | None = None,
    ) -> None:
        default = "Invalid credentials." if invalid else None
        super().__init__(message or default, retry_after=retry_after, upstream=upstream)
        self.invalid = invalid

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="sse-gateway"'
        if self.invalid:
            challenge += ', error="invalid_token"'
        return {**super().headers(), "WWW-Authenticate": challenge}


class Forbidden(GatewayError):
    status, code, default_message = 403, "forbidden", "Not allowed."


class NotFound(GatewayError):
    status, code, default_message = 404, "not_found", "Not found."


class ModelNotFound(NotFound):
    code = "model_not_found"
    default_message = "The model does not exist or is not routed by this gateway."


class MethodNotAllowed(GatewayError):
    status, code, default_message = 405, "method_not_allowed", "Method not allowed."


class BodyTooLarge(GatewayError):
    status, code, default_message = 413, "body_too_large", "The body is too large."


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"
    default_message = "The body must be application/json."


class InvalidRequest(GatewayError):
    status, code, default_message = 422, "invalid_request", "The request is invalid."


class RateLimited(GatewayError):
    status, code, retryable = 429, "rate_limited", True
    default_message = "Too many requests; try again later."


class TooManyStreams(GatewayError):
    status, code, retryable = 429, "too_many_streams", True
    default_message = "Too many streams running for this caller; wait for one to end."


class OverCapacity(GatewayError):
    status, code, retryable = 503, "over_capacity", True
    default_message = "Too many streams at once; try again shortly."


class ResumeUnavailable(GatewayError):
    status, code = 409, "resume_unavailable"
    default_message = "The stream cannot be resumed from that event id."


class Cancelled(GatewayError):
    status, code, default_message = 409, "cancelled", "The stream was cancelled."


class Shutdown(GatewayError):
    status, code, retryable = 503, "shutdown", True
    default_message = "The gateway is shutting down."


class StoreUnavailable(GatewayError):
    status, code, retryable = 503, "store_unavailable", True
    default_message = "The stream store is unavailable; try again shortly."


class GenerationLost(GatewayError):
    """The instance generating the stream stopped renewing its lease (it died)."""

    status, code, retryable = 503, "generation_lost", True
    default_message = "The gateway instance generating this stream was lost."


class Internal(GatewayError):
    pass


class UpstreamError(GatewayError):
    status, code, retryable = 502, "upstream_error", True
    default_message = "The upstream failed."


class UpstreamUnavailable(UpstreamError):
    code, default_message = "upstream_unavailable", "Cannot connect to the upstream."


class UpstreamTimeout(UpstreamError):
    status, code, default_message = 504, "upstream_timeout", "The upstream timed out."


class UpstreamRateLimited(UpstreamError):
    status, code = 429, "upstream_rate_limited"
    default_message = "The upstream is rate limiting requests."


class UpstreamFailed(UpstreamError):
    pass


class UpstreamIncomplete(UpstreamError):
    code = "upstream_incomplete"
    default_message = "The upstream ended the answer before it was complete."


class UpstreamAuth(UpstreamError):
    code, retryable = "upstream_auth", False
    default_message = "The gateway's credentials were refused by the upstream."


class UpstreamBadRequest(UpstreamError):
    code, retryable = "upstream_bad_request", False
    default_message = "The upstream rejected the request."


def from_upstream(exc: Exception, *, streaming: bool) -> UpstreamError:
    """Translate an `openai` or `httpx2` exception; `streaming` means the response had begun.

    The upstream's error object is passed on (`upstream_detail`), except for a
    401/403: that one is about the gateway's own key, not the caller's request.
    """
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException) and not _refused(exc):
        return UpstreamTimeout()
    if isinstance(exc, httpx2.HTTPError):  # raised while reading a streamed body
        return UpstreamFailed("The upstream connection was lost mid-stream.")
    if isinstance(exc, openai.APIConnectionError):
        if streaming:
            return UpstreamFailed("The upstream connection was lost mid-stream.")
        return UpstreamUnavailable()
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            return UpstreamAuth(f"The upstream answered HTTP {status}.")
        upstream = upstream_detail(exc.body, status)
        message = upstream.get("message") or f"The upstream answered HTTP {status}."
        if status == 429:
            retry_after = _retry_after(exc.response.headers)
            return UpstreamRateLimited(message, retry_after=retry_after, upstream=upstream)
        if 400 <= status < 500:
            return UpstreamBadRequest(message, upstream=upstream)
        return UpstreamFailed(message, upstream=upstream)
    if isinstance(exc, openai.APIError):
        return UpstreamFailed("The upstream reported an error mid-stream.")
    return UpstreamFailed()


def upstream_detail(body: Any, status: int | None = None) -> dict[str, Any]:
    """The upstream's own error: its HTTP status (None mid-stream) and the `message`,
    `type`, `code` and `param` of its error object (`body`, or `body["error"]`),
    each bounded in size and with credentials masked."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, str):
        error = {"message": error}
    detail: dict[str, Any] = {"status": status}
    for key in ("message", "type", "code", "param"):
        value = error.get(key) if isinstance(error, dict) else None
        if isinstance(value, str):
            detail[key] = _KEY.sub(REDACTED, redact(value))[:_MAX_DETAIL]
        elif isinstance(value, int) and not isinstance(value, bool):
            detail[key] = value
    return detail


def _refused(exc: BaseException) -> bool:
    """Whether a "timeout" was really a refused connection.

    The SDK's aiohttp transport maps every connect failure to `ConnectTimeout`;
    the socket error underneath tells a refusal from a real timeout.
    """
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__
    return False


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), at
    most `_MAX_RETRY_AFTER`; None when absent or not a finite number (`inf`, `nan`)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return _bounded(float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _bounded(float(value))
    except ValueError:
        pass
    try:
        return _bounded(email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _bounded(seconds: float) -> float | None:
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), _MAX_RETRY_AFTER)


def error_response(exc: GatewayError) -> JSONResponse:
    """The answer to an error raised before a response started."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


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


def openai_response(exc: GatewayError) -> JSONResponse:
    """An error of the OpenAI-compatible endpoints, before a response started."""
    status, body = _openai_error(exc)
    return JSONResponse(body, status_code=status, headers=exc.headers())


def openai_event(exc: GatewayError) -> bytes:
    """The `data: {"error": ...}` chunk that ends a chat completion stream: the SDK
    raises `openai.APIError` on it instead of returning a short answer."""
    return b"data: " + json.dumps(_openai_error(exc)[1]).encode() + b"\n\n"


def from_event_data(data: str) -> GatewayError:
    """Rebuild the error a stored `error` event describes (to answer it as HTTP)."""
    fields = json.loads(data)
    error_class = _BY_CODE.get(fields.get("code"), Internal)
    return error_class(
        fields.get("message"),
        retry_after=fields.get("retry_after"),
        upstream=fields.get("upstream"),
    )


def _subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))]


_BY_CODE: dict[str, type[GatewayError]] = {
    cls.code: cls for cls in reversed(_subclasses(GatewayError))
}
