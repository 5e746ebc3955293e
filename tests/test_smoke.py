import json

from tests.helpers import create, marker, read_events, text_of


def test_stream_relays_tokens_then_done(client, url, simulator):
    m = marker()
    events = read_events(client, create(client, url, f"{m} [[sim tokens=5]]"))
    assert [e.event for e in events] == ["token"] * 5 + ["done"]
    assert [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
    done = json.loads(events[-1].data)
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == 5
    (record,) = simulator.sim.find(m)
    assert record.outcome == "completed"
    assert text_of(events)
