"""`Descriptors`: the free file descriptors of this process, and the 503 that keeps a
process with too few of them from starting more streams. (tests/test_server.py runs
a whole gateway with a low limit.)"""

from __future__ import annotations

import os
import resource
from contextlib import ExitStack

import pytest

from gateway import descriptors
from gateway.descriptors import Descriptors, limit
from gateway.errors import OverCapacity


def test_the_limit_is_the_soft_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit() == (soft if soft != resource.RLIM_INFINITY else 1 << 30)


def test_free_goes_down_by_each_descriptor_opened() -> None:
    counter = Descriptors()
    before = counter.free()
    assert before is not None and 0 < before <= limit()
    with ExitStack() as opened:
        for _ in range(5):
            opened.enter_context(open(os.devnull, "rb"))
        after = counter.free()
    # Other threads of the test process may open or close a socket meanwhile.
    assert after is not None and abs((before - after) - 5) <= 2


def test_short_of_the_reserve_refuses_with_a_retryable_503_and_recovers() -> None:
    counter = Descriptors()
    free = counter.free()
    assert free is not None
    too_many = free + 1000
    assert counter.short(too_many)
    with pytest.raises(OverCapacity) as refused:
        counter.check(too_many)
    assert refused.value.status == 503
    assert refused.value.headers() == {"Retry-After": "1"}
    assert "file descriptors" in refused.value.message
    assert not counter.short(1)
    counter.check(1)  # raises nothing


def test_where_descriptors_cannot_be_counted_the_check_is_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setattr(descriptors, "_OPEN", os.path.join(tmp_path, "missing"))
    counter = Descriptors()
    assert counter.free() is None
    assert not counter.short(1 << 40)
    counter.check(1 << 40)


def test_far_from_the_limit_a_burst_does_not_count_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listing the descriptors costs in proportion to the open streams: while far from
    the reserve, checks estimate; near it (or a second later) they count again."""
    counts = []
    available = 1000

    def free(self: Descriptors) -> int:
        counts.append(available)
        return available

    monkeypatch.setattr(Descriptors, "free", free)
    counter = Descriptors()
    for _ in range(100):
        assert not counter.short(10)
    assert len(counts) == 1  # 100 new streams may take 300: still far above 2 x 10
    counts.clear()
    available = 700
    counter = Descriptors()
    for _ in range(100):
        assert not counter.short(400)  # within twice the reserve: counted every time
    assert len(counts) == 100
