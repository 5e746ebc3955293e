"""The generation race in-process: a scripted upstream and a store that fails on cue.

Every case runs in milliseconds, so each failure and cancellation point is
tried at every step: whatever happens, the stream ends with exactly one
terminal event, after every token that was stored, the slot is released once,
and nothing escapes `Generation.run` but the cancellation that drain sends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from gateway import Settings, load_settings
from gateway.deltas import Delta, OnDelta
from gateway.errors import StoreUnavailable, UpstreamTimeout
from gateway.generation import Generation
from gateway.limits import Slot
from gateway.metrics import Metrics
from gateway.stores import StoredEvent
from gateway.stores.memory import MemoryStore
from gateway.upstream import Finish

pytestmark = pytest.mark.anyio

TOKENS = [f"t{i} " for i in range(6)]
WATCHDOG = 5.0  # no case should come near it; it only keeps a broken case from hanging


def settings(**overrides: Any) -> Settings:
    return load_settings(os.devnull, environ={}, overrides=overrides)


class ScriptedStore(MemoryStore):
    """A memory store whose `append` number `fail_at` (1-based; every one from there
    on with `keep_failing`) raises, as a backend that went away would."""

    def __init__(self, fail_at: int | None = None, *, keep_failing: bool = False) -> None:
        super().__init__(settings())
        self.fail_at = fail_at
        self.keep_failing = keep_failing
        self.appends = 0

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        self.appends += 1
        if self.fail_at is not None and (
            self.appends == self.fail_at or (self.keep_failing and self.appends > self.fail_at)
        ):
            raise StoreUnavailable()
        await anyio.lowlevel.checkpoint()  # a real backend awaits here
        return await super().append(stream_id, event, data)

    def events(self, stream_id: str) -> list[StoredEvent]:
        return self._streams[stream_id].since(0)


class CountingSlot(Slot):
    def __init__(self) -> None:
        super().__init__()
        self.released = 0

    async def release(self) -> None:
        self.released += 1


def scripted(
    tokens: list[str] = TOKENS,
    *,
    gap: float = 0.0,
    then: Callable[[], Awaitable[Finish]] | None = None,
) -> Callable[[OnDelta], Awaitable[Finish]]:
    """An upstream answering `tokens`, `gap` seconds apart, then finishing (or `then`)."""

    async def answer(on_token: OnDelta) -> Finish:
        for token in tokens:
            await on_token(Delta("token", token))
            await anyio.sleep(gap)
        if then is not None:
            return await then()
        return Finish("stop", {"completion_tokens": len(tokens)})

    return answer


async def new_generation(
    store: ScriptedStore,
    answer: Callable[[OnDelta], Awaitable[Finish]],
    *,
    coalesce: float = 0.0,
    grace: float = 60.0,
) -> tuple[Generation, CountingSlot]:
    """A generation of the stream "s" (created here) that has not started yet."""
    await store.create("s")
    slot = CountingSlot()
    meter = Metrics(settings().metrics).stream_started()
    generation = Generation(
        "s", answer, store, meter=meter, slot=slot, disconnect_grace=grace, coalesce=coalesce
    )
    return generation, slot


async def generate(
    store: ScriptedStore,
    answer: Callable[[OnDelta], Awaitable[Finish]],
    *,
    coalesce: float = 0.0,
    grace: float = 60.0,
) -> tuple[list[StoredEvent], CountingSlot, str]:
    """Run one generation to its end; returns the stored events, the slot and the outcome."""
    generation, slot = await new_generation(store, answer, coalesce=coalesce, grace=grace)
    with anyio.fail_after(WATCHDOG):
        async with store.attach("s"):
            outcome = await generation.run()
    return store.events("s"), slot, generation.outcome_name(outcome)


def check_stream(events: list[StoredEvent]) -> tuple[str, str]:
    """Ids 1..n without gap, one terminal event and it is last; returns its event name
    and the text before it."""
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert [e.terminal for e in events] == [False] * (len(events) - 1) + [True]
    text = "".join(json.loads(e.data)["text"] for e in events[:-1])
    return events[-1].event, text


async def test_answer_ends_done_with_every_token() -> None:
    events, slot, outcome = await generate(ScriptedStore(), scripted())
    assert check_stream(events) == ("done", "".join(TOKENS))
    assert json.loads(events[-1].data) == {
        "finish_reason": "stop",
        "usage": {"completion_tokens": len(TOKENS)},
    }
    assert (slot.released, outcome) == (1, "done")


async def test_upstream_error_ends_with_its_code() -> None:
    async def fail() -> Finish:
        raise UpstreamTimeout()

    events, slot, outcome = await generate(ScriptedStore(), scripted(then=fail))
    assert check_stream(events) == ("error", "".join(TOKENS))
    assert json.loads(events[-1].data)["code"] == "upstream_timeout"
    assert (slot.released, outcome) == (1, "upstream_timeout")


async def test_a_bug_in_the_upstream_ends_internal_not_an_exception() -> None:
    async def bug() -> Finish:
        raise KeyError("oops")

    events, slot, outcome = await generate(ScriptedStore(), scripted(then=bug))
    assert check_stream(events)[0] == "error"
    assert json.loads(events[-1].data)["code"] == "internal"
    assert (slot.released, outcome) == (1, "internal")


@pytest.mark.parametrize("fail_at", range(1, len(TOKENS) + 2))
@pytest.mark.parametrize("keep_failing", [False, True])
async def test_store_failure_at_any_append(fail_at: int, keep_failing: bool) -> None:
    """A failed token append ends the stream with `store_unavailable` after the tokens
    stored before it; a failed terminal append leaves no exception and frees the slot."""
    store = ScriptedStore(fail_at, keep_failing=keep_failing)
    events, slot, outcome = await generate(store, scripted())
    assert slot.released == 1
    if fail_at == len(TOKENS) + 1:  # the terminal event itself failed
        assert [e.event for e in events] == ["token"] * len(TOKENS)
        assert outcome == "store_unavailable"
        return
    if keep_failing:  # nothing more could be stored, not even the terminal event
        assert len(events) == fail_at - 1
        assert outcome == "store_unavailable"
        return
    assert check_stream(events) == ("error", "".join(TOKENS[: fail_at - 1]))
    assert json.loads(events[-1].data)["code"] == "store_unavailable"
    assert outcome == "store_unavailable"


@pytest.mark.parametrize("flush", ["timed", "final"])
async def test_coalescer_flush_failure_stays_inside_the_generation(flush: str) -> None:
    """With coalescing, a store error in a flush ends this stream with
    `store_unavailable` (the timed flush runs beside the upstream, the final one
    after it); it does not escape into the task group that runs other streams."""
    store = ScriptedStore(fail_at=2)  # 1: the first token, never held; 2: the flush

    async def after_b() -> Finish:
        if flush == "timed":
            await anyio.sleep(1)  # the window (5 ms) ends long before
        return Finish("stop", None)

    events, slot, outcome = await generate(
        store, scripted(["a", "b"], then=after_b), coalesce=0.005
    )
    assert check_stream(events) == ("error", "a")
    assert json.loads(events[-1].data)["code"] == "store_unavailable"
    assert (slot.released, outcome) == (1, "store_unavailable")


async def test_coalesced_text_is_exact() -> None:
    events, slot, outcome = await generate(
        ScriptedStore(), scripted(TOKENS * 5, gap=0.001), coalesce=0.01
    )
    assert check_stream(events) == ("done", "".join(TOKENS * 5))
    assert len(events) < len(TOKENS * 5)
    assert (slot.released, outcome) == (1, "done")


async def test_cancel_wins_and_closes_the_upstream() -> None:
    store = ScriptedStore()
    closed = anyio.Event()

    async def forever(on_token: OnDelta) -> Finish:
        try:
            await on_token(Delta("token", "a"))
            await store.cancel("s")
            await anyio.sleep_forever()
        finally:
            closed.set()
        raise AssertionError("unreachable")

    events, slot, outcome = await generate(store, forever)
    assert check_stream(events) == ("error", "a")
    assert json.loads(events[-1].data)["code"] == "cancelled"
    assert closed.is_set()
    assert (slot.released, outcome) == (1, "cancelled")


class StubbornStore(ScriptedStore):
    """Its cancellation wait swallows the first cancellation, as some client libraries
    do inside a call (with one plain cancellation, a Redis store wait did not end)."""

    async def wait_cancelled(self, stream_id: str) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            pass
        await anyio.sleep_forever()


@pytest.mark.timeout(2 * WATCHDOG)  # a race that waits for a loser forever hangs, shielded
async def test_a_loser_that_swallows_a_cancellation_still_ends() -> None:
    events, slot, outcome = await generate(StubbornStore(), scripted())
    assert check_stream(events) == ("done", "".join(TOKENS))
    assert (slot.released, outcome) == (1, "done")


class Fatal(BaseException):
    """Not an `Exception`: no contender may turn it into an outcome."""


async def test_a_base_exception_leaves_the_race_and_the_stream_still_ends() -> None:
    store = ScriptedStore()

    async def fatal(on_token: OnDelta) -> Finish:
        raise Fatal()

    generation, slot = await new_generation(store, fatal)
    with anyio.fail_after(WATCHDOG), pytest.raises(Fatal):
        async with store.attach("s"):
            await generation.run()
    assert check_stream(store.events("s"))[0] == "error"
    assert slot.released == 1


async def test_no_reader_for_the_grace_ends_client_gone() -> None:
    store = ScriptedStore()
    generation, slot = await new_generation(store, scripted(gap=10), grace=0.01)
    with anyio.fail_after(WATCHDOG):
        outcome = await generation.run()  # nobody ever attaches
    assert generation.outcome_name(outcome) == "client_gone"
    assert check_stream(store.events("s"))[0] == "error"
    assert slot.released == 1


@pytest.mark.parametrize("steps", range(0, 2 * len(TOKENS) + 2))
@pytest.mark.parametrize("coalesce", [0.0, 0.005])
async def test_cancelled_at_any_point_ends_with_shutdown(steps: int, coalesce: float) -> None:
    """Drain cuts a generation after `steps` scheduler turns: whatever it was doing,
    the stream ends with exactly one terminal event and the slot comes back."""
    store = ScriptedStore()
    generation, slot = await new_generation(store, scripted(gap=0.001), coalesce=coalesce)
    with anyio.fail_after(WATCHDOG):
        async with store.attach("s"), anyio.create_task_group() as group:
            group.start_soon(generation.run)
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
            group.cancel_scope.cancel()
    event, text = check_stream(store.events("s"))
    assert slot.released == 1
    assert "".join(TOKENS).startswith(text)
    if event == "error":
        assert json.loads(store.events("s")[-1].data)["code"] == "shutdown"
