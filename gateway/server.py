"""The HTTP connection limits uvicorn does not have, uvicorn's options for `serve`,
and the process's tuning for serving.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`) but puts no
time limit on a request that arrives slowly, nor any size limit on its head
with its default parser (httptools): a client trickling a header line, or a
body, or opening a socket and sending nothing, holds a connection and a file
descriptor for ever. `GuardedProtocol` is uvicorn's httptools protocol with
three limits added where the request is read:

- the head (request line and headers) must arrive within `server.header_timeout`
  of the connection opening or of its previous response: else 408 and close
  (a connection that sent nothing is closed without an answer);
- the body within `server.body_timeout` of the head: else 408 (or, once the
  answer has started, just close); the application sees a disconnect;
- a head larger than `server.max_header_bytes` gets 431 and the connection is closed.

These answers are written below the application, in plain text like uvicorn's
own 400 and 503, and each closed connection is logged with its peer. The
limits travel on the uvicorn `Config` (`GatewayConfig`), which `--workers`
hands to each worker process.

The server also tells the application when it starts to exit, which ASGI has
no message for (the lifespan's shutdown only comes once every connection has
closed, too late to drain the open streams): an app that puts a callable under
`EXIT_NOTICE` in its lifespan state has it called at once on SIGTERM or SIGINT
(`GatewayServer`, the server `sse-gateway serve` runs itself) or, in a
`--workers` process (uvicorn runs its own server there), when the server asks
each open connection to finish (`GuardedProtocol.shutdown`). The callable must
be safe to call from a signal handler.

Loading the app also tunes the garbage collector for serving
(`GatewayConfig.load`): what is loaded is frozen out of collections, which
run every 10,000 allocations instead of 700.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from collections.abc import Mapping
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from gateway.config import ServerSettings, Settings

__all__ = [
    "EXIT_NOTICE",
    "GatewayConfig",
    "GatewayServer",
    "GuardedProtocol",
    "run",
    "uvicorn_options",
]

logger = logging.getLogger("gateway.server")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}

#: The lifespan state key of the app's exit notice (see the module docstring).
EXIT_NOTICE = "gateway.exit_notice"


#: Allocations between two young-generation collections (CPython's default: 700).
_GC_THRESHOLD = 10_000


class GatewayConfig(uvicorn.Config):
    """uvicorn's `Config`, carrying the connection limits of `server` to the protocol."""

    def __init__(self, app: Any, *, limits: ServerSettings, **options: Any) -> None:
        super().__init__(app, **options)
        self.limits = limits

    def load(self) -> None:
        """Load the app (in each worker process too), then tune the garbage collector
        for serving.

        What exists once the app is loaded (modules, classes, settings: most of the
        heap) lives as long as the process, so it is frozen out of collections; and
        a collection runs every `_GC_THRESHOLD` allocations instead of every 700.
        A stream allocates a few hundred objects, nearly all freed by reference
        counting, so the default ran a collection every few streams, and a full one
        (over every object, frozen ones aside) every few thousand: measured, about
        150 µs of CPU per stream before, about 10 after (docs/performance.md).
        """
        super().load()
        gc.collect()
        gc.freeze()
        gc.set_threshold(_GC_THRESHOLD)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with time limits on reading a request and a size
    limit on its head, from a `GatewayConfig` (defaults otherwise)."""

    _deadline: asyncio.TimerHandle | None = None
    _reading_head = True
    _head_bytes = 0

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = config.limits if isinstance(config, GatewayConfig) else ServerSettings()
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.max_header_bytes = limits.max_header_bytes

    def shutdown(self) -> None:
        """The server is exiting: tell the app (in a `--workers` process this is the
        first it hears of it), then finish this connection as uvicorn does."""
        _notify_exit(self.app_state)
        super().shutdown()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > self.max_header_bytes:
            self._refuse(431, f"The request head is larger than {self.max_header_bytes} bytes.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a request that follows at once (pipelined)
            self._arm(self.header_timeout, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._reading_head, self._head_bytes = False, 0
        super().on_headers_complete()
        self._arm(self.body_timeout, self._body_too_slow)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._disarm()  # the next request's clock starts when this response ends

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._reading_head and self._deadline is None and not self.transport.is_closing():
            self._arm(self.header_timeout, self._head_too_slow)

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self._head_bytes == 0 and self.cycle is None:
            self._log("no request within server.header_timeout")
            self.transport.close()
        else:
            self._refuse(408, "The request head did not arrive in time.")

    def _body_too_slow(self) -> None:
        self._deadline = None
        if self.cycle is not None and self.cycle.response_started:
            self._log("request body not received within server.body_timeout")
            self.transport.close()
        else:
            self._refuse(408, "The request body did not arrive in time.")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` below the application and close the connection."""
        if self.transport.is_closing():
            return
        self._log(message)
        if self.cycle is not None:  # the application must not write after this answer
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()

    def _log(self, message: str) -> None:
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        logger.info("connection closed: %s", message, extra={"peer": peer})


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the app the moment it is asked to exit: uvicorn
    only closes its listener on its next tick, and the app's connections later."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        lifespan = getattr(self, "lifespan", None)  # None until the server has begun
        if lifespan is not None:
            _notify_exit(lifespan.state)


def _notify_exit(state: Mapping[str, Any]) -> None:
    notice = state.get(EXIT_NOTICE)
    if notice is not None:
        notice()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.run` / `uvicorn.Config` for `settings`."""
    server = settings.server
    return {
        "host": server.host,
        "port": server.port,
        "http": GuardedProtocol,
        "ws": "none",
        "limit_concurrency": server.max_connections,
        "access_log": False,  # the gateway logs each request itself, with its request id
        "proxy_headers": False,  # the app trusts X-Forwarded-For from server.trusted_proxies only
        # Drain (ends streams at drain_timeout), then time to send their last event.
        "timeout_graceful_shutdown": math.ceil(server.drain_timeout) + 3,
    }


def run(config: GatewayConfig) -> bool:
    """Serve, in this process or in `config.workers` worker processes (as `uvicorn.run`
    does, for a `Config` of our own); `False` when the one server could not start."""
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return True
    server = GatewayServer(config)
    server.run()
    return server.started
