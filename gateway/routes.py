"""HTTP endpoints: the stream protocol, the seed's `/api/stream`, health checks.

The protocol is written down in docs/protocol.md; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth import Authenticator, Identity, authenticate
from gateway.config import Settings
from gateway.descriptors import Descriptors
from gateway.errors import NotFound, ResumeUnavailable
from gateway.events import parse_last_event_id
from gateway.limits import Limits
from gateway.metrics import Metrics
from gateway.payloads import ChatRequest, LegacyRequest, read_payload
from gateway.relay import Relay
from gateway.responses import StreamResponse, sse_error_response
from gateway.routing import Router
from gateway.stores import StreamStore

__all__ = ["Gateway", "gateway_of", "routes", "start_generation"]


@dataclass(frozen=True)
class Gateway:
    """What the handlers share; built by the app's lifespan."""

    settings: Settings
    store: StreamStore
    relay: Relay
    metrics: Metrics
    router: Router
    auth: Authenticator
    limits: Limits
    descriptors: Descriptors = field(default_factory=Descriptors)


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.state.gateway
    return gateway


async def create_stream(request: Request) -> Response:
    gateway = gateway_of(request)
    identity = await authenticate(request)
    await gateway.limits.check_rate(identity)
    chat = await read_payload(request, ChatRequest, gateway.settings.limits)
    stream_id = await start_generation(gateway, identity, chat)
    return JSONResponse(
        {"id": stream_id, "events_url": gateway.auth.events_url(stream_id)},
        status_code=201,
        headers={"Location": f"/v1/streams/{stream_id}/events"},  # no token: headers get logged
    )


async def start_generation(gateway: Gateway, identity: Identity, chat: ChatRequest) -> str:
    """Start a generation in one of the caller's stream slots (freed when it ends)."""
    gateway.descriptors.check(gateway.settings.server.fd_reserve)
    slot = await gateway.limits.acquire(identity)
    try:
        stream_id = gateway.auth.new_stream_id(identity)
        return await gateway.relay.start(chat, stream_id=stream_id, slot=slot, caller=identity.name)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await slot.release()
        raise


async def stream_events(request: Request) -> Response | StreamResponse:
    gateway = gateway_of(request)
    stream_id = request.path_params["stream_id"]
    gateway.auth.check_reader(request, stream_id)
    info = await gateway.store.info(stream_id)
    if info is None:
        raise NotFound("No such stream.")
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        after = parse_last_event_id(raw) or 0
    except ValueError:
        return sse_error_response(ResumeUnavailable("Malformed Last-Event-ID."), gateway.settings)
    if info.finished and after >= info.last_id:
        return Response(status_code=204)
    if after > info.last_id:
        problem = ResumeUnavailable("That event id is beyond the end of the stream.")
        return sse_error_response(problem, gateway.settings)
    if after < info.first_id - 1:
        problem = ResumeUnavailable("Events after that id are no longer kept.")
        return sse_error_response(problem, gateway.settings)
    return StreamResponse(gateway.store, stream_id, gateway.settings, gateway.metrics, after=after)


async def delete_stream(request: Request) -> Response:
    gateway, stream_id = gateway_of(request), request.path_params["stream_id"]
    gateway.auth.check_owner(request, stream_id)
    if not await gateway.store.cancel(stream_id):
        raise NotFound("No such stream.")
    return Response(status_code=204)


async def api_stream(request: Request) -> StreamResponse:
    """The seed's contract: raw text, or SSE when the client accepts it."""
    gateway = gateway_of(request)
    identity = await authenticate(request)
    await gateway.limits.check_rate(identity)
    payload = await read_payload(request, LegacyRequest, gateway.settings.limits)
    stream_id = await start_generation(gateway, identity, payload.to_chat())
    wants_sse = "text/event-stream" in request.headers.get("accept", "")
    return StreamResponse(
        gateway.store,
        stream_id,
        gateway.settings,
        gateway.metrics,
        format="sse" if wants_sse else "text",
        hold=True,
        headers={"X-Stream-ID": stream_id},
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    gateway = gateway_of(request)
    if gateway.relay.draining:
        message = "The gateway is shutting down."
    elif not await gateway.store.ready():
        message = "The stream store is unavailable."
    elif gateway.descriptors.short(gateway.settings.server.fd_reserve):
        message = "The gateway is short of file descriptors."
    else:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"error": {"code": "not_ready", "message": message}}, status_code=503)


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/streams", create_stream, methods=["POST"]),
        Route("/v1/streams/{stream_id}/events", stream_events, methods=["GET"]),
        Route("/v1/streams/{stream_id}", delete_stream, methods=["DELETE"]),
        Route("/api/stream", api_stream, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
