"""One generation: a supervised race whose every ending writes exactly one terminal event.

A generation is a race of contenders, a task each; the first to finish
decides the outcome and cancels the others (see ARCHITECTURE.md):

- the upstream answer completes (`done`) or fails (`error` with its code);
- `DELETE /v1/streams/{id}` asks for cancellation (`error: cancelled`);
- no reader has been attached for `streams.disconnect_grace` (`error: cancelled`);
- with `sse.coalesce_ms` set, the `Coalescer` flushing buffered deltas (it only
  finishes by failing, e.g. when the store fails under it).

With a store whose appends wait for a round trip (Redis), deltas go to it through a
`WriteBehind`: the upstream is read on while an append is on its way, and the
deltas that came meanwhile go out in the next one (the same events, fewer calls).

Every contender ends in an outcome: an exception inside one (a store that
fails mid-append, a bug) becomes that contender's outcome, never an exception
that leaves the generation. `Generation.run` then, shielded from cancellation,
flushes what is buffered, releases the caller's slot and writes the terminal
event, each step on its own so that one failing cannot skip the next.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from gateway import logs
from gateway.coalesce import Coalescer
from gateway.deltas import Delta, OnDelta
from gateway.errors import (
    Cancelled,
    GatewayError,
    GenerationLost,
    Internal,
    Shutdown,
    StoreUnavailable,
)
from gateway.limits import Slot
from gateway.metrics import StreamMeter
from gateway.stores import StreamStore
from gateway.upstream import Finish
from gateway.write_behind import WriteBehind

__all__ = ["Answer", "Generation", "Outcome", "outcome_name"]

logger = logging.getLogger("gateway.generation")

#: Deltas a generation keeps while its store's append is on its way; beyond them the
#: upstream waits. A write takes at most one more, so a batch fits a Redis follower's
#: window (64) and reaches local readers without a read of Redis.
WRITE_BEHIND = 32

Outcome = Finish | GatewayError
#: Streams the answer, handing each delta (text, reasoning, tool call) on; returns
#: how it finished.
Answer = Callable[[OnDelta], Awaitable[Finish]]


class Generation:
    """Generates one stream into `store`; `run` it in a task the gateway owns."""

    def __init__(
        self,
        stream_id: str,
        answer: Answer,
        store: StreamStore,
        *,
        meter: StreamMeter,
        slot: Slot,
        disconnect_grace: float,
        coalesce: float = 0.0,
        log: dict[str, Any] | None = None,
        log_content: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        """`coalesce` is the window in seconds (0: every delta is its own event);
        `log` adds fields to the finished-stream log line (who asked, for which model);
        `log_content`, when content logging is on, turns the answer's text into more."""
        self.stream_id = stream_id
        self._answer = answer
        self._store = store
        self._meter = meter
        self._slot = slot
        self._grace = disconnect_grace
        self._writer = WriteBehind(self._append_many, WRITE_BEHIND) if store.appends_wait else None
        self._emit = self._append if self._writer is None else self._writer.add
        self._coalescer = Coalescer(self._emit, coalesce) if coalesce else None
        self._log = log or {}
        self._log_content = log_content
        self._text: list[str] | None = [] if log_content else None
        #: The outcome of `_abandoned`: `cancelled` to clients, `client_gone` in metrics.
        self._client_gone = Cancelled(
            f"No client read the stream for {disconnect_grace:g} seconds."
        )

    async def run(self) -> Outcome:
        """Race to an outcome, then end the stream; returns the outcome.

        Only cancellation (drain cutting the generation) leaves by exception,
        and then too the stream ends, with `error: shutdown`.
        """
        contenders: list[Callable[[], Awaitable[Outcome]]] = [
            self._upstream,
            self._cancelled,
            self._abandoned,
        ]
        if self._coalescer is not None:
            contenders.append(self._coalescer.run)
        outcome: Outcome = Internal()
        try:
            outcome = await race(*contenders)
        except anyio.get_cancelled_exc_class():
            outcome = Shutdown()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                outcome = await self._end(outcome)
        return outcome

    # -- the contenders ----------------------------------------------------------------

    async def _upstream(self) -> Outcome:
        return await self._answer(self._on_delta)

    async def _on_delta(self, delta: Delta) -> None:
        text = delta.kind == "token"
        self._meter.token(content=text)
        if self._text is not None and text:
            self._text.append(delta.text)
        if self._coalescer is not None:
            await self._coalescer.add(delta)
        else:
            await self._emit(delta)

    async def _append(self, delta: Delta) -> None:
        await self._store.append(self.stream_id, delta.kind, delta.data)

    async def _append_many(self, deltas: Sequence[Delta]) -> None:
        await self._store.append_many(self.stream_id, [(d.kind, d.data) for d in deltas])

    async def _cancelled(self) -> Outcome:
        await self._store.wait_cancelled(self.stream_id)
        return Cancelled()

    async def _abandoned(self) -> Outcome:
        await self._store.wait_abandoned(self.stream_id, self._grace)
        return self._client_gone

    # -- the end -----------------------------------------------------------------------

    async def _end(self, outcome: Outcome) -> Outcome:
        """Flush, free the slot, write the terminal event, record: each step is tried
        whatever the one before did. Returns the outcome the stream ended with."""
        if not isinstance(outcome, StoreUnavailable):  # else nothing more can be stored
            try:
                await self._flush()
            except Exception as exc:  # text is missing: the answer cannot end `done`
                outcome = _as_outcome(exc)
        # Free before readers see the end, so a client that saw it may start anew.
        await self._slot.release()
        if not isinstance(outcome, GenerationLost):  # else the stream was ended for us
            try:
                await self._store.append(self.stream_id, *_terminal(outcome))
            except Exception as exc:
                # Readers still end: a store that lost the writer ends the stream
                # with `generation_lost` (see the Redis store's lease).
                logger.warning(
                    "stream %s: cannot store the terminal event: %r", self.stream_id, exc
                )
                outcome = _as_outcome(exc)
        self._record(outcome)
        return outcome

    async def _flush(self) -> None:
        """Store every delta handed on: the coalescer's, then the writer's."""
        if self._coalescer is not None:
            await self._coalescer.flush()
        if self._writer is not None:
            await self._writer.flush()

    def _record(self, outcome: Outcome) -> None:
        name = self.outcome_name(outcome)
        meter = self._meter
        meter.finish(name)
        extra: dict[str, Any] = {
            "outcome": name,
            **self._log,
            "upstream": outcome.upstream if isinstance(outcome, Finish) else None,
            "usage": meter.usage(outcome.usage if isinstance(outcome, Finish) else None),
            "duration": round(meter.duration, 6),
            "tokens": meter.tokens,
            "ttft": None if meter.first_token is None else round(meter.first_token, 6),
        }
        if self._log_content is not None and self._text is not None:
            extra.update(self._log_content("".join(self._text)))
        logs.stream_id.set(self.stream_id)
        logger.info("stream finished", extra=extra)

    def outcome_name(self, outcome: Outcome) -> str:
        """`done`, `client_gone` or the error code (`cancelled` for a DELETE)."""
        return outcome_name(None if outcome is self._client_gone else outcome)


def outcome_name(outcome: Outcome | None) -> str:
    """An outcome as logs and metrics name it: `done`, the error code, or
    `client_gone` (None) when no client was left to answer."""
    if outcome is None:
        return "client_gone"
    return "done" if isinstance(outcome, Finish) else outcome.code


async def race(*contenders: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """Run the contenders together; the first to finish wins and cancels the rest.

    A contender that raises finishes with its exception as its outcome. The first
    contender runs in the caller's task, the others in plain asyncio tasks, each
    in a cancel scope: not an anyio task group, whose tasks and error handling
    cost memory and CPU per stream that the race has no use for (no contender
    raises). The losers' scopes are cancelled (an anyio scope keeps cancelling
    until the contender has left it, whatever it catches: redis-py returns the
    reply of a command whose task was cancelled while it was on its way, and
    that cancellation is lost, see redis/redis-py#2028) and their tasks
    awaited, shielded, before the race returns or passes a drain's cancellation on.
    """
    loop = asyncio.get_running_loop()
    first: asyncio.Future[Outcome] = loop.create_future()

    async def run(contender: Callable[[], Awaitable[Outcome]], scope: anyio.CancelScope) -> None:
        with scope:
            try:
                outcome = await contender()
            except Exception as exc:
                outcome = _as_outcome(exc)
            except BaseException as exc:  # not an outcome: it leaves the race
                if not (first.done() or isinstance(exc, anyio.get_cancelled_exc_class())):
                    first.set_exception(exc)
                raise
            if not first.done():
                first.set_result(outcome)

    scopes = [anyio.CancelScope() for _ in contenders]

    def stop(_: object = None) -> None:
        for scope in scopes:
            scope.cancel()

    here, *others = zip(contenders, scopes, strict=True)
    tasks = [loop.create_task(run(*pair)) for pair in others]
    # Stopped from a callback, outside any task: anyio's `cancel` called in a task
    # formats that task's repr into its reason, tens of µs per stream.
    first.add_done_callback(stop)
    try:
        await run(*here)
        return await first
    finally:
        if not first.done():  # drain's cancellation: the race is stopped from outside
            stop()
        with anyio.CancelScope(shield=True):
            await asyncio.wait(tasks)
        for task in tasks:  # a BaseException was passed on through `first`
            if not task.cancelled():
                task.exception()


def _as_outcome(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    logger.error("generation failed", exc_info=exc)
    return Internal()


def _terminal(outcome: Outcome) -> tuple[str, str]:
    """The terminal event's name and JSON data."""
    if isinstance(outcome, Finish):
        data: dict[str, Any] = {"finish_reason": outcome.finish_reason, "usage": outcome.usage}
        if outcome.tool_calls:
            data["tool_calls"] = list(outcome.tool_calls)
        return "done", json.dumps(data)
    return "error", outcome.event_data()
