"""The Redis store's readers: one follower per stream per instance, fanning out locally.

Many readers of one stream must not take a Redis connection each (redis-py's
pool stops at 100 by default, and then every call of the instance fails).
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import httpx_sse
import pytest
import redis

from tests.helpers import TIMEOUT, create, marker, read_events, wait_until

READERS = 120


async def _read_all(events_url: str) -> list[tuple[str, str, str]]:
    async with (
        httpx.AsyncClient(timeout=TIMEOUT) as client,
        httpx_sse.aconnect_sse(client, "GET", events_url) as source,
    ):
        return [
            (event.event, event.id, event.data) async for event in source.aiter_sse() if event.data
        ]


@pytest.mark.parametrize("generated", ["here", "elsewhere"])
def test_many_readers_of_one_stream_share_one_redis_connection(
    gateway, redis_server, client, generated
):
    """Readers on the instance that generates the stream, or on another one."""
    settings = {
        "streams": {"store": "redis"},
        "redis": {"url": redis_server.url},
        "sse": {"heartbeat": 0.5},
    }
    server = gateway(**settings)
    generating = server if generated == "here" else gateway(**settings)
    # 12 s: the readers attach well before the end, however busy the machine.
    content = f"{marker()} [[sim tokens=12 delay_ms=1000]]"
    events_url = server.url + httpx.URL(create(client, generating.url, content)).raw_path.decode()
    blocked: list[int] = []
    admin = redis.Redis.from_url(redis_server.url)

    async def scenario() -> list[list[tuple[str, str, str]]]:
        readers = [asyncio.create_task(_read_all(events_url)) for _ in range(READERS)]
        # Who waits in XREAD BLOCK, sampled from the start until every reader is done:
        # a busy machine may attach the readers, or deliver their events, seconds late
        # (a window chosen in advance once saw only the follower's end).
        async with asyncio.timeout(60):
            while not all(reader.done() for reader in readers):
                blocked.append(int(admin.info("clients")["blocked_clients"]))
                await asyncio.sleep(0.05)
        return await asyncio.gather(*readers)

    try:
        results = asyncio.run(scenario())
    finally:
        admin.close()
    first = results[0]
    assert [event for event, _, _ in first] == ["token"] * 12 + ["done"]
    assert [int(id) for _, id, _ in first] == list(range(1, 14))
    assert all(result == first for result in results)
    # The stream's one follower, never one per reader: it waits in XREAD BLOCK for a
    # stream generated elsewhere; the generating instance hands it its events.
    assert max(blocked) == (1 if generated == "elsewhere" else 0)
    wait_until(lambda: generating.state.generations.active == 0)


def test_the_store_sends_nothing_redis_refuses(gateway, redis_server, client):
    """Redis before 7.2 refuses `CLIENT SETINFO`; redis-py then hands the refusal to a
    later command on that connection, which fails as `store_unavailable`."""
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.config_resetstat()
        server = gateway(streams={"store": "redis"}, redis={"url": redis_server.url})
        events_url = create(client, server.url, f"{marker()} [[sim tokens=3]]")
        with httpx_sse.connect_sse(client, "GET", events_url) as source:
            assert [e.event for e in source.iter_sse() if e.data][-1] == "done"
        assert "errorstat_ERR" not in admin.info("errorstats")  # NOSCRIPT is handled
    finally:
        admin.close()


def test_a_reader_far_behind_the_follower_reads_its_backlog(gateway, redis_server, client):
    """A second reader that starts from the beginning while the stream's follower is
    well past its window still gets every event, in order, once."""
    server = gateway(streams={"store": "redis"}, redis={"url": redis_server.url})
    events_url = create(client, server.url, f"{marker()} [[sim tokens=200 delay_ms=10]]")
    first: list[tuple[str, str, str]] = []

    def follow() -> None:
        with httpx.Client(timeout=TIMEOUT) as own:
            first.extend((e.event, e.id, e.data) for e in read_events(own, events_url))

    reader = threading.Thread(target=follow)
    with httpx_sse.connect_sse(client, "GET", events_url) as source:
        reader.start()  # attached and followed from here on
        seen = 0
        for event in source.iter_sse():
            seen += bool(event.data)
            if seen == 150:  # well past the follower's window of 64
                break
    with httpx.Client(timeout=TIMEOUT) as late:
        second = [(e.event, e.id, e.data) for e in read_events(late, events_url)]
    reader.join(TIMEOUT.read)
    assert [int(id) for _, id, _ in second] == list(range(1, 202))
    assert second == first
