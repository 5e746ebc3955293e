"""`limits.Counters` in Redis, on the Redis store's own connections."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import redis.asyncio as redis

from gateway.stores.redis_scripts import ACQUIRE, HIT

__all__ = ["RedisCounters"]


class RedisCounters:
    """`limits.Counters` shared by every instance, on the store's connections; each
    operation is one atomic script or command, safe to repeat."""

    def __init__(
        self,
        client: redis.Redis,
        calls: Callable[[], contextlib.AbstractAsyncContextManager[redis.Redis]],
    ) -> None:
        self._client = client
        self._calls = calls
        self._hit = client.register_script(HIT)
        self._acquire = client.register_script(ACQUIRE)

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        async with self._calls():
            count, ttl_ms = await self._hit(keys=[key], args=[int(window * 1000)])
        return int(count), int(ttl_ms) / 1000

    async def acquire(self, key: str, member: str, limit: int, ttl: float) -> bool:
        async with self._calls():
            added = await self._acquire(keys=[key], args=[limit, int(ttl * 1000), member])
        return bool(added)

    async def release(self, key: str, member: str) -> None:
        async with self._calls() as client:
            await client.zrem(key, member)
