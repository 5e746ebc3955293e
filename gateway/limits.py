"""Per-caller limits: requests per minute and concurrent streams.

The counters live where the streams do, on the store's own connections
(`StreamStore.counters()`): in this process with the `memory` store, in Redis
with the `redis` store, so every instance behind one load balancer counts
against the same numbers. Each check is atomic (one Lua script in Redis).

- Requests: a window of `60` seconds opens with a caller's first request and
  counts every write request until it closes.
- Streams: one member per running stream in a set per caller (Redis: a sorted
  set scored by expiry, so the slots of an instance that died free themselves
  after `upstream.timeouts.total`). A generation releases its slot when it
  ends, before its terminal event, so a client that saw `done` may start its
  next stream at once. A release that fails (the store is away) is retried in
  the background by `Limits.run` until it succeeds or the slot has expired.

The public surface, for every endpoint that starts generations:

    identity = auth.identify(request.headers, request.client)  # 401 (gateway.auth)
    await limits.check_rate(identity)             # 429 rate_limited
    chat = await read_payload(...)                # 4xx for bad input, model, max_tokens
    slot = await limits.acquire(identity)         # 429 too_many_streams
    stream_id = await generations.start(chat, stream_id=None, slot=slot)  # freed at its end
    return holding(slot, app)                     # or: an ASGI app that frees it when done
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from types import TracebackType
from typing import Protocol

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import Identity
from gateway.config import Settings
from gateway.errors import RateLimited, StoreUnavailable, TooManyStreams

__all__ = ["Counters", "Limits", "Slot", "holding"]

logger = logging.getLogger("gateway.limits")

WINDOW = 60.0
#: A slot outlives its generation's longest possible run by this much.
_SLOT_MARGIN = 60.0
#: How often failed slot releases are tried again.
_RELEASE_RETRY = 1.0


class Counters(Protocol):
    """The atomic counters a store keeps for `Limits`."""

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        """Count a request; returns the count in `key`'s window and the seconds it has left."""

    async def acquire(self, key: str, member: str, limit: int, ttl: float) -> bool:
        """Add `member` to `key`'s set unless it holds `limit` members already."""

    async def release(self, key: str, member: str) -> None:
        """Remove `member`; nothing happens when it is not there."""


class Slot:
    """A caller's running stream; `release` frees it, once, and never raises."""

    __slots__ = ("_key", "_limits", "_member")

    def __init__(self, limits: Limits | None = None, key: str = "", member: str = "") -> None:
        self._limits, self._key, self._member = limits, key, member

    async def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            await limits.release(self._key, self._member)

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.release()


class Limits:
    """The limits of `settings.limits` over the store's `counters`."""

    def __init__(self, settings: Settings, counters: Counters) -> None:
        self._limits = settings.limits
        self._slot_ttl = settings.upstream.timeouts.total + _SLOT_MARGIN
        self._counters = counters
        #: Releases that failed: (key, member) -> when the slot expires by itself.
        self._unreleased: dict[tuple[str, str], float] = {}

    async def check_rate(self, identity: Identity) -> None:
        """Count one request of `identity`; `RateLimited` over `requests_per_minute`."""
        limit = self._limits.requests_per_minute
        if limit is None:
            return
        count, left = await self._counters.hit(_key("rate", identity), WINDOW)
        if count > limit:
            raise RateLimited(f"At most {limit} requests per minute.", retry_after=left)

    async def acquire(self, identity: Identity) -> Slot:
        """A slot for one more stream; `TooManyStreams` over `concurrent_streams_per_identity`."""
        limit = self._limits.concurrent_streams_per_identity
        if limit is None:
            return Slot()
        key, member = _key("streams", identity), secrets.token_hex(8)
        if not await self._counters.acquire(key, member, limit, self._slot_ttl):
            raise TooManyStreams(
                f"At most {limit} stream{'s' * (limit != 1)} at once.", retry_after=1
            )
        return Slot(self, key, member)

    async def release(self, key: str, member: str) -> None:
        """Free a slot now, or, when the store is away, as soon as it is back."""
        try:
            await self._counters.release(key, member)
        except StoreUnavailable:
            logger.warning("cannot release a stream slot now; retrying in the background")
            self._unreleased[key, member] = time.monotonic() + self._slot_ttl

    async def run(self) -> None:
        """Retry failed releases until each succeeds or its slot has expired anyway."""
        while True:
            await anyio.sleep(_RELEASE_RETRY)
            now = time.monotonic()
            for (key, member), expiry in list(self._unreleased.items()):
                try:
                    if now < expiry:
                        await self._counters.release(key, member)
                except StoreUnavailable:
                    break  # still away: try them all again later
                del self._unreleased[key, member]


def holding(slot: Slot, app: ASGIApp) -> ASGIApp:
    """`app`, with `slot` released once it has answered (a generation run in the request)."""

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        async with slot:
            await app(scope, receive, send)

    return run


def _key(kind: str, identity: Identity) -> str:
    """Fixed-length keys whatever the identity holds (a JWT subject may be anything)."""
    digest = hashlib.sha256(identity.name.encode()).hexdigest()[:32]
    return f"sse:limits:{kind}:{digest}"
