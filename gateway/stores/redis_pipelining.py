"""A Lua script whose concurrent calls share round trips to Redis.

Every stream's generation appends its events (one per call, or all that came
while its previous append was on its way), each call one script run.
Sent one by one, each call pays redis-py's whole command path and a round trip of
its own; here the calls made while a pipeline is on its way wait for it to come
back, then all go out together in the next one (one write, one read), so the
cost per call falls as the number of streams grows. Nothing is reordered: calls
go out in the order they were made, and only one pipeline is on its way at a time.

The commands are packed here (RESP arrays of bulk strings, as redis-py packs them,
without its per-argument checks: in the profile they were most of a pipeline's
cost per call) and sent on a pooled connection, whose health check and reply
parsing stay redis-py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["PipelinedScript"]

_Call = tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]


class PipelinedScript:
    """`await script(keys, args)`: one call of a script that must be safe to send
    twice (a pipeline cut off half-way is sent again by the caller)."""

    def __init__(self, client: redis.Redis, script: str) -> None:
        self._client = client
        self._script = client.register_script(script)
        self._queued: list[_Call] = []
        self._sending: asyncio.Task[None] | None = None

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        """The script's reply, to await; it raises what redis-py raises for the call or
        its pipeline."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((keys, args, reply))
        if self._sending is None:
            self._sending = asyncio.create_task(self._send())
        return reply

    def close(self) -> None:
        if self._sending is not None:
            self._sending.cancel()

    async def _send(self) -> None:
        calls: list[_Call] = []
        try:
            while self._queued:
                calls, self._queued = self._queued, []
                try:
                    replies = await self._execute(calls)
                except Exception as exc:  # the whole pipeline failed: every call did
                    replies = [exc] * len(calls)
                for (_, _, reply), result in zip(calls, replies, strict=True):
                    if reply.done():
                        continue
                    if isinstance(result, Exception):
                        reply.set_exception(result)
                    else:
                        reply.set_result(result)
        finally:
            self._sending = None
            for _, _, reply in [*calls, *self._queued]:
                if not reply.done():
                    reply.set_exception(ConnectionError("the Redis store was closed"))

    async def _execute(self, calls: Sequence[_Call]) -> list[Any]:
        """The replies of `calls`, exceptions among them; after a Redis restart (the
        script is no longer cached there) it is loaded again, as redis-py's `Script`
        does."""
        replies = await self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self._client.script_load(self._script.script)
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: Sequence[_Call]) -> list[Any]:
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(
                [self._pack(keys, args) for keys, args, _ in calls]
            )
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # this call's own error: the others go on
                    replies.append(exc)
        except BaseException:
            # Replies may be left unread on it: never hand it out again as it is.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        return replies

    def _pack(self, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        """`EVALSHA sha numkeys *keys *args`, as RESP (lengths in bytes)."""
        parts = ["EVALSHA", self._script.sha, str(len(keys)), *keys, *map(str, args)]
        packed = [f"*{len(parts)}\r\n"]
        for part in parts:
            size = len(part) if part.isascii() else len(part.encode())
            packed.append(f"${size}\r\n{part}\r\n")
        return "".join(packed).encode()
