"""One follower per stream read on this instance, fanning its events out to the
local readers, so Redis connections grow with the streams read here, not with
their readers.

A follower is one task: for a stream generated elsewhere, an `XREAD BLOCK` loop;
for a stream generated here, its appends hand it their events (`hand_over`) and it
reads Redis only after a quiet lease check, or to catch up on what it missed. It
keeps the stream's newest events and wakes the readers; a reader that is behind
its window reads its backlog from Redis directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections import deque
from collections.abc import Callable, Sequence

import anyio

from gateway.errors import (
    GatewayError,
    GenerationLost,
    NotFound,
    ResumeUnavailable,
    StoreUnavailable,
)
from gateway.stores import StoredEvent, pulse
from gateway.stores.redis_reads import StreamReads

__all__ = ["Follower", "Followers"]

#: Newest events a follower keeps for its readers (a bound on memory per stream read
#: here); a reader further behind reads its backlog from Redis.
_WINDOW = 64
_RECONNECT_DELAY = 0.5


class Follower:
    """The local readers of one stream and the one task that reads Redis for them.

    `changed` is pulsed (set, then cleared) whenever `events` grew or `error` changed;
    `missed` is set when this instance stored an event the follower has to read.
    """

    __slots__ = ("changed", "error", "events", "last", "missed", "readers", "task")

    def __init__(self) -> None:
        self.events: deque[StoredEvent] = deque(maxlen=_WINDOW)
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

    def pulse(self) -> None:
        pulse(self.changed)

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


class Followers:
    """The followers of the streams with readers here."""

    def __init__(self, reads: StreamReads, stored_here: Callable[[str], int | None]) -> None:
        """`stored_here(stream_id)`: the newest id stored by this instance's generation
        of the stream, None when the stream is not (or no longer) generated here."""
        self._reads = reads
        self._stored_here = stored_here
        self._followers: dict[str, Follower] = {}

    def get(self, stream_id: str) -> Follower | None:
        return self._followers.get(stream_id)

    def join(self, stream_id: str) -> Follower:
        """Count a local reader of the stream (see `leave`)."""
        follower = self._followers.setdefault(stream_id, Follower())
        follower.readers += 1
        return follower

    def leave(self, stream_id: str, follower: Follower) -> None:
        follower.readers -= 1
        idle = not follower.readers and follower.task is None
        if idle and self._followers.get(stream_id) is follower:
            del self._followers[stream_id]

    def hand_over(self, stream_id: str, events: Sequence[StoredEvent]) -> None:
        """Events this instance just stored (consecutive ids, from one append): its
        follower keeps them if they are the next ones, else reads what it missed."""
        follower = self._followers.get(stream_id)
        if follower is None:
            return
        if events[0].id == follower.last + 1:
            follower.add(events)
        else:
            follower.missed.set()

    def failed(self, stream_id: str) -> None:
        """An append of this instance failed: the follower reads what became of the stream."""
        follower = self._followers.get(stream_id)
        if follower is not None:
            follower.missed.set()

    def close(self) -> None:
        for follower in self._followers.values():
            if follower.task is not None:
                follower.task.cancel()
        self._followers.clear()

    async def read(
        self, stream_id: str, follower: Follower, after: int, timeout: float
    ) -> Sequence[StoredEvent]:
        """A read served by the stream's follower (started by the first reader that waits)."""
        clock = asyncio.get_running_loop()
        deadline = clock.time() + timeout
        while True:
            batch = follower.since(after)
            if batch is None:  # behind the follower's window: read the backlog
                batch = await self._reads.events_after(stream_id, after, None)
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

    async def _follow(self, stream_id: str, follower: Follower) -> None:
        """Read the stream for its local readers until its terminal event, or until it has
        had no local reader for one read.

        While the stream is generated here and the follower has all it stored, its appends
        hand their events straight to the follower (`hand_over`, which wakes only the
        readers), and Redis is read only after a quiet lease check (for an event
        stored by another instance, or a lost stream).
        """
        lease_check = self._reads.lease_check
        try:
            while follower.readers and not follower.ended:
                stored = self._stored_here(stream_id)
                block: float | None = lease_check
                if stored is not None and follower.last >= stored:
                    seen = follower.last
                    await follower.wait_missed(lease_check)
                    if follower.last != seen or (self._stored_here(stream_id) or 0) > seen:
                        continue  # events came (or must be read): not quiet
                    block = None
                try:
                    batch = await self._reads.events_after(stream_id, follower.last, block)
                    if batch:
                        follower.add(batch)
                    elif not await self._reads.check_alive(stream_id):
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
