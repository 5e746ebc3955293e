"""The in-memory `StreamStore` and its limit counters: one process, no dependencies."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress

import anyio

from gateway.config import Settings
from gateway.errors import NotFound, ResumeUnavailable
from gateway.stores import TERMINAL_EVENTS, StoredEvent, StreamInfo, check_batch, pulse

__all__ = ["MemoryCounters", "MemoryStore"]


class _Stream:
    """One stream's events, as frames only, and the signals its readers and
    generation wait on.

    `changed` and `readers_changed` are pulsed (set, then cleared at once):
    whoever waits at that moment wakes, later waiters wait for the next pulse.
    A pulse allocates nothing, which matters on the per-token path.
    """

    __slots__ = (
        "cancelled",
        "changed",
        "expiry",
        "frames",
        "next_id",
        "readers",
        "readers_changed",
    )

    def __init__(self, max_events: int) -> None:
        #: The kept events' frames; ids are consecutive, up to `next_id - 1`.
        self.frames: deque[bytes] = deque(maxlen=max_events)
        self.next_id = 1
        self.changed = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.readers = 0
        self.readers_changed = asyncio.Event()
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def finished(self) -> bool:
        return self.expiry is not None

    @property
    def first_id(self) -> int:
        return self.next_id - len(self.frames)

    def since(self, after: int) -> list[StoredEvent]:
        first = self.first_id
        if after + 1 < first:
            raise ResumeUnavailable("Events after that id are no longer kept.")
        frames, event = self.frames, StoredEvent.from_frame
        return [event(first + i, frames[i]) for i in range(after + 1 - first, len(frames))]

    def reader_count_changed(self, delta: int) -> None:
        self.readers += delta
        pulse(self.readers_changed)


class MemoryStore:
    shared = False
    appends_wait = False

    def __init__(self, settings: Settings, on_error: Callable[[], None] | None = None) -> None:
        """`on_error` is never called: nothing here can fail like a backend."""
        self._max_events = settings.streams.max_events
        self._retention = settings.streams.retention
        self._streams: dict[str, _Stream] = {}
        self._counters = MemoryCounters()
        #: Chat key -> stream id, oldest first; an entry lives no longer than its stream.
        self._chats: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._streams)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        for stream in self._streams.values():
            if stream.expiry is not None:
                stream.expiry.cancel()
        self._streams.clear()

    async def run(self) -> None:
        """Nothing runs in the background: expiry uses the event loop's timers."""

    async def ready(self) -> bool:
        return True

    def counters(self) -> MemoryCounters:
        return self._counters

    async def create(self, stream_id: str) -> None:
        self._streams[stream_id] = _Stream(self._max_events)

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        stream = self._get(stream_id)
        if stream.finished:
            raise RuntimeError(f"stream {stream_id} already finished")
        stored = StoredEvent(stream.next_id, event, data)
        stream.frames.append(stored.frame)
        stream.next_id += 1
        if event in TERMINAL_EVENTS:  # known here: not parsed back from the frame
            loop = asyncio.get_running_loop()
            stream.expiry = loop.call_later(self._retention, self._streams.pop, stream_id, None)
        pulse(stream.changed)
        return stored

    async def append_many(
        self, stream_id: str, events: Sequence[tuple[str, str]]
    ) -> list[StoredEvent]:
        check_batch(events)
        return [await self.append(stream_id, event, data) for event, data in events]

    async def info(self, stream_id: str) -> StreamInfo | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        return StreamInfo(stream.first_id, stream.next_id - 1, stream.finished)

    async def read(self, stream_id: str, after: int, timeout: float) -> Sequence[StoredEvent]:
        stream = self._get(stream_id)
        batch = stream.since(after)
        if batch:
            return batch
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await stream.changed.wait()
        return stream.since(after)

    @asynccontextmanager
    async def attach(self, stream_id: str) -> AsyncIterator[None]:
        stream = self._get(stream_id)
        stream.reader_count_changed(+1)
        try:
            yield
        finally:
            stream.reader_count_changed(-1)

    async def cancel(self, stream_id: str) -> bool:
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        stream.cancelled.set()
        return True

    async def wait_cancelled(self, stream_id: str) -> None:
        await self._get(stream_id).cancelled.wait()

    async def wait_abandoned(self, stream_id: str, grace: float) -> None:
        stream = self._get(stream_id)
        while True:
            if stream.readers:
                await stream.readers_changed.wait()
                continue
            with anyio.move_on_after(grace) as scope:
                await stream.readers_changed.wait()
            if scope.cancelled_caught:
                return

    def _get(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise NotFound("No such stream.") from None

    # -- chats of the AI SDK endpoint (gateway.ui_chat) ----------------------------------

    async def set_chat(self, chat_key: str, stream_id: str) -> None:
        chats = self._chats
        chats.pop(chat_key, None)
        chats[chat_key] = stream_id
        while chats[oldest := next(iter(chats))] not in self._streams:
            del chats[oldest]  # its stream expired; the new entry is last and stops this

    async def chat_stream(self, chat_key: str) -> str | None:
        stream_id = self._chats.get(chat_key)
        return stream_id if stream_id in self._streams else None

    async def forget_chat(self, chat_key: str, stream_id: str) -> None:
        if self._chats.get(chat_key) == stream_id:
            del self._chats[chat_key]


class MemoryCounters:
    """`limits.Counters` in plain dictionaries; expired windows are swept once a window."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, float]] = {}
        self._sets: dict[str, set[str]] = {}
        self._next_sweep = 0.0

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
