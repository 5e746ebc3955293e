"""The Redis `StreamStore` and its limit counters: streams shared by every instance.

Each stream is five keys with one hash tag (one cluster slot), `sse:{id}:...`:

- `events`, a Redis Stream whose entry ids are `<sse id>-0`, trimmed to
  `streams.max_events`; readers anywhere follow it with `XREAD BLOCK`;
- `meta`, a hash with the last id and `finished` (`0`, `1`, or `lost`);
- `lease`, set by the instance that generates the stream, renewed every third
  of `redis.lease_ttl` and by every append; a reader that finds it gone on an
  unfinished stream (twice, half a lease apart) ends the stream itself with an
  `error: generation_lost` event, so every reader gets it with an id and a
  resume after it gets 204;
- `readers`, one field per attached reader (the disconnect grace), and
  `cancel`, the `DELETE` flag.

Appends are exactly once: one Lua script checks the id it is given against
`meta.last`, so a call that redis-py re-sends after a timeout, or whose reply
was lost, is recognised as already applied instead of being stored twice or
failing half-way (the bug of a MULTI/EXEC sent twice). The store retries a
failed append for up to `streams.store_outage`.

Readers of one stream on one instance share one follower (`_Follower`): a
single `XREAD BLOCK` loop that keeps the stream's newest events and wakes the
local readers, so Redis connections grow with the streams read here, not with
their readers (the pool is sized from `limits.max_concurrent_streams`). A
reader that is behind the follower's window reads its backlog directly.

Signals (`cancel`, a reader count changed) are published on one channel; the
generating instance wakes on them, and its renewal loop also re-reads the
cancel flags, so a message lost while Redis was away is only late, not lost.
Every key expires: `retention` after the terminal event, or, for a stream
whose instance died, `upstream.timeouts.total + retention` after creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.config import Settings
from gateway.errors import (
    GatewayError,
    GenerationLost,
    NotFound,
    ResumeUnavailable,
    StoreUnavailable,
)
from gateway.stores import TERMINAL_EVENTS, StoredEvent, StreamInfo
from gateway.stores.redis_counters import RedisCounters
from gateway.stores.redis_pipelining import PipelinedScript
from gateway.stores.redis_scripts import APPEND, END_LOST

__all__ = ["RedisStore"]

logger = logging.getLogger("gateway.stores.redis")

CHANNEL = "sse:signals"
#: How long one Redis call may take before Redis counts as unavailable.
_CALL_TIMEOUT = 5.0
_RECONNECT_DELAY = 0.5
#: Pauses between the attempts of an append while Redis is away.
_APPEND_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0)
#: Newest events a follower keeps for its readers (a bound on memory per stream read
#: here); a reader further behind reads its backlog from Redis.
_FOLLOW_WINDOW = 64
#: Connections beyond one per stream: appends, reader counts, signals, limits.
_POOL_SPARE = 64


def _key(stream_id: str, part: str) -> str:
    return f"sse:{{{stream_id}}}:{part}"


def _keys(stream_id: str) -> list[str]:
    return [_key(stream_id, part) for part in ("events", "meta", "lease", "readers", "cancel")]


class _Generation:
    """What the instance generating a stream keeps locally."""

    __slots__ = ("cancelled", "keys", "next_id", "readers_changed", "stored")

    def __init__(self, keys: list[str]) -> None:
        #: The stream's keys, as the scripts take them.
        self.keys = keys
        self.next_id = 1
        #: The newest id known stored.
        self.stored = 0
        self.cancelled = anyio.Event()
        self.readers_changed = anyio.Event()

    def notify_readers(self) -> None:
        self.readers_changed.set()
        self.readers_changed = anyio.Event()


class _Follower:
    """The local readers of one stream and the one task that reads Redis for them.

    `changed` is pulsed (set, then cleared) whenever `events` grew or `error` changed;
    `missed` is set when this instance stored an event the follower has to read.
    """

    __slots__ = ("changed", "error", "events", "last", "missed", "readers", "task")

    def __init__(self) -> None:
        self.events: deque[StoredEvent] = deque(maxlen=_FOLLOW_WINDOW)
        #: The newest id read (events up to it have been seen by the follower).
        self.last = 0
        self.readers = 0
        self.changed = asyncio.Event()
        self.missed = asyncio.Event()
        #: Why the last read of Redis failed, until one succeeds.
        self.error: GatewayError | None = None
        self.task: asyncio.Task[None] | None = None

    def since(self, after: int) -> list[StoredEvent] | None:
        """The kept events after `after`; None when some of them are no longer kept."""
        events = self.events
        first = events[0].id if events else self.last + 1
        if after + 1 < first:
            return None
        return [events[i] for i in range(after + 1 - first, len(events))]

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1].terminal

    def add(self, batch: Sequence[StoredEvent]) -> None:
        """Keep the events of `batch` not kept yet (it starts at most at `last + 1`)."""
        fresh = batch[max(0, self.last + 1 - batch[0].id) :]
        if fresh:
            self.events.extend(fresh)
            self.last = fresh[-1].id
        self.error = None
        self.pulse()

    def offer(self, event: StoredEvent) -> None:
        """An event just stored by this instance: kept if it is the next one, else the
        follower's task is woken to read what it missed."""
        if event.id == self.last + 1:
            self.add([event])
        else:
            self.missed.set()

    async def wait(self, timeout: float) -> None:
        """Until `changed` is pulsed, for at most `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.changed.wait()

    async def wait_missed(self, timeout: float) -> None:
        """Until an event was `missed`, for at most `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.missed.wait()
        self.missed.clear()

    def pulse(self) -> None:
        self.changed.set()
        self.changed.clear()


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
        self._outage = settings.streams.store_outage
        total = settings.upstream.timeouts.total + settings.streams.retention
        self._unfinished_s = math.ceil(total + settings.redis.lease_ttl)
        self._instance = secrets.token_hex(8)
        self._generations: dict[str, _Generation] = {}
        #: Streams seen unfinished without a lease: when that was first seen.
        self._unleased: dict[str, float] = {}
        self._redis: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._append: PipelinedScript | None = None
        #: One follower per stream with local readers (generated here or elsewhere).
        self._followers: dict[str, _Follower] = {}
        self._max_connections = 2 * settings.limits.max_concurrent_streams + _POOL_SPARE

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
            # A pooled connection idle this long is checked before use, so the first
            # call after a Redis restart does not fail on a dead socket.
            health_check_interval=1,
            retry=Retry(NoBackoff(), retries=1),  # every call here is safe to repeat
            # A follower holds a connection per stream read here: as many streams as
            # this instance generates, and as many again generated elsewhere.
            max_connections=self._max_connections,
            # No CLIENT SETINFO on connect: Redis before 7.2 refuses it, and redis-py
            # then hands that refusal to a later command on a fresh connection
            # (hundreds of spurious `store_unavailable` in a burst of new streams).
            driver_info=None,
        )
        self._scripts = {"end_lost": self._redis.register_script(END_LOST)}
        self._append = PipelinedScript(self._redis, APPEND)

    async def close(self) -> None:
        for follower in self._followers.values():
            if follower.task is not None:
                follower.task.cancel()
        self._followers.clear()
        if self._append is not None:
            self._append.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._listen)
            tasks.start_soon(self._renew)

    async def ready(self) -> bool:
        try:
            with anyio.fail_after(2):
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError):
            self._on_error()
            return False

    def counters(self) -> RedisCounters:
        return RedisCounters(self._client, self._calls)

    async def create(self, stream_id: str) -> None:
        meta = _key(stream_id, "meta")
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping={"last": 0, "finished": 0})
            pipe.expire(meta, self._unfinished_s)
            pipe.set(_key(stream_id, "lease"), self._instance, px=self._lease_ms)
            await pipe.execute()
        self._generations[stream_id] = _Generation(_keys(stream_id))

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        generation = self._generations.get(stream_id)
        if generation is None:
            raise RuntimeError(f"stream {stream_id} is not generated here or already finished")
        terminal = event in TERMINAL_EVENTS
        # The id is taken before the first await: appends of one stream never share one.
        expected = generation.next_id
        generation.next_id += 1
        args = [expected, event, data, self._max_events, self._instance, self._lease_ms]
        args += [int(terminal), self._retention_ms, self._unfinished_s]
        append = self._append
        assert append is not None, "the store is not open"
        keys = generation.keys
        try:
            # Shielded: a generation cancelled mid-call must still know what was stored.
            with anyio.CancelScope(shield=True):
                stored_id = int(await self._until_back(lambda: append(keys, args)))
            if stored_id < 0:
                raise _append_failure(stored_id)
        except BaseException:
            # The follower does not wait for this event: it reads what became of the stream.
            follower = self._followers.get(stream_id)
            if follower is not None:
                follower.missed.set()
            raise
        finally:
            # After its terminal event (stored or not) the generation is over here: its
            # lease lapses and readers end the stream as lost if nothing was stored.
            if terminal:
                del self._generations[stream_id]
        generation.stored = stored_id
        stored_event = StoredEvent(stored_id, event, data)
        follower = self._followers.get(stream_id)
        if follower is not None:
            follower.offer(stored_event)
        return stored_event

    async def info(self, stream_id: str) -> StreamInfo | None:
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hmget(_key(stream_id, "meta"), ["last", "finished"])
            pipe.xrange(_key(stream_id, "events"), count=1)
            (last, finished), oldest = await pipe.execute()
        if last is None:
            return None
        first = _sse_id(oldest[0][0]) if oldest else int(last) + 1
        return StreamInfo(first, int(last), finished != "0")

    async def read(self, stream_id: str, after: int, timeout: float) -> Sequence[StoredEvent]:
        follower = self._followers.get(stream_id)
        if follower is not None:
            return await self._read_followed(stream_id, follower, after, timeout)
        deadline = anyio.current_time() + timeout
        while True:
            chunk = min(max(0.0, deadline - anyio.current_time()), self._lease_check)
            batch = await self._xread(stream_id, after, chunk)
            if batch:
                return batch
            if await self._check_alive(stream_id):
                continue  # ended as lost just now: read that event
            if anyio.current_time() >= deadline:
                return []

    async def _read_followed(
        self, stream_id: str, follower: _Follower, after: int, timeout: float
    ) -> Sequence[StoredEvent]:
        """A read served by the stream's follower (started by the first reader that waits)."""
        clock = asyncio.get_running_loop()
        deadline = clock.time() + timeout
        while True:
            batch = follower.since(after)
            if batch is None:  # behind the follower's window: read the backlog
                batch = await self._xread(stream_id, after, None)
            if batch:
                return batch
            if follower.error is not None:
                raise copy.copy(follower.error)  # each reader its own traceback
            if follower.task is None:
                follower.last = max(follower.last, after)
                follower.task = asyncio.create_task(self._follow(stream_id, follower))
            remaining = deadline - clock.time()
            if remaining <= 0:
                return []
            await follower.wait(remaining)

    async def _follow(self, stream_id: str, follower: _Follower) -> None:
        """Read the stream for its local readers until its terminal event, or until it has
        had no local reader for one read.

        While the stream is generated here and the follower has all it stored, its appends
        hand their events straight to the follower (`offer`, which wakes only the
        readers), and Redis is read only after a quiet `lease_check` (for an event
        stored by another instance, or a lost stream).
        """
        try:
            while follower.readers and not follower.ended:
                generation = self._generations.get(stream_id)
                block: float | None = self._lease_check
                if generation is not None and follower.last >= generation.stored:
                    seen = follower.last
                    await follower.wait_missed(self._lease_check)
                    if follower.last != seen or generation.stored > seen:
                        continue  # events came (or must be read): not quiet
                    block = None
                try:
                    batch = await self._xread(stream_id, follower.last, block)
                    if batch:
                        follower.add(batch)
                    elif not await self._check_alive(stream_id):
                        follower.error = None
                except (StoreUnavailable, NotFound, ResumeUnavailable, GenerationLost) as exc:
                    follower.error = exc
                    follower.pulse()
                    if not isinstance(exc, StoreUnavailable):
                        return
                    await anyio.sleep(_RECONNECT_DELAY)
        finally:
            follower.task = None
            if not follower.readers and self._followers.get(stream_id) is follower:
                del self._followers[stream_id]

    async def _xread(self, stream_id: str, after: int, block: float | None) -> list[StoredEvent]:
        """The events after `after`, waiting up to `block` seconds (None: not at all)."""
        events = _key(stream_id, "events")
        async with self._calls() as client:
            # RESP2 shape: [[key, [(entry id, {field: value}), ...]]]
            found: list[tuple[str, list[tuple[str, dict[str, str]]]]] = await client.xread(
                {events: f"{after}-0"}, block=None if block is None else max(1, int(block * 1000))
            )  # type: ignore[assignment]
        if not found:
            return []
        entries = found[0][1]
        if _sse_id(entries[0][0]) != after + 1:
            raise ResumeUnavailable("Events after that id are no longer kept.")
        return [
            StoredEvent(_sse_id(entry_id), fields["event"], fields["data"])
            for entry_id, fields in entries
        ]

    @asynccontextmanager
    async def attach(self, stream_id: str) -> AsyncIterator[None]:
        reader = secrets.token_hex(8)
        await self._count_reader(stream_id, reader, joined=True)
        follower = self._followers.setdefault(stream_id, _Follower())
        follower.readers += 1
        try:
            yield
        finally:
            follower.readers -= 1
            idle = not follower.readers and follower.task is None
            if idle and self._followers.get(stream_id) is follower:
                del self._followers[stream_id]
            with anyio.CancelScope(shield=True):
                try:
                    await self._count_reader(stream_id, reader, joined=False)
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
                try:
                    if await self._reader_count(stream_id) == 0:
                        return
                except StoreUnavailable:
                    pass

    # -- internals -------------------------------------------------------------------

    @asynccontextmanager
    async def _calls(self) -> AsyncIterator[redis.Redis]:
        """Redis calls whose failure the client sees as `store_unavailable`."""
        try:
            yield self._client
        except (RedisError, OSError) as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: RedisError | OSError) -> StoreUnavailable:
        """A failed Redis call, counted and logged, as the client sees it."""
        self._on_error()
        logger.warning("redis: %r", exc)
        return StoreUnavailable()

    async def _until_back(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call` (which must be safe to repeat), tried again while Redis is away, for
        up to `streams.store_outage`."""
        deadline = time.monotonic() + self._outage
        pauses = itertools.chain(_APPEND_BACKOFF, itertools.repeat(_APPEND_BACKOFF[-1]))
        for pause in pauses:
            try:
                return await call()
            except (RedisError, OSError) as exc:
                failure = self._failed(exc)
            if time.monotonic() + pause > deadline:
                raise failure
            await anyio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover (the pauses never end)

    def _generation(self, stream_id: str) -> _Generation:
        try:
            return self._generations[stream_id]
        except KeyError:
            raise NotFound("No such stream generated here.") from None

    async def _check_alive(self, stream_id: str) -> bool:
        """After a read found nothing: `GenerationLost` if the stream is gone (Redis lost
        it, or it expired unfinished). An unfinished
        stream whose lease stayed gone for half a lease is ended as lost (returns True).

        Half a lease: a generation that was only cut off from Redis renews its lease
        with its first call once Redis is back, and so wins against its readers.
        """
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hget(_key(stream_id, "meta"), "finished")
            pipe.exists(_key(stream_id, "lease"))
            finished, leased = await pipe.execute()
        if finished is None:  # it was there when the read began: the store lost it
            self._unleased.pop(stream_id, None)
            raise GenerationLost("The store lost the stream (was Redis restarted?).")
        if finished != "0" or leased:
            self._unleased.pop(stream_id, None)
            return False
        now = time.monotonic()
        if now - self._unleased.setdefault(stream_id, now) < self._lease_check:
            return False
        self._unleased.pop(stream_id, None)
        args = [GenerationLost().event_data(), self._max_events, self._retention_ms]
        async with self._calls():
            ended = await self._scripts["end_lost"](keys=_keys(stream_id), args=args)
        return int(ended) > 0

    async def _count_reader(self, stream_id: str, reader: str, *, joined: bool) -> None:
        """One field per reader, so a repeated call counts nobody twice."""
        readers = _key(stream_id, "readers")
        async with self._calls() as client, client.pipeline(transaction=False) as pipe:
            if joined:
                pipe.hset(readers, reader, self._instance)
                pipe.expire(readers, self._unfinished_s, nx=True)  # keep a retention expiry
            else:
                pipe.hdel(readers, reader)
            pipe.publish(CHANNEL, f"readers {stream_id}")
            await pipe.execute()

    async def _reader_count(self, stream_id: str) -> int:
        async with self._calls() as client:
            count: int = await client.hlen(_key(stream_id, "readers"))
        return count

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
                logger.warning("redis: cannot renew leases: %r", exc)
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


def _append_failure(reply: int) -> GatewayError:
    """What a negative reply of the append script means."""
    if reply == -1:  # it was there when the generation began: the store lost it
        return GenerationLost("The store lost the stream (was Redis restarted?).")
    if reply == -2:
        return GenerationLost("The stream was ended while the store was unreachable.")
    return StoreUnavailable("An event was lost while the store was unreachable.")


def _sse_id(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])
