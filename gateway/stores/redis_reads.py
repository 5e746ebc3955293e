"""A reader's view of a stream in Redis: its events after an id, and whether the
instance generating it is still alive.

A reader that finds the lease gone on an unfinished stream (twice, half a lease
apart) ends the stream itself with an `error: generation_lost` event, so every
reader gets it with an id and a resume after it gets 204.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio

from gateway.errors import GenerationLost, ResumeUnavailable
from gateway.stores import StoredEvent
from gateway.stores.redis_calls import RedisCalls
from gateway.stores.redis_keys import sse_id, stream_key, stream_keys
from gateway.stores.redis_scripts import END_LOST

__all__ = ["StreamReads"]


class StreamReads:
    def __init__(self, calls: RedisCalls, lease_check: float, trim: tuple[int, int]) -> None:
        """`lease_check`: how long a lease may stay gone before the stream is ended;
        `trim`: `streams.max_events` and the retention in milliseconds."""
        self._calls = calls
        self.lease_check = lease_check
        self._end_lost_args: list[str | int] = [GenerationLost().event_data(), *trim]
        #: Streams seen unfinished without a lease: when that was first seen.
        self._unleased: dict[str, float] = {}

    async def read(self, stream_id: str, after: int, timeout: float) -> Sequence[StoredEvent]:
        """`StreamStore.read` straight from Redis, checking the lease while nothing comes."""
        deadline = anyio.current_time() + timeout
        while True:
            chunk = min(max(0.0, deadline - anyio.current_time()), self.lease_check)
            batch = await self.events_after(stream_id, after, chunk)
            if batch:
                return batch
            if await self.check_alive(stream_id):
                continue  # ended as lost just now: read that event
            if anyio.current_time() >= deadline:
                return []

    async def events_after(
        self, stream_id: str, after: int, block: float | None
    ) -> list[StoredEvent]:
        """The events after `after`, waiting up to `block` seconds (None: not at all)."""
        events = stream_key(stream_id, "events")
        async with self._calls() as client:
            # RESP2 shape: [[key, [(entry id, {field: value}), ...]]]
            found: list[tuple[str, list[tuple[str, dict[str, str]]]]] = await client.xread(
                {events: f"{after}-0"}, block=None if block is None else max(1, int(block * 1000))
            )  # type: ignore[assignment]
        if not found:
            return []
        entries = found[0][1]
        if sse_id(entries[0][0]) != after + 1:
            raise ResumeUnavailable("Events after that id are no longer kept.")
        return [
            StoredEvent(sse_id(entry_id), fields["event"], fields["data"])
            for entry_id, fields in entries
        ]

    async def check_alive(self, stream_id: str) -> bool:
        """After a read found nothing: `GenerationLost` if the stream is gone (Redis lost
        it, or it expired unfinished). An unfinished stream whose lease stayed gone for
        half a lease is ended as lost (returns True).

        Half a lease: a generation that was only cut off from Redis renews its lease
        with its first call once Redis is back, and so wins against its readers.
        """
        async with self._calls() as client, client.pipeline(transaction=True) as pipe:
            pipe.hget(stream_key(stream_id, "meta"), "finished")
            pipe.exists(stream_key(stream_id, "lease"))
            finished, leased = await pipe.execute()
        if finished is None:  # it was there when the read began: the store lost it
            self._unleased.pop(stream_id, None)
            raise GenerationLost("The store lost the stream (was Redis restarted?).")
        if finished != "0" or leased:
            self._unleased.pop(stream_id, None)
            return False
        now = time.monotonic()
        if now - self._unleased.setdefault(stream_id, now) < self.lease_check:
            return False
        self._unleased.pop(stream_id, None)
        async with self._calls() as client:
            end_lost = client.register_script(END_LOST)  # rare: registered when needed
            ended = await end_lost(keys=stream_keys(stream_id), args=self._end_lost_args)
        return int(ended) > 0
