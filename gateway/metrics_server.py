"""`/metrics` alone on its own port (`metrics.port`), away from the public listener.

It runs as a second uvicorn server in a thread of the gateway's process, for
as long as the app's lifespan. Its socket uses SO_REUSEPORT, so every worker
of `--workers N` can bind the same port; in multiprocess mode any of them
gives the same totals.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.metrics import Metrics

__all__ = ["serve_metrics"]

#: How long closing waits for the thread's server to stop.
_STOP_TIMEOUT = 5.0


@asynccontextmanager
async def serve_metrics(metrics: Metrics, host: str, port: int) -> AsyncIterator[None]:
    """Serve `GET /metrics` on `host:port` while the context is open."""
    app = Starlette(routes=[Route("/metrics", metrics.endpoint, methods=["GET"])])
    sock = _reusable_socket(host, port)
    config = uvicorn.Config(
        app, lifespan="off", ws="none", log_config=None, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.should_exit = True
        await anyio.to_thread.run_sync(thread.join, _STOP_TIMEOUT)
        sock.close()


def _reusable_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
