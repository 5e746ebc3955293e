"""`Coalescer`: the deltas of one window go out as fewer events, the text exact and in
order, the first delta at once."""

from __future__ import annotations

import anyio
import pytest

from gateway.coalesce import Coalescer
from gateway.deltas import Delta

pytestmark = pytest.mark.anyio

WATCHDOG = 5.0


class Emitted(list[Delta]):
    async def __call__(self, delta: Delta) -> None:
        self.append(delta)


async def test_the_first_delta_goes_out_at_once_and_the_rest_wait_for_the_window() -> None:
    emitted = Emitted()
    coalescer = Coalescer(emitted, window=3600)
    for text in ("a", "b", "c"):
        await coalescer.add(Delta("token", text))
    assert emitted == [Delta("token", "a")]
    await coalescer.flush()
    assert emitted == [Delta("token", "a"), Delta("token", "bc")]
    await coalescer.flush()  # nothing left: nothing more
    assert len(emitted) == 2


async def test_only_consecutive_deltas_of_one_kind_and_one_tool_call_are_joined() -> None:
    emitted = Emitted()
    coalescer = Coalescer(emitted, window=3600)
    sent = [
        Delta("token", "first"),
        Delta("reasoning", "r1"),
        Delta("reasoning", "r2"),
        Delta("token", "t1"),
        Delta("token", "t2"),
        Delta("tool_call", "", 0, "call_a", "f"),
        Delta("tool_call", '{"x"', 0),
        Delta("tool_call", ": 1}", 0),
        Delta("tool_call", "{}", 1, "call_b", "g"),
        Delta("tool_call", "", 1),
        Delta("token", "t3"),
    ]
    for delta in sent:
        await coalescer.add(delta)
    await coalescer.flush()
    assert emitted == [
        Delta("token", "first"),
        Delta("reasoning", "r1r2"),
        Delta("token", "t1t2"),
        Delta("tool_call", '{"x": 1}', 0, "call_a", "f"),
        Delta("tool_call", "{}", 1, "call_b", "g"),
        Delta("token", "t3"),
    ]
    assert "".join(d.text for d in emitted if d.kind == "token") == "firstt1t2t3"


async def test_run_flushes_when_each_window_ends() -> None:
    emitted = Emitted()
    coalescer = Coalescer(emitted, window=0.05)
    with anyio.fail_after(WATCHDOG):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(coalescer.run)
            await coalescer.add(Delta("token", "a"))
            await coalescer.add(Delta("token", "b"))
            await coalescer.add(Delta("token", "c"))
            while len(emitted) < 2:
                await anyio.sleep(0.01)
            await coalescer.add(Delta("token", "d"))  # a new window
            while len(emitted) < 3:
                await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()
    assert emitted == [Delta("token", "a"), Delta("token", "bc"), Delta("token", "d")]
