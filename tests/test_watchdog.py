"""gateway/watchdog.py: the upstream's deadlines, kept by the clock.

Each test runs the watched work under a bound far above the limit it checks,
so a watchdog that never fires fails the test instead of hanging it.
"""

from __future__ import annotations

import anyio
import pytest

from gateway.watchdog import Watchdog

pytestmark = pytest.mark.anyio

BOUND = 10.0  # seconds: only reached when the watchdog failed to fire


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the watchdog uses the asyncio loop's timers


async def watched(work, *, first_token=BOUND, idle=BOUND, total=BOUND):
    """Run `work(watchdog)`; return whether the watchdog cut it and after how long."""
    started = anyio.current_time()
    with anyio.CancelScope() as scope:
        watchdog = Watchdog(scope, first_token, idle, started + total)
        try:
            await work(watchdog)
        finally:
            watchdog.stop()
    return scope.cancelled_caught, anyio.current_time() - started


async def silent(watchdog: Watchdog) -> None:
    await anyio.sleep(BOUND)


async def test_no_first_output_in_time():
    cut, elapsed = await watched(silent, first_token=0.05)
    assert cut
    assert 0.05 <= elapsed < BOUND


async def test_outputs_within_idle_keep_it_alive_and_a_silence_ends_it():
    outputs = 0

    async def steady_then_silent(watchdog: Watchdog) -> None:
        nonlocal outputs
        for _ in range(25):
            watchdog.touch()
            outputs += 1
            await anyio.sleep(0.04)
        await anyio.sleep(BOUND)

    cut, elapsed = await watched(steady_then_silent, first_token=0.5, idle=0.5)
    assert cut
    assert outputs == 25  # 1 s in all: longer than either limit
    assert elapsed < BOUND


async def test_the_total_deadline_holds_however_steady_the_outputs():
    async def steady(watchdog: Watchdog) -> None:
        while True:
            watchdog.touch()
            await anyio.sleep(0.01)

    cut, elapsed = await watched(steady, idle=1, total=0.2)
    assert cut
    assert 0.2 <= elapsed < BOUND


async def test_shorten_gives_at_most_that_much_more():
    async def shortened(watchdog: Watchdog) -> None:
        watchdog.touch()
        watchdog.shorten(0.05)
        await anyio.sleep(BOUND)

    cut, elapsed = await watched(shortened)
    assert cut
    assert elapsed < BOUND


async def test_stopped_it_never_fires():
    async def stop_then_wait(watchdog: Watchdog) -> None:
        watchdog.stop()
        await anyio.sleep(0.2)

    cut, _ = await watched(stop_then_wait, first_token=0.05, idle=0.05)
    assert not cut


async def test_after_the_first_output_idle_replaces_a_longer_first_token_limit():
    async def one_output(watchdog: Watchdog) -> None:
        watchdog.touch()
        await anyio.sleep(BOUND)

    cut, elapsed = await watched(one_output, first_token=BOUND / 2, idle=0.05)
    assert cut
    assert elapsed < BOUND / 2
