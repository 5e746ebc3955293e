"""The Redis `StreamStore` and its limit counters: streams shared by every instance.

Each stream is five keys with one hash tag (one cluster slot), `sse:{id}:...`
(`gateway.stores.redis_keys`):

- `events`, a Redis Stream whose entry ids are `<sse id>-0`, trimmed to
  `streams.max_events`;
- `meta`, a hash with the last id and `finished` (`0`, `1`, or `lost`);
- `lease`, held by the instance that generates the stream
  (`gateway.stores.redis_generations`); a reader that finds it gone ends the
  stream as lost (`gateway.stores.redis_reads`);
- `readers`, one field per attached reader (the disconnect grace), and
  `cancel`, the `DELETE` flag.

Appends are exactly once: one Lua script (`gateway.stores.redis_scripts`) checks
the id it is given against `meta.last`, so a call that is sent again after a
timeout, or whose reply was lost, is recognised as already applied instead of
being stored twice or failing half-way (the bug of a MULTI/EXEC sent twice); one
call may store several events (`append_many`: the generation's deltas that came
while its previous append was on its way), all or none. The appends of every
stream generated here share round trips
(`gateway.stores.redis_pipelining`), and the store retries a failed append for
up to `streams.store_outage` (`gateway.stores.redis_calls`).

Readers of one stream on one instance share one follower
(`gateway.stores.redis_follower`), so Redis connections grow with the streams
read here, not with their readers (the pool is sized from
`limits.max_concurrent_streams`); the appends of a stream generated here go
straight to its follower.

Every key expires: `retention` after the terminal event, or, for a stream
whose instance died, `upstream.timeouts.total + retention` after creation.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
from redis.exceptions import RedisError

from gateway.config import Settings
from gateway.errors import GatewayError, GenerationLost, StoreUnavailable
from gateway.stores import TERMINAL_EVENTS, StoredEvent, StreamInfo, check_batch
from gateway.stores.redis_calls import RedisCalls
from gateway.stores.redis_counters import RedisCounters
from gateway.stores.redis_follower import Followers
from gateway.stores.redis_generations import LocalGenerations
from gateway.stores.redis_keys import latest_stream_key, sse_id, stream_key
from gateway.stores.redis_pipelining import PipelinedScript
from gateway.stores.redis_reads import StreamReads
from gateway.stores.redis_scripts import APPEND

__all__ = ["RedisStore"]

logger = logging.getLogger("gateway.stores.redis")

#: Connections beyond one per stream: appends, reader counts, signals, limits.
_POOL_SPARE = 64


class RedisStore:
    shared = True
    appends_wait = True

    def __init__(self, settings: Settings, on_error: Callable[[], None] = lambda: None) -> None:
        """`on_error` is called for every failed Redis operation
        (`gateway_redis_errors_total`)."""
        #: Readers check the lease at least this often while no event comes.
        lease_check = settings.redis.lease_ttl / 2
        self._max_events = settings.streams.max_events
        self._retention_ms = max(1, int(settings.streams.retention * 1000))
        total = settings.upstream.timeouts.total + settings.streams.retention
        self._unfinished_s = math.ceil(total + settings.redis.lease_ttl)
        self._calls = RedisCalls(
            settings.redis.url,
            blocking_read=lease_check,
            # A follower holds a connection per stream read here: as many streams as
            # this instance generates, and as many again generated elsewhere.
            max_connections=2 * settings.limits.max_concurrent_streams + _POOL_SPARE,
            outage=settings.streams.store_outage,
            on_error=on_error,
        )
        self._generations = LocalGenerations(
            self._calls,
            instance=secrets.token_hex(8),
            lease_ms=max(1, int(settings.redis.lease_ttl * 1000)),
            unfinished_s=self._unfinished_s,
        )
        self._reads = StreamReads(self._calls, lease_check, (self._max_events, self._retention_ms))
        self._followers = Followers(self._reads, self._generations.stored)
        self._append_script: PipelinedScript | None = None

    async def open(self) -> None:
        self._calls.open()
        self._append_script = PipelinedScript(self._calls.client, APPEND)

    async def close(self) -> None:
        self._followers.close()
        if self._append_script is not None:
            self._append_script.close()
        await self._calls.close()

    async def run(self) -> None:
        await self._generations.run()

    async def ready(self) -> bool:
        try:
            with anyio.fail_after(2):
                return bool(await self._calls.client.ping())
        except (RedisError, OSError, TimeoutError):
            self._calls.on_error()
            return False

    def counters(self) -> RedisCounters:
        return RedisCounters(self._calls.client, self._calls)

    async def create(self, stream_id: str) -> None:
        meta = stream_key(stream_id, "meta")
        generations = self._generations
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping={"last": 0, "finished": 0})
            pipe.expire(meta, self._unfinished_s)
            pipe.set(stream_key(stream_id, "lease"), generations.instance, px=generations.lease_ms)
            await pipe.execute()
        generations.add(stream_id)

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        terminal = event in TERMINAL_EVENTS
        return (await self._append(stream_id, [(event, data)], terminal=terminal))[0]

    async def append_many(
        self, stream_id: str, events: Sequence[tuple[str, str]]
    ) -> list[StoredEvent]:
        check_batch(events)
        if not events:
            return []
        return await self._append(stream_id, events, terminal=False)

    async def _append(
        self, stream_id: str, events: Sequence[tuple[str, str]], *, terminal: bool
    ) -> list[StoredEvent]:
        """`events` in one call of the append script (one event when it is `terminal`)."""
        generation = self._generations.get(stream_id)
        if generation is None:
            raise RuntimeError(f"stream {stream_id} is not generated here or already finished")
        # The ids are taken before the first await: appends of one stream never share one.
        expected = generation.next_id
        generation.next_id += len(events)
        args: list[object] = [expected, self._max_events, self._generations.instance]
        args += [self._generations.lease_ms, int(terminal), self._retention_ms, self._unfinished_s]
        for event, data in events:
            args += (event, data)
        append = self._append_script
        assert append is not None, "the store is not open"
        keys = generation.keys
        try:
            # Shielded: a generation cancelled mid-call must still know what was stored.
            with anyio.CancelScope(shield=True):
                first_id = int(await self._calls.until_back(lambda: append(keys, args)))
            if first_id < 0:
                raise _append_failure(first_id)
        except BaseException:
            self._followers.failed(stream_id)
            raise
        finally:
            # After its terminal event (stored or not) the generation is over here: its
            # lease lapses and readers end the stream as lost if nothing was stored.
            if terminal:
                self._generations.remove(stream_id)
        stored = [StoredEvent(first_id + i, *event) for i, event in enumerate(events)]
        generation.stored = stored[-1].id
        self._followers.hand_over(stream_id, stored)
        return stored

    async def info(self, stream_id: str) -> StreamInfo | None:
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hmget(stream_key(stream_id, "meta"), ["last", "finished"])
            pipe.xrange(stream_key(stream_id, "events"), count=1)
            (last, finished), oldest = await pipe.execute()
        if last is None:
            return None
        first = sse_id(oldest[0][0]) if oldest else int(last) + 1
        return StreamInfo(first, int(last), finished != "0")

    async def read(self, stream_id: str, after: int, timeout: float) -> Sequence[StoredEvent]:
        follower = self._followers.get(stream_id)
        if follower is not None:
            return await self._followers.read(stream_id, follower, after, timeout)
        return await self._reads.read(stream_id, after, timeout)

    @asynccontextmanager
    async def attach(self, stream_id: str) -> AsyncIterator[None]:
        reader = secrets.token_hex(8)
        await self._generations.count_reader(stream_id, reader, joined=True)
        follower = self._followers.join(stream_id)
        try:
            yield
        finally:
            self._followers.leave(stream_id, follower)
            with anyio.CancelScope(shield=True):
                try:
                    await self._generations.count_reader(stream_id, reader, joined=False)
                except StoreUnavailable:
                    logger.warning("stream %s: cannot count a reader leaving", stream_id)

    async def cancel(self, stream_id: str) -> bool:
        return await self._generations.cancel(stream_id)

    async def wait_cancelled(self, stream_id: str) -> None:
        await self._generations.generation(stream_id).cancelled.wait()

    async def wait_abandoned(self, stream_id: str, grace: float) -> None:
        await self._generations.wait_abandoned(stream_id, grace, self._reads.lease_check)

    # -- chats of the AI SDK endpoint (gateway.ui_chat) ----------------------------------

    async def set_chat(self, chat_key: str, stream_id: str) -> None:
        async with self._calls() as client:
            await client.set(latest_stream_key(chat_key), stream_id, ex=self._unfinished_s)

    async def chat_stream(self, chat_key: str) -> str | None:
        async with self._calls() as client:
            stream_id = await client.get(latest_stream_key(chat_key))
        return None if stream_id is None else str(stream_id)

    async def forget_chat(self, chat_key: str, stream_id: str) -> None:
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
        async with self._calls() as client:
            await client.eval(script, 1, latest_stream_key(chat_key), stream_id)


def _append_failure(reply: int) -> GatewayError:
    """What a negative reply of the append script means."""
    if reply == -1:  # it was there when the generation began: the store lost it
        return GenerationLost("The store lost the stream (was Redis restarted?).")
    if reply == -2:
        return GenerationLost("The stream was ended while the store was unreachable.")
    return StoreUnavailable("An event was lost while the store was unreachable.")
