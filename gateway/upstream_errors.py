"""The upstream's failures as gateway errors: the one place that reads aiohttp's
exceptions and an upstream's error responses (and the error objects upstreams
send mid-stream).

The upstream's own account of an error is passed on (`upstream_detail`): its
HTTP status and its error object's `message`, `type`, `code` and `param`,
bounded and with credentials masked; and the message is the upstream's. Not
for a 401/403: that one is about the gateway's own key, not the caller's
request. A `Retry-After` is believed up to `_MAX_RETRY_AFTER`.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.errors import (
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.logs import REDACTED, redact

__all__ = ["from_response", "from_status", "from_transport", "upstream_detail"]

#: The longest `Retry-After` passed on from an upstream: beyond it, a client should
#: rather try again than believe the upstream.
_MAX_RETRY_AFTER = 3600.0
#: The most of an error response's body read for the upstream's account of the error.
_MAX_ERROR_BODY = 65536
#: The longest text of an upstream's error object passed on.
_MAX_DETAIL = 1000
#: API keys as providers print them ("Incorrect API key provided: sk-proj-...").
_KEY = re.compile(r"\b(?:sk|pk|rk|gsk|xai|key)[-_][\w*.-]{6,}", re.IGNORECASE)


async def from_response(response: aiohttp.ClientResponse) -> UpstreamError:
    """An error response (status 400 and up), from its headers and the first
    `_MAX_ERROR_BODY` bytes of its body: an upstream's error page is not read whole."""
    body = bytearray()
    async for piece in response.content.iter_any():
        body += piece
        if len(body) >= _MAX_ERROR_BODY:
            break
    return from_status(response.status, response.headers, bytes(body[:_MAX_ERROR_BODY]))


def from_status(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """An error response (`status` 400 and up), from its headers and (part of) its body."""
    if status in (401, 403):
        return UpstreamAuth(f"The upstream answered HTTP {status}.")
    upstream = upstream_detail(_error_object(body), status)
    message = upstream.get("message") or f"The upstream answered HTTP {status}."
    if status == 429:
        return UpstreamRateLimited(message, retry_after=_retry_after(headers), upstream=upstream)
    if status < 500:
        return UpstreamBadRequest(message, upstream=upstream)
    return UpstreamFailed(message, upstream=upstream)


def from_transport(exc: Exception, *, streaming: bool) -> UpstreamError:
    """Translate an aiohttp exception (or a socket timeout); `streaming` means the
    answer's body had begun."""
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are ones too
        return UpstreamTimeout()
    if streaming:
        return UpstreamFailed("The upstream connection was lost mid-stream.")
    if isinstance(exc, aiohttp.ClientConnectionError):
        return UpstreamUnavailable()
    return UpstreamFailed()  # e.g. a response aiohttp cannot parse


def _error_object(body: bytes) -> Any:
    """An error body as JSON when it is JSON, else its text (None when empty)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text or None


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


def _retry_after(headers: Mapping[str, str]) -> float | None:
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
