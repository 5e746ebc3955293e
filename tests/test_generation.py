"""The generation race in-process: a scripted upstream and a store that fails on cue.

Every case runs in milliseconds, so each failure and cancellation point is
tried at every step: whatever happens, the stream ends with exactly one
terminal event, after every token that was stored, the slot is released once,
and nothing escapes `Generation.run` but the cancellation that drain sends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest

from gateway import Settings, load_settings
from gateway.deltas import Delta, OnDelta
from gateway.errors import StoreUnavailable, UpstreamTimeout
from gateway.generation import WRITE_BEHIND, Generation
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
        await self.call()
        return await super().append(stream_id, event, data)

    async def call(self) -> None:
        """One call of the backend: counted, failing on cue."""
        self.appends += 1
        if self.fail_at is not None and (
            self.appends == self.fail_at or (self.keep_failing and self.appends > self.fail_at)
        ):
            raise StoreUnavailable()
        await anyio.lowlevel.checkpoint()  # a real backend awaits here

    def events(self, stream_id: str) -> list[StoredEvent]:
        return self._streams[stream_id].since(0)


class RoundTripStore(ScriptedStore):
    """A store whose appends wait for a reply, as Redis's do: the generation hands it
    the deltas that came meanwhile together (`append_many`, one call each, failing on
    cue like `append`); while `gate` is given, each of those calls waits for it."""

    appends_wait = True

    def __init__(
        self,
        fail_at: int | None = None,
        *,
        keep_failing: bool = False,
        gate: anyio.Event | None = None,
    ) -> None:
        super().__init__(fail_at, keep_failing=keep_failing)
        self.gate = gate
        #: How many events each `append_many` call was given.
        self.batches: list[int] = []
        #: Calls waiting for `gate`.
        self.held = 0

    async def append_many(
        self, stream_id: str, events: Sequence[tuple[str, str]]
    ) -> list[StoredEvent]:
        if self.gate is not None:
            self.held += 1
            await self.gate.wait()
            self.held -= 1
        await self.call()
        self.batches.append(len(events))
        return [await MemoryStore.append(self, stream_id, *event) for event in events]


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
@pytest.mark.parametrize("store_class", [ScriptedStore, RoundTripStore])
async def test_cancelled_at_any_point_ends_with_shutdown(
    steps: int, coalesce: float, store_class: type[ScriptedStore]
) -> None:
    """Drain cuts a generation after `steps` scheduler turns: whatever it was doing
    (with a store whose appends wait, a write may be on its way), the stream ends with
    exactly one terminal event and the slot comes back."""
    store = store_class()
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


# -- a store whose appends wait: the deltas that come meanwhile go out together ----------

MIXED = [
    Delta("reasoning", "think "),
    Delta("reasoning", "on"),
    Delta("token", "a "),
    Delta("token", "caf\u00e9\n"),
    Delta("tool_call", "", 0, "call_1", "f"),
    Delta("tool_call", '{"x"', 0),
    Delta("tool_call", ": 1}", 0),
    Delta("token", "b"),
] * 6  # more than WRITE_BEHIND: the upstream is held once too


def answering(deltas: list[Delta]) -> Callable[[OnDelta], Awaitable[Finish]]:
    """An upstream handing `deltas` on as fast as it is let, then finishing."""

    async def answer(on_delta: OnDelta) -> Finish:
        for delta in deltas:
            await on_delta(delta)
        return Finish("stop", None)

    return answer


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (the callers' `fail_after` bounds the wait)."""
    while not condition():
        await anyio.sleep(0.001)


@pytest.mark.parametrize("coalesce", [0.0, 0.005])
async def test_write_behind_stores_the_events_of_an_append_each(coalesce: float) -> None:
    """The same events (ids, names, data, order) as a store whose appends never wait,
    in fewer calls: one per round trip, not one per delta."""
    one_each, written_behind = ScriptedStore(), RoundTripStore()
    expected, _, _ = await generate(one_each, answering(MIXED), coalesce=coalesce)
    events, slot, outcome = await generate(written_behind, answering(MIXED), coalesce=coalesce)
    assert [(e.id, e.frame) for e in events] == [(e.id, e.frame) for e in expected]
    assert sum(written_behind.batches) == len(events) - 1
    assert len(written_behind.batches) < len(events) - 1
    assert (slot.released, outcome) == (1, "done")


@pytest.mark.parametrize("fail_at", range(1, len(TOKENS) + 1))
async def test_a_failed_write_ends_the_stream_at_the_next_delta(fail_at: int) -> None:
    """A write that fails is raised by the next delta (the upstream stops there) or,
    after the last one, by the end's flush: `error: store_unavailable` after the
    tokens stored before it, exactly one terminal event."""
    store = RoundTripStore(fail_at)
    handed: list[str] = []

    async def answer(on_delta: OnDelta) -> Finish:
        for token in TOKENS:  # each written alone: the next waits for the write's end
            await on_delta(Delta("token", token))
            handed.append(token)
            await until(lambda: len(store.events("s")) == len(handed) or store.appends >= fail_at)
        return Finish("stop", None)

    events, slot, outcome = await generate(store, answer)
    assert handed == TOKENS[:fail_at]
    assert check_stream(events) == ("error", "".join(TOKENS[: fail_at - 1]))
    assert json.loads(events[-1].data)["code"] == "store_unavailable"
    assert (slot.released, outcome) == (1, "store_unavailable")


async def test_write_behind_holds_the_upstream_at_its_bound() -> None:
    """While a write is on its way the upstream is read on, until more than
    WRITE_BEHIND deltas wait; then it waits for the write, and nothing is lost."""
    gate = anyio.Event()
    store = RoundTripStore(gate=gate)
    tokens = [f"{i} " for i in range(3 * WRITE_BEHIND)]
    handed = 0

    async def answer(on_delta: OnDelta) -> Finish:
        nonlocal handed
        for token in tokens:
            await on_delta(Delta("token", token))
            handed += 1
            await anyio.lowlevel.checkpoint()  # an upstream reads its socket between chunks
        return Finish("stop", None)

    generation, slot = await new_generation(store, answer)
    with anyio.fail_after(WATCHDOG):
        async with store.attach("s"), anyio.create_task_group() as group:
            group.start_soon(generation.run)
            await until(lambda: store.held == 1 and handed > 1)
            for _ in range(2 * WRITE_BEHIND):  # many chances to run further
                await anyio.lowlevel.checkpoint()
            assert 1 < handed <= WRITE_BEHIND + 1
            gate.set()
    assert check_stream(store.events("s")) == ("done", "".join(tokens))
    assert max(store.batches) <= WRITE_BEHIND + 1
    assert slot.released == 1


@pytest.mark.parametrize("how", ["delete", "drain"])
async def test_a_stream_cut_while_a_write_is_on_its_way_keeps_every_delta_handed_on(
    how: str,
) -> None:
    """Cancelled (DELETE) or cut by drain while a write is held: the upstream closes
    at once, and the end stores what was in flight and what waited, then the one
    terminal event."""
    gate = anyio.Event()
    store = RoundTripStore(gate=gate)
    handed, closed = anyio.Event(), anyio.Event()

    async def answer(on_delta: OnDelta) -> Finish:
        try:
            for i, token in enumerate(TOKENS):
                await on_delta(Delta("token", token))
                if i == 0:  # the first is written alone, the rest wait behind it
                    await until(lambda: store.held == 1)
            handed.set()
            await anyio.sleep_forever()
        finally:
            closed.set()
        raise AssertionError("unreachable")

    generation, slot = await new_generation(store, answer)
    cut = anyio.CancelScope()

    async def run() -> None:
        with cut:
            await generation.run()

    with anyio.fail_after(WATCHDOG):
        async with store.attach("s"), anyio.create_task_group() as group:
            group.start_soon(run)
            await handed.wait()
            if how == "delete":
                await store.cancel("s")
            else:
                cut.cancel()
            await closed.wait()
            gate.set()
    assert check_stream(store.events("s")) == ("error", "".join(TOKENS))
    code = json.loads(store.events("s")[-1].data)["code"]
    assert code == ("cancelled" if how == "delete" else "shutdown")
    assert store.batches == [1, len(TOKENS) - 1]
    assert slot.released == 1
