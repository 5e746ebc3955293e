"""The stream store: where a generation's events live while clients read them.

Routes and the relay talk only to `StreamStore`; `streams.store` in the config
picks the implementation from `STORES` and its module is imported only then
(the pattern of uvicorn's `HTTP_PROTOCOLS`), so a Redis store can replace the
in-memory one without touching anything else.

Ids are 1, 2, 3, ... per stream; the terminal event (`done` or `error`) is the
last one appended. Readers pull batches with `read`, which is the shape of a
Redis `XREAD BLOCK` as much as of an in-memory wait.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.config import Settings
from gateway.events import frame

if TYPE_CHECKING:
    from gateway.limits import Counters

__all__ = ["STORES", "StoredEvent", "StreamInfo", "StreamStore", "create_store"]

TERMINAL_EVENTS = frozenset({"done", "error"})


def pulse(event: asyncio.Event) -> None:
    """Wake whoever waits on `event` now; later waiters wait for the next pulse.
    Allocates nothing, which matters on the per-token path."""
    event.set()
    event.clear()


def check_batch(events: Sequence[tuple[str, str]]) -> None:
    """`StreamStore.append_many`'s rule, for every backend: a terminal event comes alone."""
    if any(event in TERMINAL_EVENTS for event, _ in events):
        raise ValueError("a terminal event is appended alone")


class StoredEvent:
    """One event: its id and its SSE frame, encoded once and shared by every reader.

    Only the frame is kept; the name and data are read back from it on demand
    (the memory store keeps nothing but frames, so a stored token costs little
    more than its bytes on the wire).
    """

    __slots__ = ("frame", "id")

    def __init__(self, id: int, event: str, data: str) -> None:
        """`data` is JSON text on one line."""
        self.id = id
        self.frame = frame(event, data, id)

    @classmethod
    def from_frame(cls, id: int, encoded: bytes) -> StoredEvent:
        """The event `encoded` holds (a frame made by `__init__`)."""
        stored = cls.__new__(cls)
        stored.id = id
        stored.frame = encoded
        return stored

    @property
    def event(self) -> str:
        start = self.frame.index(b"event: ") + 7
        return self.frame[start : self.frame.index(b"\n", start)].decode()

    @property
    def data(self) -> str:
        start = self.frame.index(b"\ndata: ") + 7
        return self.frame[start:-2].replace(b"\ndata: ", b"\n").decode()

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return self.id == other.id and self.frame == other.frame

    def __hash__(self) -> int:
        return hash((self.id, self.frame))

    def __repr__(self) -> str:
        return f"StoredEvent(id={self.id!r}, event={self.event!r}, data={self.data!r})"


@dataclass(frozen=True, slots=True)
class StreamInfo:
    #: Oldest id still kept (`last_id + 1` when nothing is kept yet).
    first_id: int
    #: Newest id (0 before the first event).
    last_id: int
    #: The terminal event has been appended.
    finished: bool


class StreamStore(Protocol):
    #: Other gateway instances see the same streams, so a reader may move to
    #: another instance (on drain, its responses end at once and clients resume there).
    shared: bool
    #: An append waits for a backend's reply (a network round trip): the generation
    #: then hands the store the deltas that came meanwhile together (`append_many`).
    appends_wait: bool

    async def open(self) -> None:
        """Connect; called once by the app's lifespan."""

    async def close(self) -> None:
        """Release connections and timers."""

    async def run(self) -> None:
        """Background work (lease renewal, signals), run in the lifespan's task group
        until cancelled; it survives the backend going away and coming back."""

    async def ready(self) -> bool:
        """Whether new streams can be created right now."""

    def counters(self) -> Counters:
        """The per-caller limit counters, on the same backend and connections."""

    async def create(self, stream_id: str) -> None:
        """Register an empty stream."""

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        """Add the next event; a terminal one finishes the stream and starts its retention.

        Exactly once: a backend call that is retried, or whose reply was lost, never
        stores an event twice or reuses an id. Raises `StoreUnavailable` when the
        backend stays away (then the stream cannot go on; a terminal event may still
        follow), `GenerationLost` when the stream was ended for a lost generation.
        """

    async def append_many(
        self, stream_id: str, events: Sequence[tuple[str, str]]
    ) -> list[StoredEvent]:
        """Add `events` (name and data each, none terminal) as the next events, in
        order: what `append` does for each, all or none stored, in one backend call.

        Exactly once as `append`, for the whole call; raises as `append` does
        (`ValueError` for a terminal event: it is appended alone).
        """

    async def info(self, stream_id: str) -> StreamInfo | None:
        """The stream's extent, or `None` when it does not exist (or expired)."""

    async def read(self, stream_id: str, after: int, timeout: float) -> Sequence[StoredEvent]:
        """Events with ids above `after`, waiting up to `timeout` for the first one.

        Returns an empty batch on timeout. Raises `ResumeUnavailable` when events
        just after `after` were dropped, `NotFound` when there is no such stream, or
        `GenerationLost` when a networked store lost it while it was being read.
        """

    def attach(self, stream_id: str) -> AbstractAsyncContextManager[None]:
        """Count a reader for as long as the context is open (see `wait_abandoned`)."""

    async def cancel(self, stream_id: str) -> bool:
        """Ask the generation to stop; `False` when the stream does not exist."""

    async def wait_cancelled(self, stream_id: str) -> None:
        """Return once `cancel` was called for the stream."""

    async def wait_abandoned(self, stream_id: str, grace: float) -> None:
        """Return once no reader has been attached for `grace` seconds."""

    async def set_chat(self, chat_key: str, stream_id: str) -> None:
        """Remember `stream_id` as the latest generation of a chat (the AI SDK endpoint,
        `gateway.ui_chat`), for at most as long as a stream can live."""

    async def chat_stream(self, chat_key: str) -> str | None:
        """The chat's latest stream id, or `None`."""

    async def forget_chat(self, chat_key: str, stream_id: str) -> None:
        """Forget the chat's stream, unless a newer one has replaced it meanwhile."""


STORES: dict[str, str] = {
    "memory": "gateway.stores.memory:MemoryStore",
    "redis": "gateway.stores.redis:RedisStore",
}


def create_store(settings: Settings, on_error: Callable[[], None] = lambda: None) -> StreamStore:
    """The configured store; `on_error` is called for each failed backend operation
    (the metrics count them)."""
    module_name, _, class_name = STORES[settings.streams.store].partition(":")
    store_class = getattr(importlib.import_module(module_name), class_name)
    store: StreamStore = store_class(settings, on_error)
    return store
