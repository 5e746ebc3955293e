"""`Generations`: admission (the concurrency count, refused while draining), starting a
generation in the app's task group, and drain (wait, then cut with `error: shutdown`)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from gateway import load_settings
from gateway.deltas import Delta, OnDelta
from gateway.errors import ModelNotAllowed, OverCapacity, Shutdown
from gateway.generations import Generations
from gateway.limits import Slot
from gateway.metrics import Metrics
from gateway.payloads import ChatMessage, ChatRequest
from gateway.stores import StoredEvent
from gateway.stores.memory import MemoryStore
from gateway.upstream import Finish

pytestmark = pytest.mark.anyio

WATCHDOG = 5.0
CHAT = ChatRequest(messages=[ChatMessage(role="user", content="hi")])


class HeldRouter:
    """An upstream that sends one token, then finishes only when `finish` is set."""

    def __init__(self) -> None:
        self.finish = anyio.Event()

    def check(self, model: str | None) -> None:
        if model == "unknown":
            raise ModelNotAllowed()

    async def stream_deltas(self, chat: ChatRequest, on_delta: OnDelta) -> Finish:
        await on_delta(Delta("token", "a"))
        await self.finish.wait()
        return Finish("stop", None)


class FailingStore(MemoryStore):
    async def create(self, stream_id: str) -> None:
        raise ConnectionError("the store went away")


@asynccontextmanager
async def running(
    store_class: type[MemoryStore] = MemoryStore, **limits: Any
) -> AsyncIterator[tuple[Generations, MemoryStore, HeldRouter]]:
    settings = load_settings(
        os.devnull,
        environ={},
        overrides={"limits": limits, "streams": {"disconnect_grace": 60}},
    )
    store, router = store_class(settings), HeldRouter()
    generations = Generations(settings, store, router, Metrics(settings.metrics))
    with anyio.fail_after(WATCHDOG):
        try:
            yield generations, store, router
        finally:
            router.finish.set()
            while generations.active:  # every generation ends by itself
                await anyio.sleep(0.01)


async def last_event(store: MemoryStore, stream_id: str) -> StoredEvent:
    """The stream's terminal event, once it is there."""
    after = 0
    while True:
        for event in await store.read(stream_id, after, timeout=1):
            if event.terminal:
                return event
            after = event.id


async def test_admission_stops_at_the_limit_and_a_finished_stream_frees_its_place() -> None:
    async with running(max_concurrent_streams=2) as (generations, store, router):
        first = await generations.start(CHAT, stream_id="one", slot=Slot())
        await generations.start(CHAT, stream_id="two", slot=Slot())
        assert (first, generations.active) == ("one", 2)
        with pytest.raises(OverCapacity) as refused:
            await generations.start(CHAT, stream_id="three", slot=Slot())
        assert refused.value.headers() == {"Retry-After": "1"}
        assert await store.info("three") is None
        with pytest.raises(OverCapacity), generations.generation():
            pass  # the front door's generations count against the same limit
        router.finish.set()
        assert (await last_event(store, "one")).event == "done"
        assert (await last_event(store, "two")).event == "done"
        while generations.active:
            await anyio.sleep(0.01)
        with generations.generation():
            assert generations.active == 1
        assert generations.active == 0


async def test_a_start_that_fails_is_not_counted_and_leaves_the_slot_to_the_caller() -> None:
    class CountingSlot(Slot):
        released = 0

        async def release(self) -> None:
            self.released += 1

    slot = CountingSlot()
    async with running(max_concurrent_streams=1) as (generations, _, _router):
        with pytest.raises(ModelNotAllowed):
            await generations.start(
                CHAT.model_copy(update={"model": "unknown"}), stream_id="a", slot=slot
            )
        assert generations.active == 0
    async with running(FailingStore, max_concurrent_streams=1) as (generations, _, _router):
        with pytest.raises(ConnectionError):
            await generations.start(CHAT, stream_id="b", slot=slot)
        assert generations.active == 0
    assert slot.released == 0


async def test_a_stream_without_an_id_gets_a_random_one() -> None:
    async with running() as (generations, store, router):
        ids = {await generations.start(CHAT, stream_id=None, slot=Slot()) for _ in range(3)}
        router.finish.set()
        assert len(ids) == 3
        for stream_id in ids:
            assert len(stream_id) >= 32
            assert (await last_event(store, stream_id)).event == "done"


async def test_drain_waits_for_running_generations_then_cuts_them_with_shutdown() -> None:
    async with running() as (generations, store, _router):
        await generations.start(CHAT, stream_id="cut", slot=Slot())
        front_door_cut = False

        async def front_door() -> None:
            nonlocal front_door_cut
            with generations.generation():
                try:
                    await anyio.sleep_forever()
                finally:
                    front_door_cut = True

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(front_door)
            while generations.active < 2:
                await anyio.sleep(0.01)
            started = anyio.current_time()
            await generations.drain(0.2)
            assert anyio.current_time() - started >= 0.2
        assert generations.draining
        assert (generations.active, front_door_cut) == (0, True)
        end = await last_event(store, "cut")
        assert end.event == "error"
        assert json.loads(end.data)["code"] == "shutdown"
        with pytest.raises(Shutdown):
            await generations.start(CHAT, stream_id="late", slot=Slot())
        with pytest.raises(Shutdown), generations.generation():
            pass


async def test_drain_lets_a_generation_that_ends_in_time_finish() -> None:
    async with running() as (generations, store, router):
        await generations.start(CHAT, stream_id="whole", slot=Slot())
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(generations.drain, WATCHDOG)
            await anyio.sleep(0.05)
            router.finish.set()
        assert (await last_event(store, "whole")).event == "done"
