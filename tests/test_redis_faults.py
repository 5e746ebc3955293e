"""Faults under the Redis store and the limits, on real parts (issue 11).

A real redis-server per test, paused (SIGSTOP) or restarted under running
streams; real gateways (in-process uvicorn, and a separate `sse-gateway serve`
process where one has to die) in front of the shared simulator. Every reader's
events are checked whole: tokens with ids 1..N in order, no gap, no repeat,
then exactly one terminal event with its own id, and a resume after it gets
204. The client side runs in one event loop (`anyio.run`) so that every wait,
including a read that only ever gets heartbeats, ends at a deadline.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx_sse
import pytest

from tests.helpers import GatewayServer, RedisServer, SimServer, marker, running_redis
from tests.helpers_deploy import GatewayProcess

LEASE_TTL = 1.0
#: The Redis client's socket timeout (`redis.lease_ttl / 2 + 5`): a call made
#: during a longer stall times out, and redis-py sends it once more.
SOCKET_TIMEOUT = LEASE_TTL / 2 + 5
#: Long enough that calls made at its start time out; the retry lands after it.
STALL = SOCKET_TIMEOUT + 2
#: The longest one Redis call blocks in a stall before it fails (redis-py 8.1,
#: `Retry(retries=1)`): on a new connection, the handshake and the command are
#: each sent twice, and each waits up to a socket timeout.
CALL_FAILS_AFTER = 4 * SOCKET_TIMEOUT
#: `streams.store_outage` where a test wants readers and generations to give up soon.
OUTAGE = 3.0
TIMEOUT = httpx.Timeout(30.0, connect=5.0)

Events = list[httpx_sse.ServerSentEvent]
StartGateway = Callable[..., GatewayServer]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, since the test pauses or restarts it."""
    with running_redis() as server:
        try:
            yield server
        finally:
            if server.process is not None:  # a failed test may have left it paused
                server.process.send_signal(signal.SIGCONT)


def on_redis(server: RedisServer, **streams: Any) -> dict[str, Any]:
    """Gateway settings overrides: the Redis store on `server`, a short lease."""
    return {
        "streams": {"store": "redis", **streams},
        "redis": {"url": server.url, "lease_ttl": LEASE_TTL},
        "sse": {"heartbeat": 0.5},
        # Production's idle limit (30 s): no stall here may pass for an idle upstream.
        "upstream": {"timeouts": {"idle": 30, "total": 60}},
    }


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """redis-server stopped dead (SIGSTOP): connections stay open, nothing answers."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


def echo(tokens: int, delay_ms: int) -> tuple[str, str]:
    """(a prompt, the exact answer the simulator gives to it): `tokens` tokens of
    3 characters, `delay_ms` apart."""
    filler = " the quick brown fox jumps over the lazy dog"
    text = (marker() + filler * (3 * tokens // len(filler) + 1))[: 3 * tokens]
    return f"[[sim echo=1 chunk=3 delay_ms={delay_ms}]]{text}", text


def body(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


async def create(client: httpx.AsyncClient, url: str, content: str) -> str:
    """POST /v1/streams, which must succeed; returns the events URL."""
    response = await client.post(f"{url}/v1/streams", json=body(content))
    assert response.status_code == 201, response.text
    return f"{url}{response.json()['events_url']}"


async def read_into(
    events: Events, client: httpx.AsyncClient, events_url: str, last_event_id: str | None = None
) -> Events:
    """Append each event of one response to `events` as it comes; returns them."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    async with httpx_sse.aconnect_sse(client, "GET", events_url, headers=headers) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for event in source.aiter_sse():
            if event.data:  # not the leading `retry:` block
                events.append(event)
    return events


@asynccontextmanager
async def background_reader(
    client: httpx.AsyncClient, events_url: str, first: int, limit: float
) -> AsyncIterator[Events]:
    """A reader of the stream in the background; the block (the fault) runs once it has
    `first` events, and leaving it waits for the reader to reach the stream's end, all
    within `limit` seconds. Yields the reader's events as they come."""
    events: Events = []
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as readers:
            readers.start_soon(read_into, events, client, events_url)
            await until(f"{first} events", lambda: len(events) >= first, 10)
            yield events


async def until(what: str, condition: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    """Poll `condition` every 50 ms; fail the test after `timeout` seconds."""
    with anyio.move_on_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def assert_tokens(events: Events, after: int = 0) -> None:
    """Token events with ids `after`+1, +2, ...: none missing, none twice."""
    ids = [event.id for event in events]
    tail = [(event.id, event.event, event.data) for event in events[-2:]]
    assert ids == [str(after + n) for n in range(1, len(events) + 1)], tail
    assert [event.event for event in events] == ["token"] * len(events), tail


def assert_whole(events: Events, after: int = 0) -> httpx_sse.ServerSentEvent:
    """Tokens from id `after`+1 on, then exactly one terminal event with an id of
    its own (httpx-sse repeats the previous id for an event without one)."""
    assert events, "no events"
    *tokens, terminal = events
    assert_tokens(tokens, after)
    assert terminal.event in ("done", "error"), terminal
    assert terminal.id == str(after + len(events)), f"no id of its own: {terminal}"
    return terminal


def text_of(events: Events) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if e.event == "token")


def code_of(event: httpx_sse.ServerSentEvent) -> str:
    code: str = json.loads(event.data)["code"]
    return code


async def resume_status(client: httpx.AsyncClient, events_url: str, last_id: str) -> int:
    """The status of a resume from `last_id` (its body, if any, is not read)."""
    headers = {"Last-Event-ID": last_id}
    async with client.stream("GET", events_url, headers=headers) as response:
        return response.status_code


async def ready(client: httpx.AsyncClient, url: str) -> bool:
    return (await client.get(f"{url}/readyz")).status_code == 200


def check_answer(events: Events, text: str) -> None:
    """All the text, exactly, for `done`; a true prefix of it for an error."""
    terminal = assert_whole(events)
    if terminal.event == "done":
        assert text_of(events) == text
    else:
        assert text.startswith(text_of(events))


async def first_create_works(client: httpx.AsyncClient, url: str) -> None:
    """Once /readyz says ready, the first create (not a retry of it) succeeds and
    its stream ends `done`."""
    await until("/readyz 200", lambda: ready(client, url), 10)
    content, text = echo(5, 0)
    with anyio.fail_after(10):
        events = await read_into([], client, await create(client, url, content))
    assert assert_whole(events).event == "done"
    assert text_of(events) == text


# -- 1. a stall longer than the socket timeout ---------------------------------------


def test_a_redis_stall_ends_every_reader_with_one_identified_terminal_event(
    gateway: StartGateway, own_redis: RedisServer
) -> None:
    """Before: the stream was marked finished without a terminal event (an append
    sent twice), readers got only heartbeats and a reconnect got 204."""
    server = gateway(**on_redis(own_redis))
    content, text = echo(100, 50)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            events_url = await create(client, server.url, content)
            async with background_reader(client, events_url, 10, STALL + 30) as first:
                with paused(own_redis):
                    await anyio.sleep(STALL)
                # A second reader comes after the stall, resuming from before it.
                cut = int(first[9].id)
                second = await read_into([], client, events_url, str(cut))
            check_answer(first, text)
            assert [(e.id, e.event, e.data) for e in second] == [
                (e.id, e.event, e.data) for e in first[cut:]
            ]
            assert await resume_status(client, events_url, first[-1].id) == 204
            await first_create_works(client, server.url)  # the gateway serves on

    anyio.run(scenario)


# -- 2. a restart that loses every key -----------------------------------------------


#: Limits on, so that a create also goes through the limit counters.
SOME_LIMITS = {"requests_per_minute": 1000, "concurrent_streams_per_identity": 10}


def test_a_redis_restart_ends_readers_and_the_first_create_after_it_succeeds(
    gateway: StartGateway, own_redis: RedisServer
) -> None:
    server = gateway(**on_redis(own_redis, store_outage=OUTAGE), limits=SOME_LIMITS)
    content, text = echo(100, 50)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            events_url = await create(client, server.url, content)
            async with background_reader(client, events_url, 10, OUTAGE + 20) as events:
                await anyio.to_thread.run_sync(own_redis.stop)
                await anyio.to_thread.run_sync(own_redis.start)
            # What came after the restart is lost: the tokens before it, in order, then
            # one error, which the reader makes up (nothing is stored any more), so it
            # may have no id of its own.
            *tokens, terminal = events
            assert_tokens(tokens)
            assert terminal.event == "error", terminal
            # A code of docs/protocol.md's stream errors, and a new request may well work.
            data = json.loads(terminal.data)
            assert data["code"] in ("generation_lost", "store_unavailable"), data
            assert data["retryable"] is True, data
            assert text.startswith(text_of(events))
            # A browser reconnects with the last id it has and must be told to stop:
            # 204 if the end was stored again, 404 if the stream went with the data.
            assert await resume_status(client, events_url, terminal.id) in (204, 404)
            await first_create_works(client, server.url)

    anyio.run(scenario)


def test_the_first_create_after_a_redis_restart_succeeds(
    gateway: StartGateway, own_redis: RedisServer
) -> None:
    """Nothing runs across the restart, so every pooled connection is left dead.

    Before: /readyz (the store's connections) said ready while the limit
    counters' own connections were still dead: the first create got 503.
    """
    server = gateway(**on_redis(own_redis), limits=SOME_LIMITS)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            content, text = echo(3, 0)
            with anyio.fail_after(10):
                events = await read_into([], client, await create(client, server.url, content))
            assert text_of(events) == text
            await anyio.to_thread.run_sync(own_redis.stop)
            await anyio.to_thread.run_sync(own_redis.start)
            await first_create_works(client, server.url)

    anyio.run(scenario)


# -- 3. the generating instance dies -------------------------------------------------


def test_a_killed_generating_instance_ends_the_stream_as_lost_with_an_id(
    gateway: StartGateway, own_redis: RedisServer, simulator: SimServer, tmp_path: Path
) -> None:
    """Before: the reader's `generation_lost` had no id and the stream never ended."""
    overrides = on_redis(own_redis)
    settings = {
        **overrides,
        "upstream": {"base_url": simulator.base_url, **overrides["upstream"]},
        "simulator": {"enabled": False},
        "web": {"enabled": False},
    }
    generating = GatewayProcess(tmp_path, settings).start()
    try:
        reading = gateway(**overrides)
        content, text = echo(100, 100)

        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                events_url = await create(client, generating.url, content)
                events_url = reading.url + events_url.removeprefix(generating.url)
                async with background_reader(client, events_url, 3, 30) as events:
                    generating.signal(signal.SIGKILL)
                    await until(
                        "the end of the stream",
                        lambda: events[-1].event != "token",
                        4 * LEASE_TTL + 5,  # a few lease periods
                    )
                terminal = assert_whole(events)
                assert (terminal.event, code_of(terminal)) == ("error", "generation_lost")
                assert text.startswith(text_of(events))
                assert await resume_status(client, events_url, terminal.id) == 204
                with anyio.fail_after(10):
                    replay = await read_into([], client, events_url)
                assert [(e.id, e.event, e.data) for e in replay] == [
                    (e.id, e.event, e.data) for e in events
                ]

        anyio.run(scenario)
    finally:
        generating.stop()


# -- 4. limits under a burst ---------------------------------------------------------

BURST = 100
LIMIT = 5


async def burst(client: httpx.AsyncClient, urls: list[str], content: str) -> list[httpx.Response]:
    """`BURST` concurrent creates, spread over `urls` in turn."""
    responses: list[httpx.Response] = []

    async def one(url: str) -> None:
        responses.append(await client.post(f"{url}/v1/streams", json=body(content)))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for n in range(BURST):
                tasks.start_soon(one, urls[n % len(urls)])
    return responses


async def end_all(client: httpx.AsyncClient, url: str, created: list[httpx.Response]) -> None:
    """DELETE each created stream and read it to its terminal event."""
    for response in created:
        events_url = f"{url}{response.json()['events_url']}"
        delete = await client.delete(events_url.removesuffix("/events"))
        assert delete.status_code == 204
        with anyio.fail_after(10):
            terminal = assert_whole(await read_into([], client, events_url))
        assert (terminal.event, code_of(terminal)) == ("error", "cancelled")


async def create_again(client: httpx.AsyncClient, url: str, content: str, refusal: int) -> None:
    """`LIMIT` creates succeed once the slots are back (polled; until then they are
    refused with status `refusal`), then end them."""
    created: list[httpx.Response] = []

    async def one_more() -> bool:
        response = await client.post(f"{url}/v1/streams", json=body(content))
        if response.status_code == 201:
            created.append(response)
        else:
            assert response.status_code == refusal, response.text
        return len(created) == LIMIT

    await until(f"{LIMIT} creates", one_more, 10)
    await end_all(client, url, created)


def burst_is_held(urls: list[str], status: int, code: str) -> None:
    """A burst over `urls` admits `LIMIT` streams and refuses the rest with `status` and
    `code`; once those are ended (through the first instance: any can cancel and read
    any stream), `LIMIT` creates succeed again (through the last)."""
    content = f"{marker()} [[sim tokens=200 delay_ms=100]]"

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=BURST)
        async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as client:
            responses = await burst(client, urls, content)
            created = [r for r in responses if r.status_code == 201]
            assert len(created) == LIMIT
            assert refused(responses, status) == [code] * (BURST - LIMIT)
            await end_all(client, urls[0], created)
            await create_again(client, urls[-1], content, status)

    anyio.run(scenario)


def refused(responses: list[httpx.Response], status: int) -> list[str]:
    """The error codes of the responses that were not 201, each checked for `status`."""
    codes = []
    for response in responses:
        if response.status_code != 201:
            assert response.status_code == status, response.text
            codes.append(response.json()["error"]["code"])
    return codes


def test_max_concurrent_streams_holds_under_a_burst_and_slots_come_back(
    gateway: StartGateway, own_redis: RedisServer
) -> None:
    """Before: the check and the count had an await between them; a burst slipped past."""
    server = gateway(**on_redis(own_redis), limits={"max_concurrent_streams": LIMIT})
    burst_is_held([server.url], 503, "over_capacity")


def test_streams_per_identity_hold_across_two_instances_under_a_burst(
    gateway: StartGateway, own_redis: RedisServer
) -> None:
    """One caller, two instances: both count in the same Redis set."""
    overrides = on_redis(own_redis)
    limits = {"concurrent_streams_per_identity": LIMIT}
    first, second = gateway(**overrides, limits=limits), gateway(**overrides, limits=limits)
    burst_is_held([first.url, second.url], 429, "too_many_streams")


# -- 5. a slot held through a stall --------------------------------------------------


def slot_comes_back(
    server: GatewayServer, redis: RedisServer, content: str, stall: float
) -> Events:
    """Pause Redis for `stall` seconds once the stream (the caller's only slot) is
    under way; after SIGCONT a create for the same caller must succeed within a
    few seconds. Returns the first stream's events, checked whole."""

    async def scenario() -> Events:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            events_url = await create(client, server.url, content)
            events: Events = []
            next_url: list[str] = []
            content2, text2 = echo(3, 0)

            async def create_next() -> bool:
                response = await client.post(f"{server.url}/v1/streams", json=body(content2))
                if response.status_code == 201:
                    next_url.append(f"{server.url}{response.json()['events_url']}")
                    return True
                assert response.status_code == 429, response.text
                return False

            with anyio.fail_after(stall + 30):
                async with anyio.create_task_group() as readers:
                    readers.start_soon(read_into, events, client, events_url)
                    await until("3 events", lambda: len(events) >= 3, 10)
                    with paused(redis):
                        await anyio.sleep(stall)
                    await until("a create for the same caller", create_next, 5)
            assert_whole(events)
            assert await resume_status(client, events_url, events[-1].id) == 204
            with anyio.fail_after(10):
                after = await read_into([], client, next_url[0])
            assert assert_whole(after).event == "done"
            assert text_of(after) == text2
            return events

    return anyio.run(scenario)


def test_a_stream_ending_during_a_redis_stall_gives_its_slot_back(
    gateway: StartGateway, own_redis: RedisServer
) -> None:
    """The answer ends upstream while its deltas wait (coalesced) for the paused store.

    Before: the failed flush skipped the slot's release, which then stayed held
    until it expired (`upstream.timeouts.total` + 60 s), and the stream had no end.
    """
    overrides = on_redis(own_redis)
    overrides["sse"]["coalesce_ms"] = 50
    server = gateway(**overrides, limits={"concurrent_streams_per_identity": 1})
    content, text = echo(40, 50)  # 2 s: the upstream is done well within the stall
    events = slot_comes_back(server, own_redis, content, STALL)
    assert events[-1].event == "done"
    assert text_of(events) == text


def test_a_slot_release_that_fails_in_a_stall_is_retried_after_it(
    gateway: StartGateway, own_redis: RedisServer
) -> None:
    """The generation ends (upstream idle for 1 s) early in a stall long enough for
    its slot's release to fail; the release is retried once Redis is back, not
    left to expire."""
    overrides = on_redis(own_redis)
    overrides["upstream"]["timeouts"]["idle"] = 1
    server = gateway(**overrides, limits={"concurrent_streams_per_identity": 1})
    content = f"{marker()} [[sim tokens=50 fault=stall after=3]]"
    events = slot_comes_back(server, own_redis, content, 1 + CALL_FAILS_AFTER + 3)
    assert (events[-1].event, code_of(events[-1])) == ("error", "upstream_timeout")
