"""HTTP endpoints: the stream protocol, the seed's `/api/stream`, health checks.

The protocol is written down in docs/protocol.md; keep the two in step.
"""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth import Identity
from gateway.errors import NotFound, ResumeUnavailable
from gateway.events import parse_last_event_id
from gateway.payloads import ChatRequest, LegacyRequest, Payload, read_payload
from gateway.responses import StreamResponse, sse_error_response
from gateway.state import AppState

__all__ = ["read_request", "routes", "start_generation"]


async def create_stream(request: Request) -> Response:
    state = AppState.of(request.app)
    identity, chat = await read_request(state, request, ChatRequest)
    stream_id = await start_generation(state, identity, chat)
    return JSONResponse(
        {"id": stream_id, "events_url": state.auth.events_url(stream_id)},
        status_code=201,
        headers={"Location": f"/v1/streams/{stream_id}/events"},  # no token: headers get logged
    )


async def read_request(
    state: AppState, request: Request, model: type[Payload]
) -> tuple[Identity, Payload]:
    """Who calls and what they ask, for an endpoint that starts a generation, checked
    in this order: the caller (401), their rate (429, before the body is read), then
    the body as `model` (413, 415, 400, 422)."""
    identity = state.auth.identify(request.headers, request.client)
    await state.limits.check_rate(identity)
    return identity, await read_payload(request, model, state.settings.limits)


async def start_generation(state: AppState, identity: Identity, chat: ChatRequest) -> str:
    """Start a generation in one of the caller's stream slots (freed when it ends)."""
    state.descriptors.check(state.settings.server.fd_reserve)
    slot = await state.limits.acquire(identity)
    try:
        stream_id = state.auth.new_stream_id(identity)
        return await state.generations.start(
            chat, stream_id=stream_id, slot=slot, caller=identity.name
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await slot.release()
        raise


async def stream_events(request: Request) -> Response | StreamResponse:
    state = AppState.of(request.app)
    stream_id = request.path_params["stream_id"]
    state.auth.check_reader(stream_id, request.headers, request.query_params.get("token"))
    info = await state.store.info(stream_id)
    if info is None:
        raise NotFound("No such stream.")
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        after = parse_last_event_id(raw) or 0
    except ValueError:
        return sse_error_response(ResumeUnavailable("Malformed Last-Event-ID."), state.settings)
    if info.finished and after >= info.last_id:
        return Response(status_code=204)
    if after > info.last_id:
        problem = ResumeUnavailable("That event id is beyond the end of the stream.")
        return sse_error_response(problem, state.settings)
    if after < info.first_id - 1:
        problem = ResumeUnavailable("Events after that id are no longer kept.")
        return sse_error_response(problem, state.settings)
    return StreamResponse(state, stream_id, after=after)


async def delete_stream(request: Request) -> Response:
    state, stream_id = AppState.of(request.app), request.path_params["stream_id"]
    state.auth.check_owner(stream_id, request.headers)
    if not await state.store.cancel(stream_id):
        raise NotFound("No such stream.")
    return Response(status_code=204)


async def api_stream(request: Request) -> StreamResponse:
    """The seed's contract: raw text, or SSE when the client accepts it."""
    state = AppState.of(request.app)
    identity, payload = await read_request(state, request, LegacyRequest)
    stream_id = await start_generation(state, identity, payload.to_chat())
    wants_sse = "text/event-stream" in request.headers.get("accept", "")
    return StreamResponse(
        state,
        stream_id,
        format="sse" if wants_sse else "text",
        hold=True,
        headers={"X-Stream-ID": stream_id},
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = AppState.of(request.app)
    if state.generations.draining:
        message = "The gateway is shutting down."
    elif not await state.store.ready():
        message = "The stream store is unavailable."
    elif state.descriptors.short(state.settings.server.fd_reserve):
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
