"""The upstream: an OpenAI-compatible chat completions API, called with the `openai` SDK.

The SDK's defaults are not ours: its 600 s read timeout and its own retries are
replaced by `upstream.timeouts` and `upstream.retries`, and a deadline watched
here catches a stalled stream whatever the socket does. Retries happen only
before the first token was handed on, so a client never sees text twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx2
import openai

from gateway import logs
from gateway.chunks import Chunk, ToolCalls, parse_chunk
from gateway.config import UpstreamSettings
from gateway.decoder import SSEDecoder
from gateway.errors import (
    GatewayError,
    UpstreamIncomplete,
    UpstreamTimeout,
    from_upstream,
)
from gateway.metrics import Metrics, UpstreamRequest
from gateway.payloads import ChatRequest

__all__ = ["Delta", "Finish", "OnChunk", "OnDelta", "Upstream"]

OnChunk = Callable[[Chunk], Awaitable[None]]

logger = logging.getLogger("gateway.upstream")

_CLOSE_TIMEOUT = 2.0
_DRAIN_TIMEOUT = 0.1
_BACKOFF_BASE = 0.25


class _Watchdog:
    """Cancels `scope` when the upstream is too slow: no first token within
    `first_token`, a silence over `idle` once tokens flow, or the `deadline`.

    A chunk only records the time (`touch`); the timer re-arms itself when it
    fires before its time, so the per-chunk cost is one float assignment.
    """

    def __init__(
        self, scope: anyio.CancelScope, first_token: float, idle: float, deadline: float
    ) -> None:
        self._scope = scope
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._deadline = deadline
        self._due = min(self._loop.time() + first_token, deadline)
        self._last: float | None = None
        self._handle = self._loop.call_at(self._due, self._check)
        #: A content token has arrived: `idle` applies from now on.
        self.started = False

    def touch(self) -> None:
        """A chunk arrived; the first content token switches to the `idle` limit."""
        self._last = self._loop.time()
        if not self.started:
            self.started = True
            self._arm(min(self._last + self._idle, self._deadline))

    def shorten(self, seconds: float) -> None:
        """Give the upstream at most `seconds` more."""
        self._deadline = min(self._deadline, self._loop.time() + seconds)
        self._last = None
        self._arm(self._deadline)

    def _arm(self, due: float) -> None:
        self._handle.cancel()
        self._due = due
        self._handle = self._loop.call_at(due, self._check)

    def stop(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        if self._last is not None:
            self._due = min(self._last + self._idle, self._deadline)
        if self._loop.time() >= self._due:
            self._scope.cancel()
        else:
            self._handle = self._loop.call_at(self._due, self._check)


@dataclass(frozen=True, slots=True)
class Finish:
    finish_reason: str
    usage: dict[str, Any] | None
    #: The answer's tool calls, assembled: `{"id", "name", "arguments"}` each.
    tool_calls: tuple[dict[str, Any], ...] = ()
    #: The label of the upstream that answered (set by the router).
    upstream: str | None = None


DeltaKind = Literal["token", "reasoning", "tool_call"]


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of output, as a stream event: `kind` is its name, `data` its JSON.

    `text` is the answer or reasoning text, or a tool call's argument fragment;
    a tool call's `id` and `name` come with its first fragment.
    """

    kind: DeltaKind
    text: str
    index: int = 0
    id: str | None = None
    name: str | None = None

    @property
    def data(self) -> str:
        if self.kind != "tool_call":
            return '{"text": ' + json.dumps(self.text) + "}"
        call: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            call["id"] = self.id
        if self.name is not None:
            call["name"] = self.name
        call["arguments"] = self.text
        return json.dumps(call)

    def continued_by(self, other: Delta) -> bool:
        """Whether `other` only adds text to this delta (same kind, same tool call),
        so the two may go out as one event."""
        return (
            other.kind == self.kind
            and other.index == self.index
            and other.id is None
            and other.name is None
        )

    def joined(self, text: str) -> Delta:
        return Delta(self.kind, self.text + text, self.index, self.id, self.name)


OnDelta = Callable[[Delta], Awaitable[None]]


def deltas(chunk: Chunk) -> list[Delta]:
    """A chunk's output as events: reasoning, then text, then tool-call pieces."""
    found = []
    if chunk.reasoning:
        found.append(Delta("reasoning", chunk.reasoning))
    if chunk.content:
        found.append(Delta("token", chunk.content))
    for call in chunk.tool_calls:
        if call.arguments or call.id or call.name:
            found.append(Delta("tool_call", call.arguments, call.index, call.id, call.name))
    return found


class Upstream:
    def __init__(self, settings: UpstreamSettings, base_url: str, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        default_name = urlsplit(base_url).netloc if settings.base_url else "simulator"
        self._name = settings.name or default_name
        timeouts = settings.timeouts
        api_key = settings.api_key.get_secret_value() if settings.api_key else "unset"
        timeout = httpx2.Timeout(
            connect=timeouts.connect,
            read=max(timeouts.first_token, timeouts.idle),
            write=timeouts.connect,
            pool=timeouts.connect,
        )
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=timeout,
            # aiohttp's C parser reads chunked bodies with far less CPU than h11.
            http_client=openai.DefaultAioHttpClient(timeout=timeout),
        )

    async def aclose(self) -> None:
        await self._client.close()

    @property
    def name(self) -> str:
        """This upstream's label in logs and metrics."""
        return self._name

    async def complete(self, chat: ChatRequest, on_delta: OnDelta) -> Finish:
        """Stream one answer, handing each piece of output (text, reasoning, a tool
        call's piece) to `on_delta` as it comes.

        Raises a `GatewayError` subclass; retries those that are retryable
        while no output has been handed on yet.
        """

        async def forward(chunk: Chunk) -> None:
            for delta in deltas(chunk):
                await on_delta(delta)

        return await self._complete(self._arguments(chat), forward)

    async def relay(self, fields: dict[str, Any], on_chunk: OnChunk) -> Finish:
        """Stream one answer for the OpenAI front door: `on_chunk` gets every chunk
        (tool calls, usage and all), from the first chunk with output on, preceded by
        the ones held back before it (the role chunk), so a failed attempt leaves
        nothing behind. `fields` are the request body's, without `model` (this
        upstream's own is used) and `stream`."""
        return await self._complete(fields, on_chunk)

    async def _complete(self, fields: dict[str, Any], forward: OnChunk) -> Finish:
        """`fields` (the body without `model` and `stream`) are passed on as given: all
        but `messages` through `extra_body`, so fields the SDK does not know pass too."""
        body = dict(fields)
        arguments: dict[str, Any] = {
            "model": self._settings.model,
            "messages": body.pop("messages"),
            "extra_body": body,
        }
        request_id = logs.request_id.get()
        if request_id is not None:  # so one request can be followed into the upstream's logs
            arguments["extra_headers"] = {"X-Request-ID": request_id}
        settings = self._settings
        deadline = anyio.current_time() + settings.timeouts.total
        relayed = False

        async def relay(chunk: Chunk) -> None:
            nonlocal relayed
            if not relayed:
                measured.token()
            relayed = True
            await forward(chunk)

        for attempt in range(settings.retries + 1):
            try:
                with self._measured(retry=attempt > 0) as measured:
                    return await self._attempt(arguments, relay, deadline, measured)
            except GatewayError as exc:
                delay = self._retry_delay(exc, attempt, deadline)
                if relayed or delay is None:
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
        arguments: dict[str, Any],
        forward: OnChunk,
        deadline: float,
        measured: UpstreamRequest,
    ) -> Finish:
        """One request. The body's bytes go through the SSE decoder and each chunk
        is parsed here: building an SDK model per chunk costs more CPU than
        everything else the gateway does per token. `forward` gets every chunk
        from the first with output on, preceded by the ones held back before it."""
        timeouts = self._settings.timeouts
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        response: openai.AsyncAPIResponse[Any] | None = None
        done = False
        held: list[Chunk] = []  # chunks before the first output
        calls = ToolCalls()
        with anyio.CancelScope() as scope:
            watchdog = _Watchdog(scope, timeouts.first_token, timeouts.idle, deadline)
            try:
                request = self._client.chat.completions.with_streaming_response.create(
                    **arguments, stream=True
                )
                response = await request.__aenter__()
                measured.status = response.status_code
                decoder = SSEDecoder()
                async for data in response.iter_bytes():
                    for event in decoder.feed(data):
                        if done:
                            continue
                        if event.data.startswith("[DONE]"):
                            # Read on to the end of the body, briefly, so the connection is reused.
                            done = True
                            watchdog.shorten(_DRAIN_TIMEOUT)
                            continue
                        chunk = parse_chunk(event.data)
                        if chunk.usage is not None:
                            usage = chunk.usage
                        if chunk.finish_reason:
                            finish_reason = chunk.finish_reason
                        for call in chunk.tool_calls:
                            calls.add(call)
                        if not (watchdog.started or chunk.output):
                            held.append(chunk)
                            continue
                        watchdog.touch()
                        for early in held:
                            await forward(early)
                        held.clear()
                        await forward(chunk)
            except (openai.OpenAIError, httpx2.HTTPError) as exc:
                raise from_upstream(exc, streaming=response is not None) from exc
            finally:
                watchdog.stop()
                if response is not None:
                    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                        await response.close()
        if scope.cancelled_caught and not done:
            raise UpstreamTimeout(
                "The upstream did not finish the answer in time."
                if watchdog.started
                else "The upstream sent no token in time."
            )
        if finish_reason is None:
            raise UpstreamIncomplete()
        for early in held:  # an answer without output: a role and a finish chunk
            await forward(early)
        return Finish(finish_reason, usage, tuple(calls.assembled()))

    def _arguments(self, chat: ChatRequest) -> dict[str, Any]:
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
