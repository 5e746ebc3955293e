"""`RequestMiddleware`: request ids, one log line and the HTTP metrics per request.

A pure ASGI middleware, so streaming responses pass through unbuffered; per
body chunk it costs one function call. The `X-Request-ID` comes from the
client (nginx sets `$request_id`) when it looks like an id, else is made here;
it is returned in the response, set for every log line of the request, and
passed on to the upstream (see `logs.request_id`).
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs
from gateway.metrics import Metrics

__all__ = ["RequestMiddleware", "route_template"]

logger = logging.getLogger("gateway.http")

_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        rid = _request_id(scope)
        rid_token = logs.request_id.set(rid)
        stream_token = logs.stream_id.set(None)
        root_path = scope.get("root_path", "")
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            duration = time.monotonic() - started
            route = route_template(scope, root_path)
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self._metrics.http_requests.labels(route, method, str(status)).inc()
            self._metrics.http_request_duration.observe(duration)
            path = scope["path"]
            if scope.get("query_string"):
                path += "?" + scope["query_string"].decode("latin-1")
            logger.info(
                "request finished",
                extra={
                    "method": scope["method"],
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration": round(duration, 6),
                    "stream_id": scope.get("path_params", {}).get("stream_id"),
                },
            )
            logs.stream_id.reset(stream_token)
            logs.request_id.reset(rid_token)


def route_template(scope: Scope, root_path: str = "") -> str:
    """The matched route's path template (`/v1/streams/{stream_id}/events`), never the raw
    path, so label values stay few; `unmatched` when no route matched."""
    route: BaseRoute | None = scope.get("route")
    if route is None:
        return "unmatched"
    mounted = scope.get("root_path", "")[len(root_path) :]
    if isinstance(route, Mount):  # an app without routes, e.g. static files
        return f"{route.path}/{{path}}"
    template: str = mounted + getattr(route, "path", "")
    return template


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _VALID_ID.fullmatch(candidate):
                return candidate
            break
    return secrets.token_hex(16)
