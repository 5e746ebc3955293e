"""The upstream: an OpenAI-compatible chat completions API, called with aiohttp.

One `POST {base_url}/chat/completions` with `"stream": true` per attempt, on an
aiohttp session whose pool is sized from `limits.max_concurrent_streams`. Not
the `openai` SDK: its request building and its httpx-over-aiohttp adapter cost
about a millisecond of CPU per stream, more than the rest of the gateway's
work for a stream; the wire format is the same, and the SDK stays what the
tests and users call the gateway with. `upstream.timeouts` bound the connect
and each read, `upstream.retries` replace any client retries, and a
`Watchdog` catches a stalled stream whatever the socket does. Retries happen
only before the first output was handed on, so a client never sees text twice.

The body's bytes go through the SSE decoder (`gateway.decoder`) and each chunk
is parsed by `gateway.chunks`. What is handed on is the caller's choice: the
gateway's own events (`stream_deltas`, see `gateway.deltas`) or the
upstream's chunks as they are (`stream_chunks`, for the OpenAI front door).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio

from gateway import logs
from gateway.chunks import Chunk, ToolCalls, parse_chunk
from gateway.config import UpstreamSettings
from gateway.decoder import SSEDecoder
from gateway.deltas import OnDelta, deltas
from gateway.errors import GatewayError, UpstreamIncomplete, UpstreamTimeout
from gateway.metrics import Metrics, UpstreamRequest
from gateway.payloads import ChatRequest
from gateway.upstream_errors import from_response, from_transport
from gateway.watchdog import Watchdog

__all__ = ["Finish", "OnChunk", "Upstream"]

OnChunk = Callable[[Chunk], Awaitable[None]]

logger = logging.getLogger("gateway.upstream")

_DRAIN_TIMEOUT = 0.1
_BACKOFF_BASE = 0.25


@dataclass(frozen=True, slots=True)
class Finish:
    finish_reason: str
    usage: dict[str, Any] | None
    #: The answer's tool calls, assembled: `{"id", "name", "arguments"}` each.
    tool_calls: tuple[dict[str, Any], ...] = ()
    #: The label of the upstream that answered (set by the router).
    upstream: str | None = None


class Upstream:
    def __init__(
        self, settings: UpstreamSettings, base_url: str, metrics: Metrics, *, pool_size: int
    ) -> None:
        """`pool_size`: connections to this upstream at most (one per running stream)."""
        self._settings = settings
        self._metrics = metrics
        default_name = urlsplit(base_url).netloc if settings.base_url else "simulator"
        self._name = settings.name or default_name
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "sse-gateway",
        }
        if settings.api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        timeouts = settings.timeouts
        # `connect` covers waiting for a pooled connection too; the watchdog, not
        # `sock_read`, bounds the answer: the read timeout only catches a dead socket.
        self._timeout = aiohttp.ClientTimeout(
            connect=timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=max(timeouts.first_token, timeouts.idle),
        )
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use: aiohttp binds it to the running event loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._pool_size)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def name(self) -> str:
        """This upstream's label in logs and metrics."""
        return self._name

    async def stream_deltas(self, chat: ChatRequest, on_delta: OnDelta) -> Finish:
        """Stream one answer, handing each piece of output (text, reasoning, a tool
        call's piece) to `on_delta` as it comes.

        Raises a `GatewayError` subclass; retries those that are retryable
        while no output has been handed on yet.
        """

        async def forward(chunk: Chunk) -> None:
            for delta in deltas(chunk):
                await on_delta(delta)

        return await self._stream(_arguments(chat), forward)

    async def stream_chunks(self, fields: dict[str, Any], on_chunk: OnChunk) -> Finish:
        """Stream one answer for the OpenAI front door: `on_chunk` gets every chunk
        (tool calls, usage and all), from the first chunk with output on, preceded by
        the ones held back before it (the role chunk), so a failed attempt leaves
        nothing behind. `fields` are the request body's, without `model` (this
        upstream's own is used) and `stream`."""
        return await self._stream(fields, on_chunk)

    async def _stream(self, fields: dict[str, Any], forward: OnChunk) -> Finish:
        """`fields` (the body without `model` and `stream`) are passed on as given."""
        # ASCII JSON: a lone surrogate a client sent is escaped, never an encoding error.
        body = json.dumps(
            {"model": self._settings.model, **fields, "stream": True},
            separators=(",", ":"),
            allow_nan=False,
        ).encode()
        headers = self._headers
        request_id = logs.request_id.get()
        if request_id is not None:  # so one request can be followed into the upstream's logs
            headers = {**headers, "X-Request-ID": request_id}
        settings = self._settings
        deadline = anyio.current_time() + settings.timeouts.total
        handed_on = False

        async def hand_on(chunk: Chunk) -> None:
            nonlocal handed_on
            if not handed_on:
                measured.token()
            handed_on = True
            await forward(chunk)

        for attempt in range(settings.retries + 1):
            try:
                with self._measured(retry=attempt > 0) as measured:
                    return await self._attempt(body, headers, hand_on, deadline, measured)
            except GatewayError as exc:
                delay = self._retry_delay(exc, attempt, deadline)
                if handed_on or delay is None:
                    raise
            await anyio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _measured(self, *, retry: bool) -> Iterator[UpstreamRequest]:
        """One request's metrics, and its log line once it has ended."""
        measured = self._metrics.upstream_request(retry=retry)
        try:
            with measured:
                yield measured
        finally:
            logger.info(
                "upstream request finished",
                extra={
                    "status": "none" if measured.status is None else str(measured.status),
                    "outcome": measured.outcome,
                    "duration": _rounded(measured.duration),
                    "upstream_latency": _rounded(measured.first_token),
                },
            )

    def _retry_delay(self, exc: GatewayError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or `None` to give up."""
        settings = self._settings
        if not exc.retryable or attempt >= settings.retries:
            return None
        if exc.retry_after is not None:
            delay = exc.retry_after
        else:
            delay = _BACKOFF_BASE * 2**attempt * (0.5 + random.random() / 2)
        if delay > settings.max_retry_wait or anyio.current_time() + delay >= deadline:
            return None
        return delay

    async def _attempt(
        self,
        body: bytes,
        headers: dict[str, str],
        forward: OnChunk,
        deadline: float,
        measured: UpstreamRequest,
    ) -> Finish:
        """One request, under the watchdog; aiohttp's exceptions and error statuses
        become gateway errors here (`gateway.upstream_errors`)."""
        timeouts = self._settings.timeouts
        answer = _Answer(forward)
        opened = False
        with anyio.CancelScope() as scope:
            watchdog = Watchdog(scope, timeouts.first_token, timeouts.idle, deadline)
            try:
                async with self._client().post(self._url, data=body, headers=headers) as response:
                    measured.status = response.status
                    if response.status >= 400:
                        raise await from_response(response)
                    opened = True
                    try:
                        await answer.read(response.content.iter_any(), watchdog)
                    finally:
                        if not response.content.at_eof():
                            response.close()  # not reusable: the upstream sees the close
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise from_transport(exc, streaming=opened) from exc
            finally:
                watchdog.stop()
        if scope.cancelled_caught and not answer.done:
            raise UpstreamTimeout(
                "The upstream did not finish the answer in time."
                if watchdog.started
                else "The upstream sent no token in time."
            )
        return await answer.finish()


class _Answer:
    """One attempt's answer as it is read: what `Finish` reports, and the chunks
    before the first output, held back so that a failed attempt leaves nothing
    behind. `forward` gets every chunk from the first with output on, preceded
    by the held ones."""

    def __init__(self, forward: OnChunk) -> None:
        self._forward = forward
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._calls = ToolCalls()
        self._held: list[Chunk] = []
        #: `[DONE]` was read: the rest of the body is only drained.
        self.done = False

    async def read(self, body: AsyncIterator[bytes], watchdog: Watchdog) -> None:
        decoder = SSEDecoder()
        async for data in body:
            for event in decoder.feed(data):
                if self.done:
                    continue
                if event.data.startswith("[DONE]"):
                    # Read on to the end of the body, briefly, so the connection is reused.
                    self.done = True
                    watchdog.shorten(_DRAIN_TIMEOUT)
                    continue
                chunk = parse_chunk(event.data)
                if chunk.usage is not None:
                    self._usage = chunk.usage
                if chunk.finish_reason:
                    self._finish_reason = chunk.finish_reason
                for call in chunk.tool_calls:
                    self._calls.add(call)
                if not (watchdog.started or chunk.output):
                    self._held.append(chunk)
                    continue
                watchdog.touch()
                if self._held:
                    await self._release()
                await self._forward(chunk)

    async def finish(self) -> Finish:
        """How the answer finished; `UpstreamIncomplete` without a finish reason."""
        if self._finish_reason is None:
            raise UpstreamIncomplete()
        await self._release()  # an answer without output: a role and a finish chunk
        return Finish(self._finish_reason, self._usage, tuple(self._calls.assembled()))

    async def _release(self) -> None:
        for chunk in self._held:
            await self._forward(chunk)
        self._held.clear()


def _arguments(chat: ChatRequest) -> dict[str, Any]:
    """The request's fields as given, but always streamed with usage."""
    fields = chat.model_dump(exclude_unset=True, exclude={"model", "stream"})
    options = fields.get("stream_options")
    fields["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return fields


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)
