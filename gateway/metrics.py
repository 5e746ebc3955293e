"""Metrics: what the gateway counts, and the `/metrics` page Prometheus reads.

Each app owns a `Metrics` with its own registry, so several apps in one
process (tests) never mix their counts. Under `uvicorn --workers N`, set
`metrics.multiprocess_dir`: every worker then writes its values to files there
(prometheus_client's multiprocess mode) and `/metrics`, whichever worker
answers, adds them all up; gauges count live workers only.

The hot paths record per stream, not per token, with label children bound
once; the one per-token call is the inter-token gap (`StreamMeter.token`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import openai
import uvicorn
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import ConfigError, MetricsSettings
from gateway.errors import GatewayError

__all__ = ["LATENCY_BUCKETS", "TOKEN_GAP_BUCKETS", "Metrics", "StreamMeter", "UpstreamRequest"]

upstream_logger = logging.getLogger("gateway.upstream")

#: Time to first token and request durations: 10 ms to 60 s (models may think first).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
#: Gaps between tokens are usually tens of milliseconds; a stall shows in the top buckets.
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db$")


class Metrics:
    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self._directory = settings.multiprocess_dir
        if self._directory:
            _use_multiprocess_mode(self._directory)
        elif values.ValueClass is not values.MutexValue:
            raise ConfigError(
                "PROMETHEUS_MULTIPROC_DIR is set: set metrics.multiprocess_dir instead, "
                "so /metrics adds up every worker"
            )
        registry = self._registry = CollectorRegistry()

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=registry, multiprocess_mode="livesum")

        self.streams_started = Counter(
            "gateway_streams_started", "Streams created.", registry=registry
        )
        self.streams_finished = Counter(
            "gateway_streams_finished",
            "Streams ended, by outcome: done, cancelled, client_gone or the error code.",
            ["outcome"],
            registry=registry,
        )
        self.active_streams = gauge("gateway_active_streams", "Generations running now.")
        self.active_subscribers = gauge(
            "gateway_active_subscribers", "Clients reading a stream now."
        )
        self.time_to_first_token = histogram(
            "gateway_time_to_first_token_seconds",
            "From the create request to the first output (text, reasoning or a tool call) "
            "relayed to readers.",
            LATENCY_BUCKETS,
        )
        self.time_to_first_content_token = histogram(
            "gateway_time_to_first_content_token_seconds",
            "From the create request to the first answer text relayed (after any reasoning).",
            LATENCY_BUCKETS,
        )
        self.upstream_time_to_first_token = histogram(
            "gateway_upstream_time_to_first_token_seconds",
            "From sending an upstream request to its first output (text, reasoning or a "
            "tool call).",
            LATENCY_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "gateway_inter_token_latency_seconds",
            "Gap between consecutive tokens of a stream.",
            TOKEN_GAP_BUCKETS,
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens relayed (added when a stream ends).", registry=registry
        )
        self.usage_tokens = Counter(
            "gateway_usage_tokens",
            "Tokens the upstreams reported in usage, by kind: prompt, completion, reasoning "
            "(part of completion); unreported: deltas relayed for answers without usage.",
            ["kind"],
            registry=registry,
        )
        self.sent_bytes = Counter(
            "gateway_sent_bytes",
            "Body bytes of stream responses sent to clients.",
            registry=registry,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Upstream requests, by HTTP status (none: no answer) and code (done, "
            "cancelled or the error code).",
            ["status", "code"],
            registry=registry,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries", "Upstream requests that were retries.", registry=registry
        )
        self.routed = Counter(
            "gateway_routed_streams",
            "Answers by requested model, the upstream that served them (none: every "
            "upstream of the route failed before the first token) and outcome.",
            ["model", "upstream", "outcome"],
            registry=registry,
        )
        self.upstream_request_duration = histogram(
            "gateway_upstream_request_duration_seconds",
            "Upstream requests from sending to the end of the answer.",
            LATENCY_BUCKETS,
        )
        self.http_requests = Counter(
            "gateway_http_requests",
            "HTTP requests, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_request_duration = histogram(
            "gateway_http_request_duration_seconds",
            "HTTP requests from arrival to the end of the response (a stream's whole life).",
            LATENCY_BUCKETS,
        )
        self.redis_errors = Counter(
            "gateway_redis_errors", "Failed Redis operations of the Redis store.", registry=registry
        )

    def stream_started(self) -> StreamMeter:
        """Count a new stream; its meter times its tokens and records how it ended."""
        self.streams_started.inc()
        self.active_streams.inc()
        return StreamMeter(self)

    @asynccontextmanager
    async def subscribed(self) -> AsyncIterator[None]:
        """Count a reader for as long as the context is open."""
        self.active_subscribers.inc()
        try:
            yield
        finally:
            self.active_subscribers.dec()

    def upstream_request(self, *, retry: bool) -> UpstreamRequest:
        if retry:
            self.upstream_retries.inc()
        return UpstreamRequest(self)

    def exposition(self) -> bytes:
        """The text Prometheus scrapes."""
        if not self._directory:
            return generate_latest(self._registry)
        _forget_dead_workers(self._directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def endpoint(self, request: Request) -> Response:
        """`GET /metrics`."""
        body = await anyio.to_thread.run_sync(self.exposition)
        return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    @asynccontextmanager
    async def serve(self, host: str) -> AsyncIterator[None]:
        """Serve `/metrics` alone on `metrics.port`, in a thread, while the context is open.

        The socket uses SO_REUSEPORT, so every worker of `--workers N` can bind
        it; in multiprocess mode any of them gives the same answer.
        """
        from starlette.applications import Starlette
        from starlette.routing import Route

        assert self.settings.port is not None
        app = Starlette(routes=[Route("/metrics", self.endpoint, methods=["GET"])])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, self.settings.port))
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
            await anyio.to_thread.run_sync(thread.join, 5)
            sock.close()


class StreamMeter:
    """One stream's token timing; `finish` records its outcome once."""

    __slots__ = ("_content", "_gap", "_last", "_metrics", "_started", "first_token", "tokens")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._gap = metrics.inter_token_latency
        self._started = self._last = time.monotonic()
        self.tokens = 0
        #: Seconds from the start to the first output, once there was one.
        self.first_token: float | None = None
        self._content = False

    def token(self, *, content: bool = True) -> None:
        """One delta relayed; `content` when it carries answer text (not reasoning
        or a tool call)."""
        now = time.monotonic()
        if self.tokens:
            self._gap.observe(now - self._last)
        else:
            self.first_token = now - self._started
            self._metrics.time_to_first_token.observe(self.first_token)
        if content and not self._content:
            self._content = True
            self._metrics.time_to_first_content_token.observe(now - self._started)
        self._last = now
        self.tokens += 1

    @property
    def duration(self) -> float:
        return time.monotonic() - self._started

    def usage(self, usage: dict[str, Any] | None) -> dict[str, int]:
        """Add an answer's usage to `gateway_usage_tokens_total`; returns it for the log
        line. Without usage from the upstream, the deltas relayed stand in for it."""
        counts: dict[str, Any]
        if usage is None:
            counts = {"unreported": self.tokens}
        else:
            details = usage.get("completion_tokens_details")
            counts = {
                "prompt": usage.get("prompt_tokens"),
                "completion": usage.get("completion_tokens"),
                "reasoning": details.get("reasoning_tokens") if isinstance(details, dict) else None,
            }
        found = {
            kind: value
            for kind, value in counts.items()
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0
        }
        for kind, value in found.items():
            self._metrics.usage_tokens.labels(kind).inc(value)
        return found

    def finish(self, outcome: str) -> None:
        metrics = self._metrics
        metrics.streams_finished.labels(outcome).inc()
        metrics.tokens.inc(self.tokens)
        metrics.active_streams.dec()


class UpstreamRequest:
    """Times one upstream request; on exit records it and logs one line."""

    __slots__ = ("_metrics", "_started", "first_token", "status")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = time.monotonic()
        #: The HTTP status the upstream answered, once it did.
        self.status: int | None = None
        self.first_token: float | None = None

    def token(self) -> None:
        """The first content token of this request arrived."""
        self.first_token = time.monotonic() - self._started
        self._metrics.upstream_time_to_first_token.observe(self.first_token)

    def __enter__(self) -> UpstreamRequest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        duration = time.monotonic() - self._started
        if exc is None:
            code = "done"
        elif isinstance(exc, GatewayError):
            code = exc.code
            if isinstance(exc.__cause__, openai.APIStatusError):
                self.status = exc.__cause__.status_code
        elif isinstance(exc, anyio.get_cancelled_exc_class()):
            code = "cancelled"
        else:
            code = "internal"
        status = str(self.status) if self.status is not None else "none"
        metrics = self._metrics
        metrics.upstream_requests.labels(status, code).inc()
        metrics.upstream_request_duration.observe(duration)
        upstream_logger.info(
            "upstream request finished",
            extra={
                "status": status,
                "outcome": code,
                "duration": round(duration, 6),
                "upstream_latency": _rounded(self.first_token),
            },
        )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def _use_multiprocess_mode(directory: str) -> None:
    """prometheus_client picks its value class from PROMETHEUS_MULTIPROC_DIR when it is
    imported, and finds its files through that variable; set both from our settings."""
    if not os.path.isdir(directory):
        raise ConfigError(f"metrics.multiprocess_dir: {directory} is not a directory")
    current = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if current not in (None, directory):
        raise ConfigError(
            f"metrics.multiprocess_dir: this process already writes metrics to {current}"
        )
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def _forget_dead_workers(directory: str) -> None:
    """Drop the gauges of workers that died without saying so (uvicorn has no hook):
    their streams are gone. Their counters stay, so totals never go backwards."""
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.search(path)
        if match:
            pids.add(int(match.group(1)))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, under another user
