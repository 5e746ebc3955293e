"""Generations: each runs in a task the gateway owns, never in a request.

A generation is a race of three contenders in one task group; the first to
finish decides the outcome and cancels the others (see ARCHITECTURE.md):

- the upstream answer completes (`done`) or fails (`error` with its code);
- `DELETE /v1/streams/{id}` asks for cancellation (`error: cancelled`);
- no reader has been attached for `streams.disconnect_grace` (`error: cancelled`).

With `sse.coalesce_ms` set, a fourth task joins the group: the `Coalescer`
that flushes buffered deltas; it never wins.

Whatever wins, exactly one terminal event is appended, and cancelling the
upstream contender closes the upstream HTTP response.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup
from sse_starlette.sse import AppStatus

from gateway import logs
from gateway.coalesce import Coalescer
from gateway.config import Settings
from gateway.errors import Cancelled, GatewayError, Internal, OverCapacity, Shutdown
from gateway.limits import Slot
from gateway.metrics import Metrics, StreamMeter
from gateway.payloads import ChatRequest
from gateway.routing import Router
from gateway.store import StreamStore
from gateway.upstream import Delta, Finish, OnDelta

__all__ = ["Relay"]

logger = logging.getLogger("gateway.relay")

Outcome = Finish | GatewayError


class Relay:
    def __init__(
        self,
        settings: Settings,
        store: StreamStore,
        upstream: Router,
        tasks: TaskGroup,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        grace = settings.streams.disconnect_grace
        #: What `_abandoned` returns: `cancelled` to clients, `client_gone` in metrics and logs.
        self._client_gone = Cancelled(f"No client read the stream for {grace:g} seconds.")
        self._settings = settings
        self._store = store
        self._upstream = upstream
        self._tasks = tasks
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._draining = False
        #: The callers' concurrency slots of running generations, by stream id.
        self._slots: dict[str, Slot] = {}
        #: One cancel scope per running generation, for `drain` to cut.
        self._running: set[anyio.CancelScope] = set()

    @property
    def draining(self) -> bool:
        """No new stream is accepted: `drain` was called, or the server is exiting
        (sse-starlette's `AppStatus` flips in the signal handler, before drain starts)."""
        return self._draining or AppStatus.should_exit

    @property
    def active(self) -> int:
        """Generations running now."""
        return self._active

    async def start(
        self, chat: ChatRequest, *, stream_id: str | None = None, slot: Slot | None = None
    ) -> str:
        """Create a stream and start generating into it; returns the new stream id.

        `stream_id` is a random one unless given; `slot` (the caller's concurrency
        slot, see `limits`) is released when the generation ends, just before its
        terminal event. If this raises, the slot is still the caller's to release.
        """
        self._admit()
        self._upstream.check(chat.model)
        stream_id = stream_id or secrets.token_urlsafe(24)
        await self._store.create(stream_id)
        if slot is not None:
            self._slots[stream_id] = slot
        meter = self._begin()
        logs.stream_id.set(stream_id)  # for the request's own log lines
        request_id = logs.request_id.get()
        self._tasks.start_soon(
            self._run, stream_id, chat, meter, request_id, name=f"stream {stream_id}"
        )
        return stream_id

    @contextmanager
    def generation(self) -> Iterator[StreamMeter]:
        """A generation that runs in the caller's task instead (the OpenAI front door):
        refused and counted like the others, and cut by `drain` (it then raises
        cancellation). The caller finishes the meter."""
        self._admit()
        meter = self._begin()
        try:
            with self._cancellable():
                yield meter
        finally:
            self._end()

    @contextmanager
    def _cancellable(self) -> Iterator[None]:
        """A scope `drain` can cut."""
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                yield
            finally:
                self._running.discard(scope)

    def _admit(self) -> None:
        if self.draining:
            raise Shutdown(retry_after=1)
        if self._active >= self._settings.limits.max_concurrent_streams:
            raise OverCapacity(retry_after=1)

    def _begin(self) -> StreamMeter:
        self._active += 1
        if self._active == 1:
            self._idle = anyio.Event()
        return self._metrics.stream_started()

    def _end(self) -> None:
        self._active -= 1
        if not self._active:
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Refuse new streams, wait up to `timeout` seconds for running generations to
        end by themselves, then cut the rest (they end with `error: shutdown`)."""
        self._draining = True
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        for scope in self._running:
            scope.cancel()
        await self._idle.wait()

    async def _run(
        self, stream_id: str, chat: ChatRequest, meter: StreamMeter, request_id: str | None
    ) -> None:
        # The task group is the app's, not the request's: carry the log context over.
        logs.request_id.set(request_id)
        logs.stream_id.set(stream_id)
        with self._cancellable():
            await self._generate(stream_id, chat, meter)

    async def _generate(self, stream_id: str, chat: ChatRequest, meter: StreamMeter) -> None:
        async def append(delta: Delta) -> None:
            await self._store.append(stream_id, delta.kind, delta.data)

        window = self._settings.sse.coalesce_ms / 1000
        coalescer = Coalescer(append, window) if window else None

        completion: list[str] | None = [] if self._settings.logging.content else None

        async def on_delta(delta: Delta) -> None:
            meter.token(content=delta.kind == "token")
            if completion is not None and delta.kind == "token":
                completion.append(delta.text)
            await (coalescer.add(delta) if coalescer else append(delta))

        contenders: list[Callable[[], Awaitable[Outcome]]] = [
            lambda: self._answer(chat, on_delta),
            lambda: self._cancelled(stream_id),
            lambda: self._abandoned(stream_id),
        ]
        if coalescer:
            contenders.append(coalescer.run)  # never wins: it flushes until cancelled
        outcome: Outcome = Internal()
        try:
            outcome = await self._race(*contenders)
        except anyio.get_cancelled_exc_class():
            outcome = Shutdown()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if coalescer:
                    await coalescer.flush()
                slot = self._slots.pop(stream_id, None)
                if slot is not None:  # free before readers see the end, so they may start anew
                    await slot.release()
                await self._finish(stream_id, outcome)
            self._end()
            outcome_name = self._outcome_name(outcome)
            meter.finish(outcome_name)
            usage = meter.usage(outcome.usage if isinstance(outcome, Finish) else None)
            logger.info(
                "stream finished",
                extra={
                    "outcome": outcome_name,
                    "model": chat.model,
                    "usage": usage,
                    "duration": round(meter.duration, 6),
                    "tokens": meter.tokens,
                    "ttft": None if meter.first_token is None else round(meter.first_token, 6),
                    **_content(chat, completion),
                },
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

    async def _answer(self, chat: ChatRequest, on_delta: OnDelta) -> Outcome:
        try:
            return await self._upstream.complete(chat, on_delta)
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
        return self._client_gone

    def _outcome_name(self, outcome: Outcome) -> str:
        """`done`, `client_gone` or the error code (`cancelled` for a DELETE)."""
        if isinstance(outcome, Finish):
            return "done"
        return "client_gone" if outcome is self._client_gone else outcome.code

    async def _finish(self, stream_id: str, outcome: Outcome) -> None:
        if isinstance(outcome, Finish):
            done: dict[str, Any] = {"finish_reason": outcome.finish_reason, "usage": outcome.usage}
            if outcome.tool_calls:
                done["tool_calls"] = outcome.tool_calls
            data, event = json.dumps(done), "done"
        else:
            data, event = outcome.event_data(), "error"
        try:
            await self._store.append(stream_id, event, data)
        except Exception:
            logger.exception("cannot store the terminal event of stream %s", stream_id)


def _content(chat: ChatRequest, completion: list[str] | None) -> dict[str, str]:
    """The prompt and the answer, for the log line, when `logging.content` is on."""
    if completion is None:
        return {}
    prompt = json.dumps([message.model_dump() for message in chat.messages], ensure_ascii=False)
    return {"prompt": prompt, "completion": "".join(completion)}
