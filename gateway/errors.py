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
`{"error": {"code", "message"}}` (`body`, `headers`); after, as an SSE `error`
event whose data is `{"code", "message", "retryable"}` (`event_data`, which
`from_event_data` reads back), plus `retry_after` when known. An error the
upstream explained adds `upstream`: its HTTP status and its error object's
`message`, `type`, `code` and `param` (and the message is the upstream's).

This module only describes failures. Translating the `openai` SDK's
exceptions is the upstream boundary's work (`gateway.upstream_errors`);
OpenAI's own error shapes are the OpenAI front door's (`gateway.openai_errors`);
the HTTP answer is `gateway.responses.error_response`.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

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
    "from_event_data",
]


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
        #: The upstream's own account of the error (`upstream_errors.upstream_detail`), if any.
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
