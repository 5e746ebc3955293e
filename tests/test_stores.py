"""The store contract: the same cases against the memory and the Redis store, directly.

Routes and generations rely only on what is checked here, so the HTTP tests
need not run twice. The Redis cases use a real redis-server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from gateway import Settings, load_settings
from gateway.errors import GenerationLost, NotFound, ResumeUnavailable
from gateway.stores import StreamStore, create_store
from tests.helpers import RedisServer

pytestmark = pytest.mark.anyio
WATCHDOG = 5.0


def store_settings(name: str, server: RedisServer | None, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"streams": {"store": name, "max_events": 5}}
    if server is not None:
        base["redis"] = {"url": server.url, "lease_ttl": 0.4}
    for key, value in overrides.items():
        base.setdefault(key, {}).update(value)
    return load_settings(os.devnull, environ={}, overrides=base)


@pytest.fixture(params=["memory", "redis"])
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(name: str, request: pytest.FixtureRequest) -> AsyncIterator[StreamStore]:
    server = request.getfixturevalue("redis_server") if name == "redis" else None
    store = create_store(store_settings(name, server))
    await store.open()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(store.run)
            with anyio.fail_after(WATCHDOG):
                yield store
            tasks.cancel_scope.cancel()
    finally:
        await store.close()


def new_id() -> str:
    return uuid.uuid4().hex


async def test_ids_are_one_sequence_and_the_terminal_event_finishes(store: StreamStore) -> None:
    stream = new_id()
    await store.create(stream)
    assert await store.info(stream) == _info(1, 0, False)
    for i in range(1, 3):
        stored = await store.append(stream, "token", f'{{"text": "{i}"}}')
        assert (stored.id, stored.event) == (i, "token")
        assert stored.frame == f'id: {i}\nevent: token\ndata: {{"text": "{i}"}}\n\n'.encode()
    done = await store.append(stream, "done", "{}")
    assert done.id == 3 and done.terminal
    assert await store.info(stream) == _info(1, 3, True)
    assert [e.id for e in await store.read(stream, 0, 0.1)] == [1, 2, 3]
    assert [e.event for e in await store.read(stream, 1, 0.1)] == ["token", "done"]


async def test_events_read_back_exactly_as_appended(store: StreamStore) -> None:
    """Stores keep frames; the name and data read back must be the ones appended."""
    stream = new_id()
    await store.create(stream)
    appended = [
        ("token", '{"text": "caf\u00e9 \\n \\"quoted\\""}'),
        ("reasoning", '{"text": "da\u00eft\u00e9 \u2028"}'),
        ("tool_call", '{"index": 0, "arguments": "{\\"a\\": 1}"}'),
        ("done", '{"finish_reason": "stop", "usage": null}'),
    ]
    for event, data in appended:
        await store.append(stream, event, data)
    events = await store.read(stream, 0, 0.1)
    assert [(e.event, e.data) for e in events] == appended
    assert [e.terminal for e in events] == [False, False, False, True]


async def test_append_many_stores_what_an_append_each_would(store: StreamStore) -> None:
    """Several events in one call (the generation's write-behind): the same ids, frames
    and order as one `append` each, seen by a reader attached here as they come."""
    many = [
        ("token", '{"text": "b"}'),
        ("reasoning", '{"text": "\u00e9"}'),
        ("tool_call", '{"index": 0, "id": "c", "name": "f", "arguments": "{"}'),
    ]
    one_each, batched = new_id(), new_id()
    for stream in (one_each, batched):
        await store.create(stream)
        await store.append(stream, "token", '{"text": "a"}')
    for event, data in many:
        await store.append(one_each, event, data)
    async with store.attach(batched):
        assert [e.id for e in await store.read(batched, 0, 0.1)] == [1]
        stored = await store.append_many(batched, many)
        assert await store.append_many(batched, []) == []
        assert [(e.id, e.frame) for e in await store.read(batched, 1, 0.1)] == [
            (e.id, e.frame) for e in stored
        ]
    await store.append(batched, "token", '{"text": "c"}')
    await store.append(one_each, "token", '{"text": "c"}')
    expected = await store.read(one_each, 0, 0.1)
    assert [(e.id, e.frame) for e in stored] == [(e.id, e.frame) for e in expected[1:4]]
    assert await store.read(batched, 0, 0.1) == expected
    assert await store.info(batched) == _info(1, 5, False)


async def test_append_many_refuses_a_terminal_event(store: StreamStore) -> None:
    """A terminal event is appended alone, and nothing of the call is stored."""
    stream = new_id()
    await store.create(stream)
    with pytest.raises(ValueError):
        await store.append_many(stream, [("token", '{"text": "a"}'), ("done", "{}")])
    assert await store.info(stream) == _info(1, 0, False)


async def test_a_read_waits_for_the_next_event_or_times_out(store: StreamStore) -> None:
    stream = new_id()
    await store.create(stream)
    assert await store.read(stream, 0, 0.05) == []
    async with anyio.create_task_group() as tasks:

        async def append_later() -> None:
            await anyio.sleep(0.05)
            await store.append(stream, "token", '{"text": "x"}')

        tasks.start_soon(append_later)
        batch = await store.read(stream, 0, 2)
    assert [e.data for e in batch] == ['{"text": "x"}']


async def test_attached_readers_get_every_event_once_in_order(store: StreamStore) -> None:
    """Readers attached where the stream is generated (Redis: its appends hand their
    events to the stream's follower), both joining after some events, each read as
    it is stored."""
    stream = new_id()
    await store.create(stream)
    got: dict[str, list[tuple[int, str]]] = {"first": [], "second": []}

    async def reader(name: str, after: int) -> None:
        async with store.attach(stream):
            while not got[name] or got[name][-1][1] != "{}":
                batch = await store.read(stream, after, 1)
                got[name] += [(e.id, e.data) for e in batch]
                after = batch[-1].id if batch else after

    async def seen(last: int, *names: str) -> None:
        while any(not got[name] or got[name][-1][0] != last for name in names):
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tasks:
        for i in range(1, 11):
            await store.append(stream, "token", f'{{"text": "{i}"}}')
            if i == 2:  # the first reader joins here, from the start
                tasks.start_soon(reader, "first", 0)
            if i == 4:  # the second one here, after id 1 (all within max_events)
                tasks.start_soon(reader, "second", 1)
            await seen(i, *[name for name, start in (("first", 2), ("second", 4)) if i >= start])
        await store.append(stream, "done", "{}")
    expected = [(i, f'{{"text": "{i}"}}') for i in range(1, 11)] + [(11, "{}")]
    assert got["first"] == expected
    assert got["second"] == expected[1:]


async def test_events_past_max_events_cannot_be_resumed(store: StreamStore) -> None:
    stream = new_id()
    await store.create(stream)
    for _ in range(8):
        await store.append(stream, "token", '{"text": "x"}')
    info = await store.info(stream)
    assert info is not None and (info.first_id, info.last_id) == (4, 8)
    with pytest.raises(ResumeUnavailable):
        await store.read(stream, 1, 0.1)
    assert [e.id for e in await store.read(stream, 3, 0.1)] == [4, 5, 6, 7, 8]


async def test_unknown_streams(store: StreamStore) -> None:
    assert await store.info("nope") is None
    assert await store.cancel("nope") is False
    with pytest.raises((NotFound, GenerationLost)):  # Redis cannot tell the two apart
        await store.read("nope", 0, 0.1)


async def test_cancel_reaches_the_generation(store: StreamStore) -> None:
    stream = new_id()
    await store.create(stream)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.wait_cancelled, stream)
        await anyio.sleep(0.01)
        assert await store.cancel(stream) is True
    # (the task group only exits once wait_cancelled returned)


async def test_abandoned_once_no_reader_for_the_grace(store: StreamStore) -> None:
    stream = new_id()
    await store.create(stream)
    async with store.attach(stream):
        with anyio.move_on_after(0.2) as waited:
            await store.wait_abandoned(stream, 0.05)
        assert waited.cancelled_caught  # a reader is attached: never abandoned
    started = anyio.current_time()
    await store.wait_abandoned(stream, 0.05)
    assert anyio.current_time() - started >= 0.05


async def test_counters_count_atomically(store: StreamStore) -> None:
    counters = store.counters()
    key = f"sse:test:{new_id()}"
    assert [(await counters.hit(key, 60))[0] for _ in range(3)] == [1, 2, 3]
    slots = f"sse:test:{new_id()}"
    results = []

    async def acquire(member: str) -> None:
        results.append(await counters.acquire(slots, member, 5, 60))

    async with anyio.create_task_group() as tasks:
        for i in range(20):
            tasks.start_soon(acquire, str(i))
    assert results.count(True) == 5
    await counters.release(slots, "nobody")  # harmless
    for i in range(20):
        await counters.release(slots, str(i))
    assert await counters.acquire(slots, "again", 1, 60)


# -- Redis only: what a network in between adds -----------------------------------------


@pytest.mark.parametrize("events", [1, 3])
async def test_redis_append_sent_twice_is_stored_once(
    redis_server: RedisServer, events: int
) -> None:
    """A call redis-py re-sends after a timeout (its first send was applied) must not
    store its events twice or fail half-way (before: MULTI/EXEC applied twice), be it
    one event (`append`) or several (`append_many`)."""
    store = create_store(store_settings("redis", redis_server))
    await store.open()
    try:
        stream = new_id()
        await store.create(stream)
        await store.append(stream, "token", '{"text": "a"}')
        # The script exactly as the store sends it for ids 2.., sent twice.
        client = aioredis.from_url(redis_server.url, decode_responses=True)
        keys = [f"sse:{{{stream}}}:{part}" for part in ("events", "meta", "lease", "readers")]
        keys.append(f"sse:{{{stream}}}:cancel")
        script = client.register_script(_append_script())
        texts = [f'{{"text": "{i}"}}' for i in range(2, 2 + events)]
        args: list[Any] = [2, 5, "instance", 1000, 0, 1000, 60]
        for text in texts:
            args += ["token", text]
        assert await script(keys=keys, args=args) == 2
        assert await script(keys=keys, args=args) == 2
        await client.aclose()
        batch = await store.read(stream, 0, 0.1)
        expected = [(1, '{"text": "a"}')] + [(2 + i, text) for i, text in enumerate(texts)]
        assert [(e.id, e.data) for e in batch] == expected
        assert await store.info(stream) == _info(1, 1 + events, False)
    finally:
        await store.close()


async def test_redis_lost_generation_ends_with_an_id(redis_server: RedisServer) -> None:
    """The generating instance is gone (its lease lapsed): a reader ends the stream with
    `error: generation_lost` stored under the next id, so a resume after it is 204 and the
    generation, if it was only cut off, learns it lost."""
    writer = create_store(store_settings("redis", redis_server))
    reader = create_store(store_settings("redis", redis_server))
    await writer.open()
    await reader.open()
    try:
        stream = new_id()
        await writer.create(stream)
        await writer.append(stream, "token", '{"text": "a"}')
        # The writer stops renewing (it never runs `run`): the 0.4 s lease lapses.
        with anyio.fail_after(WATCHDOG):
            batch = await reader.read(stream, 1, 3)
        assert [(e.id, e.event) for e in batch] == [(2, "error")]
        assert '"generation_lost"' in batch[0].data
        assert await reader.info(stream) == _info(1, 2, True)
        with pytest.raises(GenerationLost):
            await writer.append(stream, "token", '{"text": "late"}')
    finally:
        await writer.close()
        await reader.close()


def _append_script() -> str:
    from gateway.stores.redis_scripts import APPEND

    script: str = APPEND
    return script


def _info(first: int, last: int, finished: bool) -> Any:
    from gateway.stores import StreamInfo

    return StreamInfo(first, last, finished)
