"""The Redis `StreamStore`: streams shared by every gateway instance.

Each stream is four keys with one hash tag (one cluster slot), `sse:{id}:...`:

- `events`, a Redis Stream whose entry ids are `<sse id>-0`, trimmed to
  `streams.max_events`; readers anywhere follow it with `XREAD BLOCK`;
- `meta`, a hash with the last id and whether the stream finished;
- `lease`, set by the instance that generates the stream and renewed every
  third of `redis.lease_ttl`; a reader that finds it gone on an unfinished
  stream reports `generation_lost` instead of waiting forever;
- `readers`, reader counts per instance (the disconnect grace), and `cancel`,
  the `DELETE` flag.

Signals (`cancel`, a reader count changed) are published on one channel; the
generating instance wakes on them, and its renewal loop also re-reads the
cancel flags, so a message lost while Redis was away is only late, not lost.
Every key expires: `retention` after the terminal event, or, for a stream
whose instance died, `upstream.timeouts.total + retention` after creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.config import Settings
from gateway.errors import GenerationLost, NotFound, ResumeUnavailable, StoreUnavailable
from gateway.store import StoredEvent, StreamInfo

__all__ = ["RedisStore"]

logger = logging.getLogger("gateway.redis_store")

CHANNEL = "sse:signals"
#: How long one Redis call may take before Redis counts as unavailable.
_CALL_TIMEOUT = 5.0
_RECONNECT_DELAY = 0.5


def _key(stream_id: str, part: str) -> str:
    return f"sse:{{{stream_id}}}:{part}"


class _Generation:
    """What the instance generating a stream keeps locally."""

    __slots__ = ("cancelled", "next_id", "readers_changed")

    def __init__(self) -> None:
        self.next_id = 1
        self.cancelled = anyio.Event()
        self.readers_changed = anyio.Event()

    def notify_readers(self) -> None:
        self.readers_changed.set()
        self.readers_changed = anyio.Event()


class RedisStore:
    shared = True

    def __init__(self, settings: Settings, on_error: Callable[[], None] = lambda: None) -> None:
        #: Called for every failed Redis operation (`gateway_redis_errors_total`).
        self._on_error = on_error
        self._url = settings.redis.url
        self._lease_ms = max(1, int(settings.redis.lease_ttl * 1000))
        #: Readers check the lease at least this often while no event comes.
        self._lease_check = settings.redis.lease_ttl / 2
        self._max_events = settings.streams.max_events
        self._retention_ms = max(1, int(settings.streams.retention * 1000))
        total = settings.upstream.timeouts.total + settings.streams.retention
        self._unfinished_s = math.ceil(total + settings.redis.lease_ttl)
        self._instance = secrets.token_hex(8)
        self._generations: dict[str, _Generation] = {}
        self._redis: redis.Redis | None = None
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def _client(self) -> redis.Redis:
        assert self._redis is not None, "the store is not open"
        return self._redis

    async def open(self) -> None:
        # Not connecting here: the gateway starts (and reports not ready) while
        # Redis is down, and the pool connects once it is back.
        self._redis = redis.from_url(
            self._url,
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=2,
            socket_timeout=self._lease_check + _CALL_TIMEOUT,
            retry=Retry(NoBackoff(), retries=1),  # one retry: a pooled connection went stale
        )
        self._maintenance = asyncio.create_task(self._maintain(), name="redis store")

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        if self._redis is not None:
            await self._redis.aclose()

    async def ready(self) -> bool:
        try:
            with anyio.fail_after(2):
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError):
            self._on_error()
            return False

    async def create(self, stream_id: str) -> None:
        meta = _key(stream_id, "meta")
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping={"last": 0, "finished": 0})
            pipe.expire(meta, self._unfinished_s)
            pipe.set(_key(stream_id, "lease"), self._instance, px=self._lease_ms)
            await pipe.execute()
        self._generations[stream_id] = _Generation()

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        generation = self._generations.get(stream_id)
        if generation is None:
            raise RuntimeError(f"stream {stream_id} is not generated here or already finished")
        stored = StoredEvent(generation.next_id, event, data)
        events, meta = _key(stream_id, "events"), _key(stream_id, "meta")
        try:
            async with self._calls() as client, client.pipeline(transaction=True) as pipe:
                fields: dict[Any, Any] = {"event": event, "data": data}
                pipe.xadd(
                    events, fields, id=f"{stored.id}-0", maxlen=self._max_events, approximate=False
                )
                pipe.hset(meta, "last", stored.id)
                if stored.id == 1:
                    pipe.expire(events, self._unfinished_s)
                if stored.terminal:
                    pipe.hset(meta, "finished", 1)
                    for part in ("meta", "events", "readers", "cancel"):
                        pipe.pexpire(_key(stream_id, part), self._retention_ms)
                    pipe.delete(_key(stream_id, "lease"))
                # Shielded: a generation cancelled mid-call must not lose track of
                # whether its id was used (the memory store's append is atomic too).
                with anyio.CancelScope(shield=True):
                    await pipe.execute()
        finally:
            # Even when the terminal event could not be stored, the generation is
            # over: its lease lapses and readers elsewhere learn it was lost.
            if stored.terminal:
                del self._generations[stream_id]
        generation.next_id += 1
        return stored

    async def info(self, stream_id: str) -> StreamInfo | None:
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hmget(_key(stream_id, "meta"), ["last", "finished"])
            pipe.xrange(_key(stream_id, "events"), count=1)
            (last, finished), oldest = await pipe.execute()
        if last is None:
            return None
        first = _sse_id(oldest[0][0]) if oldest else int(last) + 1
        return StreamInfo(first, int(last), finished == "1")

    async def read(self, stream_id: str, after: int, timeout: float) -> Sequence[StoredEvent]:
        deadline = anyio.current_time() + timeout
        events = _key(stream_id, "events")
        while True:
            chunk = min(max(0.0, deadline - anyio.current_time()), self._lease_check)
            async with self._calls() as client:
                # RESP2 shape: [[key, [(entry id, {field: value}), ...]]]
                found: list[tuple[str, list[tuple[str, dict[str, str]]]]] = await client.xread(
                    {events: f"{after}-0"}, block=max(1, int(chunk * 1000))
                )  # type: ignore[assignment]
            if found:
                entries = found[0][1]
                if _sse_id(entries[0][0]) != after + 1:
                    raise ResumeUnavailable("Events after that id are no longer kept.")
                return [
                    StoredEvent(_sse_id(entry_id), fields["event"], fields["data"])
                    for entry_id, fields in entries
                ]
            await self._check_alive(stream_id)
            if anyio.current_time() >= deadline:
                return []

    @asynccontextmanager
    async def attach(self, stream_id: str) -> AsyncIterator[None]:
        await self._count_reader(stream_id, +1)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._count_reader(stream_id, -1)
                except StoreUnavailable:
                    logger.warning("stream %s: cannot count a reader leaving", stream_id)

    async def cancel(self, stream_id: str) -> bool:
        async with self._calls() as client:
            if not await client.exists(_key(stream_id, "meta")):
                return False
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(_key(stream_id, "cancel"), 1, ex=self._unfinished_s)
                pipe.publish(CHANNEL, f"cancel {stream_id}")
                await pipe.execute()
        return True

    async def wait_cancelled(self, stream_id: str) -> None:
        await self._generation(stream_id).cancelled.wait()

    async def wait_abandoned(self, stream_id: str, grace: float) -> None:
        generation = self._generation(stream_id)
        while True:
            changed = generation.readers_changed
            try:
                readers = await self._reader_count(stream_id)
            except StoreUnavailable:
                readers = None  # unknown: never cancel a generation for it
            if readers != 0:
                # Re-counted now and then: a reader's instance may have missed a signal.
                with anyio.move_on_after(self._lease_check):
                    await changed.wait()
                continue
            with anyio.move_on_after(grace) as scope:
                await changed.wait()
            if scope.cancelled_caught:
                with contextlib.suppress(StoreUnavailable):
                    if await self._reader_count(stream_id) == 0:
                        return

    # -- internals -------------------------------------------------------------------

    @asynccontextmanager
    async def _calls(self) -> AsyncIterator[redis.Redis]:
        """Redis calls whose failure the client sees as `store_unavailable`."""
        try:
            yield self._client
        except (RedisError, OSError) as exc:
            self._on_error()
            logger.warning("redis: %s", exc)
            raise StoreUnavailable() from None

    def _generation(self, stream_id: str) -> _Generation:
        try:
            return self._generations[stream_id]
        except KeyError:
            raise NotFound("No such stream generated here.") from None

    async def _check_alive(self, stream_id: str) -> None:
        """After a read found nothing: `NotFound` if the stream expired, `GenerationLost`
        if it is unfinished and nobody holds its lease."""
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hget(_key(stream_id, "meta"), "finished")
            pipe.exists(_key(stream_id, "lease"))
            finished, leased = await pipe.execute()
        if finished is None:
            raise NotFound("No such stream.")
        if finished == "0" and not leased:
            raise GenerationLost()

    async def _count_reader(self, stream_id: str, delta: int) -> None:
        readers = _key(stream_id, "readers")
        async with self._calls() as client, client.pipeline(transaction=False) as pipe:
            pipe.hincrby(readers, self._instance, delta)
            pipe.expire(readers, self._unfinished_s, nx=True)  # keep a retention expiry
            pipe.publish(CHANNEL, f"readers {stream_id}")
            await pipe.execute()

    async def _reader_count(self, stream_id: str) -> int:
        async with self._calls() as client:
            counts = await client.hvals(_key(stream_id, "readers"))
        return max(0, sum(int(count) for count in counts))

    async def _maintain(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._listen)
            tasks.start_soon(self._renew)

    async def _listen(self) -> None:
        """Wake local generations on signals; resubscribe after Redis comes back."""
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._signal(message["data"])
            except (RedisError, OSError) as exc:
                self._on_error()
                logger.debug("redis subscription lost: %s", exc)
            await anyio.sleep(_RECONNECT_DELAY)

    def _signal(self, message: str) -> None:
        kind, _, stream_id = message.partition(" ")
        generation = self._generations.get(stream_id)
        if generation is None:
            return
        if kind == "cancel":
            generation.cancelled.set()
        elif kind == "readers":
            generation.notify_readers()

    async def _renew(self) -> None:
        """Renew the leases of this instance's generations; pick up missed cancels."""
        while True:
            await anyio.sleep(self._lease_ms / 3000)
            stream_ids = list(self._generations)
            if not stream_ids:
                continue
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for stream_id in stream_ids:
                        pipe.set(_key(stream_id, "lease"), self._instance, px=self._lease_ms)
                        pipe.exists(_key(stream_id, "cancel"))
                    results = await pipe.execute()
            except (RedisError, OSError) as exc:
                self._on_error()
                logger.warning("redis: cannot renew leases: %s", exc)
                continue
            for stream_id, cancelled in zip(stream_ids, results[1::2], strict=True):
                generation = self._generations.get(stream_id)
                if cancelled and generation is not None:
                    generation.cancelled.set()

    # -- chats of the AI SDK endpoint (gateway.ui_chat) ----------------------------------

    async def set_chat(self, chat_key: str, stream_id: str) -> None:
        async with self._calls() as client:
            await client.set(f"sse:chat:{{{chat_key}}}", stream_id, ex=self._unfinished_s)

    async def chat_stream(self, chat_key: str) -> str | None:
        async with self._calls() as client:
            stream_id = await client.get(f"sse:chat:{{{chat_key}}}")
        return None if stream_id is None else str(stream_id)

    async def forget_chat(self, chat_key: str, stream_id: str) -> None:
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
        async with self._calls() as client:
            await client.eval(script, 1, f"sse:chat:{{{chat_key}}}", stream_id)


def _sse_id(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])
