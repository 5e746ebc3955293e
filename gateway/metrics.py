"""Metrics: what the gateway counts, and the `/metrics` page Prometheus reads.

Each app owns a `Metrics` with its own registry, so several apps in one
process (tests) never mix their counts. The hot paths record per stream, not
per token, with label children bound once; the one per-token call is the
inter-token gap (`StreamMeter.token`).

With several worker processes, `/metrics` adds up every worker's values
(`gateway.metrics_multiprocess`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

from gateway import metrics_multiprocess
from gateway.config import MetricsSettings
from gateway.errors import GatewayError

__all__ = [
    "LATENCY_BUCKETS",
    "TOKEN_GAP_BUCKETS",
    "Metrics",
    "StreamMeter",
    "UpstreamRequest",
]

#: Time to first token and request durations: 10 ms to 60 s (models may think first).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
#: Gaps between tokens are usually tens of milliseconds; a stall shows in the top buckets.
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)


class Metrics:
    def __init__(self, settings: MetricsSettings) -> None:
        self._directory = settings.multiprocess_dir
        metrics_multiprocess.check_shared_values(self._directory)
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
        if self._directory:
            return metrics_multiprocess.exposition(self._directory)
        return generate_latest(self._registry)

    async def endpoint(self, request: Request) -> Response:
        """`GET /metrics`."""
        body = await anyio.to_thread.run_sync(self.exposition)
        return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)


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
    """Times one upstream request; on exit records it, with its `outcome`."""

    __slots__ = ("_metrics", "_started", "duration", "first_token", "outcome", "status")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = time.monotonic()
        #: The HTTP status the upstream answered, once it did.
        self.status: int | None = None
        #: Seconds from sending to the first content token, once there was one.
        self.first_token: float | None = None
        #: Once the request has ended: `done`, `cancelled` or the error code.
        self.outcome: str | None = None
        #: Once the request has ended: seconds from sending to its end.
        self.duration: float | None = None

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
        self.duration = time.monotonic() - self._started
        if exc is None:
            self.outcome = "done"
        elif isinstance(exc, GatewayError):
            self.outcome = exc.code
        elif isinstance(exc, anyio.get_cancelled_exc_class()):
            self.outcome = "cancelled"
        else:
            self.outcome = "internal"
        status = str(self.status) if self.status is not None else "none"
        self._metrics.upstream_requests.labels(status, self.outcome).inc()
        self._metrics.upstream_request_duration.observe(self.duration)
