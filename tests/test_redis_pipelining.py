"""`PipelinedScript`: the calls made while a pipeline is on its way go out together,
each with its own reply, in order, on one connection (a real redis-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.stores.redis_pipelining import PipelinedScript
from tests.helpers import RedisServer

pytestmark = pytest.mark.anyio

#: Appends the call's argument to a list and returns the list's length.
PUSH = "return redis.call('RPUSH', KEYS[1], ARGV[1])"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


async def calls_at_once(script: PipelinedScript, calls: list[tuple[str, str]]) -> list[object]:
    """Every call started before any is answered; each one's reply or error."""
    replies: list[object] = [None] * len(calls)

    async def call(i: int, key: str, value: str) -> None:
        try:
            replies[i] = await script([key], [value])
        except ResponseError as exc:
            replies[i] = exc

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            for i, (key, value) in enumerate(calls):
                tasks.start_soon(call, i, key, value)
    return replies


async def test_calls_at_once_are_applied_in_order_with_their_own_replies(
    client: aioredis.Redis,
) -> None:
    script = PipelinedScript(client, PUSH)
    before = (await client.info("stats"))["total_connections_received"]
    replies = await calls_at_once(script, [("list", f"v{i}") for i in range(50)])
    assert replies == list(range(1, 51))
    assert await client.lrange("list", 0, -1) == [f"v{i}" for i in range(50)]
    # Sent together: the first call's connection, and the pool's own for the checks here.
    after = (await client.info("stats"))["total_connections_received"]
    assert after - before <= 2


async def test_a_failing_call_fails_alone(client: aioredis.Redis) -> None:
    await client.set("text", "not a list")
    script = PipelinedScript(client, PUSH)
    replies = await calls_at_once(script, [("list", "a"), ("text", "b"), ("list", "c")])
    assert replies[0] == 1 and replies[2] == 2
    assert isinstance(replies[1], ResponseError)
    assert await client.lrange("list", 0, -1) == ["a", "c"]


async def test_the_script_is_loaded_again_after_redis_forgot_it(client: aioredis.Redis) -> None:
    """After a restart Redis has no scripts cached (NOSCRIPT): loaded again, each call
    applied once."""
    script = PipelinedScript(client, PUSH)
    assert await calls_at_once(script, [("list", "a")]) == [1]
    await client.script_flush()
    assert await calls_at_once(script, [("list", "b"), ("list", "c")]) == [2, 3]
    assert await client.lrange("list", 0, -1) == ["a", "b", "c"]


async def test_non_ascii_arguments_are_sent_whole(client: aioredis.Redis) -> None:
    script = PipelinedScript(client, PUSH)
    value = 'données {"é": "\\r\\n$5"} \r\n$3\r\nxyz'
    assert await calls_at_once(script, [("liste-é", value)]) == [1]
    assert await client.lrange("liste-é", 0, -1) == [value]
