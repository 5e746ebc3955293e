"""`create_app(settings)`: builds the whole gateway, with no side effects at import.

Clients (the upstream's HTTP pool, the store's connections) are opened and
closed by the lifespan, which also runs the background tasks and drains the generations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.auth import Authenticator, startup_warnings
from gateway.config import Settings
from gateway.config_loader import load_settings
from gateway.errors import GatewayError, Internal, MethodNotAllowed, NotFound
from gateway.generations import Generations
from gateway.limits import Limits
from gateway.metrics import Metrics
from gateway.metrics_server import serve_metrics
from gateway.middleware import RequestMiddleware
from gateway.openai_api import routes as openai_routes
from gateway.responses import error_response
from gateway.routes import routes
from gateway.routing import Router
from gateway.server import EXIT_NOTICE
from gateway.simulator import Simulator, simulator_key
from gateway.state import AppState
from gateway.stores import StreamStore, create_store
from gateway.ui_chat import routes as ui_chat_routes
from gateway.web import DEFAULT_DIRECTORY, WebMount

__all__ = ["create_app"]

logger = logging.getLogger("gateway.app")


def create_app(
    settings: Settings | None = None,
    *,
    store: StreamStore | None = None,
    router: Router | None = None,
) -> Starlette:
    """The gateway; `store` and `router` replace the configured ones (tests script
    them). The lifespan opens and closes them either way."""
    settings = settings or load_settings()
    simulator = None
    if settings.serves_simulator:
        key = None if settings.auth.mode == "none" else simulator_key(settings)
        simulator = Simulator(settings.simulator, api_key=key)
        if key is not None:
            settings = settings.with_simulator_key(key)
    metrics = Metrics(settings.metrics)
    auth = Authenticator(settings)
    given_store, given_router = store, router

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        for warning in startup_warnings(settings):
            logger.warning(warning)
        # Whatever fails while starting, what was opened before it is closed again.
        async with AsyncExitStack() as stack:
            store = given_store
            if store is None:  # (not `or`: an empty memory store is falsy)
                store = create_store(settings, on_error=metrics.redis_errors.inc)
            await store.open()
            stack.push_async_callback(store.close)
            router = given_router if given_router is not None else Router(settings, metrics)
            stack.push_async_callback(router.aclose)
            limits = Limits(settings, store.counters())
            tasks = await stack.enter_async_context(anyio.create_task_group())
            # Background work runs here; the first callback on the way out cancels it
            # (generations run in tasks of their own, and drain has ended them by then).
            stack.callback(tasks.cancel_scope.cancel)
            tasks.start_soon(_supervised, "stream store", store.run)
            tasks.start_soon(_supervised, "slot releases", limits.run)
            generations = Generations(settings, store, router, metrics)
            state = AppState(settings, store, generations, metrics, router, auth, limits)
            state.publish(app)
            timeout = settings.server.drain_timeout
            on_exit = await tasks.start(_drain_on_exit, state, timeout)
            async with _metrics_listener(metrics, settings):
                yield {EXIT_NOTICE: on_exit}  # the server calls it when it starts to exit
            await generations.drain(timeout)

    app_routes = routes() + openai_routes() + ui_chat_routes()
    if settings.metrics.enabled and settings.metrics.port is None:
        app_routes.append(Route("/metrics", metrics.endpoint, methods=["GET"]))
    if simulator is not None:
        app_routes.append(Mount("/simulator", app=simulator.app))
    web = Path(settings.web.directory) if settings.web.directory else DEFAULT_DIRECTORY
    if settings.web.enabled and web.is_dir():
        app_routes.append(WebMount(web))
    app = Starlette(
        routes=app_routes,
        middleware=[
            Middleware(RequestMiddleware, metrics=metrics),
            *_security_middleware(settings),
        ],
        lifespan=lifespan,
        exception_handlers={
            ClientDisconnect: _client_gone,
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    app.state.simulator = simulator  # tests read what it was asked
    return app


def _security_middleware(settings: Settings) -> list[Middleware]:
    """The client address from trusted proxies only (uvicorn's own handling is off in
    `sse-gateway serve`), and CORS for the configured origins (preflight included)."""
    middleware = [Middleware(ProxyHeadersMiddleware, trusted_hosts=settings.server.trusted_proxies)]
    cors = settings.cors
    if cors.allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors.allowed_origins,
                allow_credentials=cors.allow_credentials,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "X-Auth", "Content-Type", "Last-Event-ID"],
                expose_headers=["Location", "Retry-After", "X-Request-ID", "X-Stream-ID"],
                max_age=600,
            )
        )
    return middleware


async def _supervised(name: str, work: Callable[[], Awaitable[None]]) -> None:
    """Run background `work` for the app's life: if it fails, log and start it again."""
    while True:
        try:
            await work()
            return
        except Exception:
            logger.exception("%s failed; restarting it", name)
        await anyio.sleep(1)


async def _drain_on_exit(
    state: AppState,
    timeout: float,
    *,
    task_status: TaskStatus[Callable[[], None]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """On SIGTERM, drain at once, while uvicorn still serves the open streams.

    The lifespan's shutdown only runs once uvicorn has closed every connection,
    too late to refuse new streams or to send `error: shutdown` to readers. The
    server says it is exiting through the notice this task starts with (the
    lifespan state's `EXIT_NOTICE`, see `gateway.server`); it may be called
    from a signal handler, hence `call_soon_threadsafe`.
    """
    exiting = anyio.Event()
    loop = asyncio.get_running_loop()

    def notice() -> None:
        loop.call_soon_threadsafe(exiting.set)

    task_status.started(notice)
    await exiting.wait()
    state.exits.exiting()  # readers end after their grace (see StreamResponse)
    await state.generations.drain(timeout)


def _metrics_listener(metrics: Metrics, settings: Settings) -> AbstractAsyncContextManager[None]:
    """`/metrics` on its own port when `metrics.port` is set."""
    port = settings.metrics.port
    if not settings.metrics.enabled or port is None:
        return nullcontext()
    return serve_metrics(metrics, settings.metrics.host or settings.server.host, port)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left while its request body was being read: nobody to answer, and
    not a server error (nginx's 499, "client closed request", in logs and metrics)."""
    return Response(status_code=499)


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
