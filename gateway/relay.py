"""Generations: each runs in a task the gateway owns, never in a request.

A generation is a race of three contenders in one task group; the first to
finish decides the outcome and cancels the others (see ARCHITECTURE.md):

- the upstream answer completes (`done`) or fails (`error` with its code);
- `DELETE /v1/streams/{id}` asks for cancellation (`error: cancelled`);
- no reader has been attached for `streams.disconnect_grace` (`error: cancelled`).

Whatever wins, exactly one terminal event is appended, and cancelling the
upstream contender closes the upstream HTTP response.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from gateway.config import Settings
from gateway.errors import Cancelled, GatewayError, Internal, OverCapacity, Shutdown
from gateway.payloads import ChatRequest
from gateway.store import StreamStore
from gateway.upstream import Finish, Upstream

__all__ = ["Relay"]

logger = logging.getLogger("gateway.relay")

Outcome = Finish | GatewayError


class Relay:
    def __init__(
        self, settings: Settings, store: StreamStore, upstream: Upstream, tasks: TaskGroup
    ) -> None:
        self._settings = settings
        self._store = store
        self._upstream = upstream
        self._tasks = tasks
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        """Generations running now."""
        return self._active

    async def start(self, chat: ChatRequest) -> str:
        """Create a stream and start generating into it; returns the new stream id."""
        if self._active >= self._settings.limits.max_concurrent_streams:
            raise OverCapacity(retry_after=1)
        stream_id = secrets.token_urlsafe(24)
        await self._store.create(stream_id)
        self._active += 1
        if self._active == 1:
            self._idle = anyio.Event()
        self._tasks.start_soon(self._generate, stream_id, chat, name=f"stream {stream_id}")
        return stream_id

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for running generations to end by themselves."""
        with anyio.move_on_after(timeout):
            await self._idle.wait()

    async def _generate(self, stream_id: str, chat: ChatRequest) -> None:
        started = anyio.current_time()
        tokens = 0

        async def on_token(text: str) -> None:
            nonlocal tokens
            tokens += 1
            await self._store.append(stream_id, "token", json.dumps({"text": text}))

        outcome: Outcome = Internal()
        try:
            outcome = await self._race(
                lambda: self._answer(chat, on_token),
                lambda: self._cancelled(stream_id),
                lambda: self._abandoned(stream_id),
            )
        except anyio.get_cancelled_exc_class():
            outcome = Shutdown()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(stream_id, outcome)
            self._active -= 1
            if not self._active:
                self._idle.set()
            logger.info(
                "stream %s ended: %s after %.3fs, %d tokens",
                stream_id,
                "done" if isinstance(outcome, Finish) else outcome.code,
                anyio.current_time() - started,
                tokens,
            )

    @staticmethod
    async def _race(*contenders: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """Run the contenders together; the first to return wins and cancels the rest."""
        winner: Outcome | None = None
        async with anyio.create_task_group() as race:

            async def run(contender: Callable[[], Awaitable[Outcome]]) -> None:
                nonlocal winner
                outcome = await contender()
                if winner is None:
                    winner = outcome
                    race.cancel_scope.cancel()

            for contender in contenders:
                race.start_soon(run, contender)
        assert winner is not None
        return winner

    async def _answer(
        self, chat: ChatRequest, on_token: Callable[[str], Awaitable[None]]
    ) -> Outcome:
        try:
            return await self._upstream.complete(chat, on_token)
        except GatewayError as exc:
            return exc
        except Exception:
            logger.exception("generation failed")
            return Internal()

    async def _cancelled(self, stream_id: str) -> Outcome:
        await self._store.wait_cancelled(stream_id)
        return Cancelled()

    async def _abandoned(self, stream_id: str) -> Outcome:
        grace = self._settings.streams.disconnect_grace
        await self._store.wait_abandoned(stream_id, grace)
        return Cancelled(f"No client read the stream for {grace:g} seconds.")

    async def _finish(self, stream_id: str, outcome: Outcome) -> None:
        if isinstance(outcome, Finish):
            data = json.dumps({"finish_reason": outcome.finish_reason, "usage": outcome.usage})
            event = "done"
        else:
            data, event = outcome.event_data(), "error"
        try:
            await self._store.append(stream_id, event, data)
        except Exception:
            logger.exception("cannot store the terminal event of stream %s", stream_id)
