"""Per-caller limits: requests per minute and concurrent streams.

The counters live where the streams do: in this process with the `memory`
store, in Redis with the `redis` store, so every instance behind one load
balancer counts against the same numbers. `COUNTERS` maps `streams.store` to
the implementation, imported only when chosen (like `store.STORES`).

- Requests: a window of `60` seconds opens with a caller's first request and
  counts every write request until it closes (Redis: `INCR`, with the expiry
  set by the same Lua script, so a crash between the two cannot leave a
  counter that never expires).
- Streams: one member per running stream in a set per caller (Redis: a sorted
  set scored by expiry, so the slots of an instance that died free themselves
  after `upstream.timeouts.total`). The relay releases a slot when its
  generation ends, before the terminal event, so a client that saw `done` may
  start its next stream at once.

The public surface, for every endpoint that starts generations:

    identity = await authenticate(request)        # gateway.auth
    await check_rate(request, identity)           # 429 rate_limited
    chat = await read_payload(...)                # 4xx for bad input, model, max_tokens
    slot = await acquire_slot(request, identity)  # 429 too_many_streams
    stream_id = await relay.start(chat, slot=slot)   # the relay frees it at the end
    return holding(slot, app)                     # or: an ASGI app that frees it when done
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import Identity
from gateway.config import Settings
from gateway.errors import RateLimited, StoreUnavailable, TooManyStreams

if TYPE_CHECKING:
    import redis.asyncio as redis

__all__ = ["COUNTERS", "Counters", "Limits", "Slot", "acquire_slot", "check_rate", "holding"]

logger = logging.getLogger("gateway.limits")

WINDOW = 60.0
#: A slot outlives its generation's longest possible run by this much.
_SLOT_MARGIN = 60.0


class Counters(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        """Count a request; returns the count in `key`'s window and the seconds it has left."""

    async def acquire(self, key: str, member: str, limit: int, ttl: float) -> bool:
        """Add `member` to `key`'s set unless it holds `limit` members already."""

    async def release(self, key: str, member: str) -> None:
        """Remove `member`; nothing happens when it is not there."""


COUNTERS: dict[str, str] = {
    "memory": "gateway.limits:MemoryCounters",
    "redis": "gateway.limits:RedisCounters",
}


class Slot:
    """A caller's running stream; `release` (once, idempotent) frees it."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], Awaitable[None]] | None = None) -> None:
        self._release = release

    async def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await release()

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()


class Limits:
    """The limits of `settings.limits` over the counters `streams.store` picks."""

    def __init__(self, settings: Settings) -> None:
        self._limits = settings.limits
        self._slot_ttl = settings.upstream.timeouts.total + _SLOT_MARGIN
        module_name, _, class_name = COUNTERS[settings.streams.store].partition(":")
        self._counters: Counters = getattr(importlib.import_module(module_name), class_name)(
            settings
        )

    async def open(self) -> None:
        await self._counters.open()

    async def close(self) -> None:
        await self._counters.close()

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

        async def release() -> None:
            try:
                await self._counters.release(key, member)
            except StoreUnavailable:  # the slot expires by itself
                logger.warning("cannot release a stream slot; it will expire")

        return Slot(release)


def holding(slot: Slot, app: ASGIApp) -> ASGIApp:
    """`app`, with `slot` released once it has answered (a generation run in the request)."""

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await slot.release()

    return run


async def check_rate(request: Request, identity: Identity) -> None:
    """`Limits.check_rate` of the gateway serving `request`."""
    await _limits(request).check_rate(identity)


async def acquire_slot(request: Request, identity: Identity) -> Slot:
    """`Limits.acquire` of the gateway serving `request`."""
    return await _limits(request).acquire(identity)


def _limits(request: Request) -> Limits:
    limits: Limits = request.state.gateway.limits
    return limits


def _key(kind: str, identity: Identity) -> str:
    """Fixed-length keys whatever the identity holds (a JWT subject may be anything)."""
    digest = hashlib.sha256(identity.name.encode()).hexdigest()[:32]
    return f"sse:limits:{kind}:{digest}"


class MemoryCounters:
    """One process: plain dictionaries; expired windows are swept once a window."""

    def __init__(self, settings: Settings) -> None:
        self._windows: dict[str, tuple[int, float]] = {}
        self._sets: dict[str, set[str]] = {}
        self._next_sweep = 0.0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._windows = {k: v for k, v in self._windows.items() if v[1] > now}
            self._next_sweep = now + window
        count, end = self._windows.get(key, (0, 0.0))
        if now >= end:
            count, end = 0, now + window
        self._windows[key] = (count + 1, end)
        return count + 1, end - now

    async def acquire(self, key: str, member: str, limit: int, ttl: float) -> bool:
        members = self._sets.setdefault(key, set())
        if len(members) >= limit:
            return False
        members.add(member)
        return True

    async def release(self, key: str, member: str) -> None:
        members = self._sets.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self._sets[key]


# Both scripts take the time from Redis, so instances with different clocks agree.
_HIT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisCounters:
    """Every instance shares the counters; each operation is one atomic script."""

    def __init__(self, settings: Settings) -> None:
        self._url = settings.redis.url
        self._redis: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    async def open(self) -> None:
        import redis.asyncio as redis  # only when the redis store is chosen

        self._redis = redis.from_url(
            self._url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
        )
        self._scripts = {
            "hit": self._redis.register_script(_HIT),
            "acquire": self._redis.register_script(_ACQUIRE),
        }

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        count, ttl_ms = await self._call("hit", [key], [int(window * 1000)])
        return int(count), int(ttl_ms) / 1000

    async def acquire(self, key: str, member: str, limit: int, ttl: float) -> bool:
        return bool(await self._call("acquire", [key], [limit, int(ttl * 1000), member]))

    async def release(self, key: str, member: str) -> None:
        assert self._redis is not None, "the counters are not open"
        await self._guard(self._redis.zrem(key, member))

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self._guard(self._scripts[script](keys=keys, args=args))

    @staticmethod
    async def _guard(call: Awaitable[Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await call
        except (RedisError, OSError) as exc:
            logger.warning("redis limits: %s", type(exc).__name__)
            raise StoreUnavailable() from None
