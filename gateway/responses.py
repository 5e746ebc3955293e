"""Responses that read a stream from the store and write it to one client.

`StreamResponse` is attached as a reader for its whole life (that is what
keeps the disconnect grace from firing) and writes either SSE frames or, for
the seed's `/api/stream` contract, the raw token text.

It is a plain ASGI response with one helper task, not sse-starlette's
`EventSourceResponse` (four tasks in a task group per reader): the heartbeat
is the timeout of the store read, each write has `sse.send_timeout` to be
taken (a client that does not read is dropped), one task waits for the
client's disconnect and cancels the response, and the app's `Exits` ends the
responses when the server exits (after `_shutdown_grace`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from contextlib import aclosing
from typing import Literal, Protocol

import anyio
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from gateway.config import Settings
from gateway.errors import GatewayError, StoreUnavailable, from_event_data
from gateway.events import HEARTBEAT, frame, retry
from gateway.exits import Exits
from gateway.metrics import Metrics
from gateway.stores import StoredEvent, StreamStore

__all__ = [
    "AppParts",
    "Encoder",
    "StreamResponse",
    "error_response",
    "send_within",
    "sse_error_response",
]

logger = logging.getLogger("gateway.responses")

Format = Literal["sse", "text"]

_WRITE_SIZE = 64 * 1024
#: How often a reader tries an unreachable store again.
_OUTAGE_POLL = 0.5


class _Aborted(Exception):
    """A text stream failed after its first byte: the response must not look complete."""


class Encoder(Protocol):
    """Writes a stream as another SSE dialect (the AI SDK's UI message stream, see
    `gateway.ui_chat`) instead of the gateway's own events."""

    def opening(self) -> bytes:
        """What the response starts with."""

    def encode(self, events: Sequence[StoredEvent]) -> Iterator[bytes]:
        """The bytes for some events; after the terminal one, the dialect's end."""

    def failure(self, exc: GatewayError) -> bytes:
        """The end of a stream that could not be read to its terminal event."""

    async def finished(self) -> None:
        """Called once the terminal event has been written to the client."""


class AppParts(Protocol):
    """What a response uses of the app: `AppState` has it all (so this module need
    not know the state), a test may give just these."""

    @property
    def store(self) -> StreamStore: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def exits(self) -> Exits:
        """Cuts the response when the server exits (after `_shutdown_grace`)."""


class StreamResponse:
    def __init__(
        self,
        app: AppParts,
        stream_id: str,
        *,
        after: int = 0,
        format: Format = "sse",
        hold: bool = False,
        headers: dict[str, str] | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        """`hold` waits (up to one heartbeat) for the first event before answering,
        so a stream that fails at once is answered with its HTTP status instead.
        `encoder` (with the `sse` format) replaces the gateway's event frames."""
        self._store = app.store
        self._stream_id = stream_id
        self._settings = app.settings
        self._metrics = app.metrics
        self._exits = app.exits
        self._after = after
        self._format = format
        self._hold = hold
        self._headers = headers
        self._encoder = encoder
        #: When the store became unreachable for this reader, if it is now.
        self._outage_since: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sse = self._settings.sse
        try:
            async with self._store.attach(self._stream_id), self._metrics.subscribed():
                first: Sequence[StoredEvent] = ()
                if self._hold:
                    first = await self._store.read(self._stream_id, self._after, sse.heartbeat)
                    if first and first[0].event == "error":
                        await error_response(from_event_data(first[0].data))(scope, receive, send)
                        return
                await self._respond(scope, receive, send, first)
        except (_Aborted, SendTimeoutError) as exc:
            # Leaving the response incomplete makes the server close the
            # connection, which is how a reader learns the body is not whole.
            reason = "client too slow" if isinstance(exc, SendTimeoutError) else exc
            logger.warning("stream %s: connection dropped: %s", self._stream_id, reason)

    async def _respond(
        self, scope: Scope, receive: Receive, send: Send, first: Sequence[StoredEvent]
    ) -> None:
        """Write the response until the stream ends, the client leaves, or the server
        exits (then the response is cut, incomplete)."""
        timeout, sent = self._settings.sse.send_timeout, self._metrics.sent_bytes.inc
        media_type = "text/event-stream" if self._format == "sse" else "text/plain"
        headers = [(k.lower().encode(), v.encode()) for k, v in (self._headers or {}).items()]
        given = {name for name, _ in headers}
        headers += [header for header in _headers(media_type) if header[0] not in given]
        start = {"type": "http.response.start", "status": 200, "headers": headers}
        await send_within(send, start, timeout)
        if scope["method"] == "HEAD":
            await send_within(send, {"type": "http.response.body", "body": b""}, timeout)
            return
        with anyio.CancelScope() as cancel:
            disconnected = asyncio.ensure_future(_disconnect(receive))
            disconnected.add_done_callback(lambda _: cancel.cancel())
            self._exits.add(cancel, self._shutdown_grace())
            try:
                more = True
                async with aclosing(self._body(first)) as body:
                    async for piece, more in body:
                        sent(len(piece))
                        message = {"type": "http.response.body", "body": piece, "more_body": more}
                        await send_within(send, message, timeout)
                if more:
                    await send_within(send, {"type": "http.response.body", "body": b""}, timeout)
            finally:
                self._exits.discard(cancel)
                disconnected.cancel()

    def _shutdown_grace(self) -> float:
        """On shutdown, a shared store's readers are let go at once (they resume on
        another instance); otherwise they get the rest, or `error: shutdown` once
        the relay's drain timeout has passed."""
        return 0 if self._store.shared else self._settings.server.drain_timeout + 1

    async def _body(self, batch: Sequence[StoredEvent]) -> AsyncGenerator[tuple[bytes, bool], None]:
        """The response's writes, each with whether more follow.

        Each write is a system call: the opening (the `retry` field, or the
        encoder's) goes out with the first events when they are already there
        (`hold`), and the write with the terminal event ends the response (except
        with an encoder, which hears of the end once it is written).
        """
        sse, encoder = self._format == "sse", self._encoder
        opening = (
            encoder.opening() if encoder else retry(self._settings.sse.retry_ms) if sse else b""
        )
        if opening and not batch:
            yield opening, True
            opening = b""
        cursor = self._after
        try:
            while True:
                if batch:
                    parts = (
                        encoder.encode(batch)
                        if encoder
                        else _frames(batch)
                        if sse
                        else _texts(batch)
                    )
                    if opening:
                        parts, opening = itertools.chain((opening,), parts), b""
                    pieces = list(_pieces(parts))
                    last = batch[-1]
                    aborted = not sse and last.event == "error"
                    ends = last.terminal and not (aborted or encoder)
                    for i, piece in enumerate(pieces, 1):
                        yield piece, not (ends and i == len(pieces))
                    if last.terminal:
                        if aborted:
                            raise _Aborted(from_event_data(last.data).code)
                        if ends and not pieces:
                            yield b"", False
                        if encoder:
                            await encoder.finished()
                        return
                    cursor = last.id
                batch = await self._read(cursor)
                if not batch and sse:
                    yield HEARTBEAT, True
        except GatewayError as exc:
            if not sse:
                raise _Aborted(exc.code) from exc
            yield encoder.failure(exc) if encoder else frame("error", exc.event_data()), False

    async def _read(self, cursor: int) -> Sequence[StoredEvent]:
        """The next batch; while the store is unreachable, nothing (a heartbeat goes
        out) until it is back, for up to `streams.store_outage`."""
        heartbeat = self._settings.sse.heartbeat
        try:
            batch = await self._store.read(self._stream_id, cursor, heartbeat)
        except StoreUnavailable:
            now = anyio.current_time()
            if self._outage_since is None:
                self._outage_since = now
            if now - self._outage_since >= self._settings.streams.store_outage:
                raise
            await anyio.sleep(min(heartbeat, _OUTAGE_POLL))
            return ()
        self._outage_since = None
        return batch


def _frames(batch: Sequence[StoredEvent]) -> Iterator[bytes]:
    return (event.frame for event in batch)


def _texts(batch: Sequence[StoredEvent]) -> Iterator[bytes]:
    return (json.loads(e.data)["text"].encode() for e in batch if e.event == "token")


def _pieces(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Join parts into writes of about `_WRITE_SIZE` bytes.

    One huge write would be buffered by the server whole; bounded writes make a
    reader that stops reading block, so `send_timeout` can drop it.
    """
    piece: list[bytes] = []
    size = 0
    for part in parts:
        piece.append(part)
        size += len(part)
        if size >= _WRITE_SIZE:
            yield b"".join(piece)
            piece, size = [], 0
    if piece:
        yield b"".join(piece)


async def send_within(send: Send, message: Message, timeout: float) -> None:
    """Send one ASGI message; a client that does not take it within `timeout`
    raises `SendTimeoutError` (it is treated as gone)."""
    try:
        async with asyncio.timeout(timeout):
            await send(message)
    except TimeoutError:
        raise SendTimeoutError() from None


def _headers(media_type: str) -> list[tuple[bytes, bytes]]:
    """The headers of every stream (sse-starlette's): uncached, unbuffered by proxies."""
    return [
        (b"content-type", f"{media_type}; charset=utf-8".encode()),
        (b"cache-control", b"no-store"),
        (b"connection", b"keep-alive"),
        (b"x-accel-buffering", b"no"),
    ]


async def _disconnect(receive: Receive) -> None:
    """Return once the client has gone (the request body, if any, was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def error_response(exc: GatewayError) -> JSONResponse:
    """The answer to an error raised before a response started."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


def sse_error_response(exc: GatewayError, settings: Settings) -> EventSourceResponse:
    """A stream that only says why it cannot be served (e.g. an unusable `Last-Event-ID`)."""

    async def body() -> AsyncIterator[bytes]:
        yield retry(settings.sse.retry_ms)
        yield frame("error", exc.event_data())

    return EventSourceResponse(body(), ping=0, sep="\n", send_timeout=settings.sse.send_timeout)
