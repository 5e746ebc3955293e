"""The Redis store's connection pool, and what a failed call means to the client.

Every call of the store and of its limit counters goes through `RedisCalls`: a
failure is counted (`gateway_redis_errors_total`), logged, and reaches the client
as `store_unavailable`; `until_back` tries a call that is safe to repeat again
while Redis is away, for up to `streams.store_outage`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable

__all__ = ["RedisCalls"]

logger = logging.getLogger("gateway.stores.redis")

#: How long one Redis call may take before Redis counts as unavailable.
_CALL_TIMEOUT = 5.0
#: Pauses between the attempts of a call while Redis is away.
_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0)

T = TypeVar("T")


class RedisCalls:
    """`async with calls() as client:` for one or more calls; `calls.client` once open."""

    def __init__(
        self,
        url: str,
        *,
        blocking_read: float,
        max_connections: int,
        outage: float,
        on_error: Callable[[], None],
    ) -> None:
        """`blocking_read`: the longest a call waits in Redis on purpose (`XREAD BLOCK`)."""
        self._url = url
        self._socket_timeout = blocking_read + _CALL_TIMEOUT
        self._max_connections = max_connections
        self._outage = outage
        #: Called for every failed Redis operation (`gateway_redis_errors_total`).
        self.on_error = on_error
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        assert self._client is not None, "the store is not open"
        return self._client

    def open(self) -> None:
        # Not connecting here: the gateway starts (and reports not ready) while
        # Redis is down, and the pool connects once it is back.
        self._client = redis.from_url(
            self._url,
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=2,
            socket_timeout=self._socket_timeout,
            # A pooled connection idle this long is checked before use, so the first
            # call after a Redis restart does not fail on a dead socket.
            health_check_interval=1,
            retry=Retry(NoBackoff(), retries=1),  # every call here is safe to repeat
            max_connections=self._max_connections,
            # No CLIENT SETINFO on connect: Redis before 7.2 refuses it, and redis-py
            # then hands that refusal to a later command on a fresh connection
            # (hundreds of spurious `store_unavailable` in a burst of new streams).
            driver_info=None,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[redis.Redis]:
        """Redis calls whose failure the client sees as `store_unavailable`."""
        try:
            yield self.client
        except (RedisError, OSError) as exc:
            raise self.failed(exc) from None

    def failed(self, exc: RedisError | OSError) -> StoreUnavailable:
        """A failed Redis call, counted and logged, as the client sees it."""
        self.on_error()
        logger.warning("redis: %r", exc)
        return StoreUnavailable()

    async def until_back(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call` (which must be safe to repeat), tried again while Redis is away, for
        up to `streams.store_outage`."""
        deadline = time.monotonic() + self._outage
        for pause in itertools.chain(_BACKOFF, itertools.repeat(_BACKOFF[-1])):
            try:
                return await call()
            except (RedisError, OSError) as exc:
                failure = self.failed(exc)
            if time.monotonic() + pause > deadline:
                raise failure
            await anyio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover (the pauses never end)
