"""`create_app(settings)`: builds the whole gateway, with no side effects at import.

Clients (the upstream's HTTP pool, the store's connections) are opened and
closed by the lifespan, which also owns the task group generations run in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from gateway.config import Settings, load_settings
from gateway.errors import GatewayError, Internal, MethodNotAllowed, NotFound, error_response
from gateway.relay import Relay
from gateway.routes import Gateway, routes
from gateway.simulator import Simulator
from gateway.store import create_store
from gateway.upstream import Upstream
from gateway.web import DEFAULT_DIRECTORY, WebMount

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    simulator = Simulator(settings.simulator) if settings.simulator.enabled else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = create_store(settings.streams)
        upstream = Upstream(settings.upstream, settings.upstream_base_url)
        await store.open()
        try:
            async with anyio.create_task_group() as tasks:
                gateway = Gateway(settings, store, Relay(settings, store, upstream, tasks))
                app.state.gateway = gateway  # for operators' tools and tests
                yield {"gateway": gateway}
                await gateway.relay.drain(settings.server.drain_timeout)
                tasks.cancel_scope.cancel()
        finally:
            await upstream.aclose()
            await store.close()

    app_routes = routes()
    if simulator is not None:
        app_routes.append(Mount("/simulator", app=simulator.app))
    web = Path(settings.web.directory) if settings.web.directory else DEFAULT_DIRECTORY
    if settings.web.enabled and web.is_dir():
        app_routes.append(WebMount(web))
    app = Starlette(
        routes=app_routes,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    app.state.settings = settings
    app.state.simulator = simulator
    return app


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (unknown path, wrong method) in our JSON shape."""
    assert isinstance(exc, HTTPException)
    error = {404: NotFound(), 405: MethodNotAllowed()}.get(exc.status_code)
    if error is None:
        return Response(status_code=exc.status_code, headers=exc.headers)
    response = error_response(error)
    response.headers.update(exc.headers or {})
    return response


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return error_response(Internal())
