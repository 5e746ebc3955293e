"""The streams this instance generates, and how other instances reach them.

While a stream is generated here its `lease` key is renewed every third of
`redis.lease_ttl` (and by every append), so readers anywhere know it is alive.
`cancel` (the `DELETE` flag) and a reader count changed are signalled on one
channel (a reader here of a stream generated here tells it directly); the
generation wakes on them, and the renewal also re-reads the cancel flags, so a
message lost while Redis was away is only late, not lost. Readers are counted
one hash field each (the disconnect grace), so a repeated call counts nobody
twice.
"""

from __future__ import annotations

import logging

import anyio
from redis.exceptions import RedisError

from gateway.errors import NotFound, StoreUnavailable
from gateway.stores.redis_calls import RedisCalls
from gateway.stores.redis_keys import SIGNALS, stream_key, stream_keys

__all__ = ["Generation", "LocalGenerations"]

logger = logging.getLogger("gateway.stores.redis")

_RECONNECT_DELAY = 0.5


class Generation:
    """What the instance generating a stream keeps locally."""

    __slots__ = ("cancelled", "keys", "next_id", "readers_changed", "stored")

    def __init__(self, stream_id: str) -> None:
        #: The stream's keys, as the scripts take them.
        self.keys = stream_keys(stream_id)
        self.next_id = 1
        #: The newest id known stored.
        self.stored = 0
        self.cancelled = anyio.Event()
        self.readers_changed = anyio.Event()

    def notify_readers(self) -> None:
        self.readers_changed.set()
        self.readers_changed = anyio.Event()


class LocalGenerations:
    """The generations of this instance by stream id, their leases and their signals."""

    def __init__(
        self, calls: RedisCalls, *, instance: str, lease_ms: int, unfinished_s: int
    ) -> None:
        """`instance`: this instance's id, the value of its leases."""
        self._calls = calls
        self.instance = instance
        self.lease_ms = lease_ms
        self._unfinished_s = unfinished_s
        self._generations: dict[str, Generation] = {}

    def add(self, stream_id: str) -> None:
        self._generations[stream_id] = Generation(stream_id)

    def get(self, stream_id: str) -> Generation | None:
        return self._generations.get(stream_id)

    def remove(self, stream_id: str) -> None:
        """The generation is over here: its lease lapses."""
        del self._generations[stream_id]

    def stored(self, stream_id: str) -> int | None:
        """The newest id stored by the stream's generation here, None if there is none."""
        generation = self._generations.get(stream_id)
        return None if generation is None else generation.stored

    def generation(self, stream_id: str) -> Generation:
        try:
            return self._generations[stream_id]
        except KeyError:
            raise NotFound("No such stream generated here.") from None

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._listen)
            tasks.start_soon(self._renew)

    # -- signals -----------------------------------------------------------------------

    async def cancel(self, stream_id: str) -> bool:
        """Flag the stream cancelled and signal its generation; False if there is no
        such stream."""
        async with self._calls() as client:
            if not await client.exists(stream_key(stream_id, "meta")):
                return False
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(stream_key(stream_id, "cancel"), 1, ex=self._unfinished_s)
                pipe.publish(SIGNALS, f"cancel {stream_id}")
                await pipe.execute()
        return True

    async def count_reader(self, stream_id: str, reader: str, *, joined: bool) -> None:
        """Count a reader joining or leaving, and tell the stream's generation: itself if
        it runs here, else by a signal."""
        readers = stream_key(stream_id, "readers")
        generation = self._generations.get(stream_id)
        async with self._calls() as client, client.pipeline(transaction=False) as pipe:
            if joined:
                pipe.hset(readers, reader, self.instance)
                pipe.expire(readers, self._unfinished_s, nx=True)  # keep a retention expiry
            else:
                pipe.hdel(readers, reader)
            if generation is None:
                pipe.publish(SIGNALS, f"readers {stream_id}")
            await pipe.execute()
        if generation is not None:
            generation.notify_readers()

    async def wait_abandoned(self, stream_id: str, grace: float, recount: float) -> None:
        """`StreamStore.wait_abandoned`; the readers are counted again at least every
        `recount` seconds (a reader's instance may have missed a signal)."""
        generation = self.generation(stream_id)
        while True:
            changed = generation.readers_changed
            try:
                readers = await self._reader_count(stream_id)
            except StoreUnavailable:
                readers = None  # unknown: never cancel a generation for it
            if readers != 0:
                with anyio.move_on_after(recount):
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

    async def _reader_count(self, stream_id: str) -> int:
        async with self._calls() as client:
            count: int = await client.hlen(stream_key(stream_id, "readers"))
        return count

    async def _listen(self) -> None:
        """Wake local generations on signals; resubscribe after Redis comes back."""
        while True:
            try:
                async with self._calls.client.pubsub() as pubsub:
                    await pubsub.subscribe(SIGNALS)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._signal(message["data"])
            except (RedisError, OSError) as exc:
                self._calls.on_error()
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

    # -- leases ------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew the leases of this instance's generations; pick up missed cancels."""
        while True:
            await anyio.sleep(self.lease_ms / 3000)
            stream_ids = list(self._generations)
            if not stream_ids:
                continue
            try:
                async with self._calls.client.pipeline(transaction=False) as pipe:
                    for stream_id in stream_ids:
                        pipe.set(stream_key(stream_id, "lease"), self.instance, px=self.lease_ms)
                        pipe.exists(stream_key(stream_id, "cancel"))
                    results = await pipe.execute()
            except (RedisError, OSError) as exc:
                self._calls.on_error()
                logger.warning("redis: cannot renew leases: %r", exc)
                continue
            for stream_id, cancelled in zip(stream_ids, results[1::2], strict=True):
                generation = self._generations.get(stream_id)
                if cancelled and generation is not None:
                    generation.cancelled.set()
