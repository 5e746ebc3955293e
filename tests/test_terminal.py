"""One terminal event, with an id, whatever the upstream does.

Every upstream fault the simulator can play, read through a real gateway with
an independent SSE parser: the ids run 1..n without gap or repeat, the last
event is the only terminal one and carries its id, and a resume after it is a
204 (the EventSource's signal that the stream is over).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from gateway import create_app
from tests.helpers import SimServer, create, marker, read_events, run_server, test_settings

FAULTS = {
    "answer": ("", "done", None),
    "reasoning and tools": ("reasoning=3 tools=1 calls=2", "done", None),
    "drop": ("fault=drop after=3", "error", "upstream_error"),
    "stall": ("fault=stall after=2", "error", "upstream_timeout"),
    "malformed": ("fault=malformed after=2", "error", "upstream_error"),
    "no finish": ("fault=no_finish after=2", "error", "upstream_incomplete"),
    "eof": ("fault=eof after=2", "error", "upstream_incomplete"),
    "400": ("status=400", "error", "upstream_bad_request"),
    "500": ("status=500", "error", "upstream_error"),
    "429, Retry-After: inf": ("status=429 retry_after=inf", "error", "upstream_rate_limited"),
}


@pytest.fixture(scope="module")
def url(simulator: SimServer) -> Iterator[str]:
    timeouts = {"connect": 2, "first_token": 1, "idle": 0.5, "total": 10}
    settings = test_settings(simulator, upstream={"timeouts": timeouts, "retries": 0})
    with run_server(create_app(settings)) as gateway_url:
        yield gateway_url


@pytest.mark.parametrize("name", FAULTS)
def test_every_ending_is_one_terminal_event_with_an_id(
    client: httpx.Client, url: str, name: str
) -> None:
    directive, terminal, code = FAULTS[name]
    events_url = create(client, url, f"{marker()} [[sim tokens=5 {directive}]]")
    events = read_events(client, events_url)
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert [e.event for e in events if e.event in ("done", "error")] == [terminal]
    assert events[-1].event == terminal
    if code is not None:
        assert json.loads(events[-1].data)["code"] == code
    after = client.get(events_url, headers={"Last-Event-ID": events[-1].id})
    assert after.status_code == 204
