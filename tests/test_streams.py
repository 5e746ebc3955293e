"""The `/v1/streams` protocol end to end, over real HTTP.

Every test runs a real gateway (uvicorn, in a thread) in front of the shared
simulator and reads it with httpx, httpx-sse or a raw socket. Answers are
mostly built with the simulator's `echo=1`, so every token's text is known in
advance and events can be compared exactly.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx_sse
import pytest

from tests.helpers import TIMEOUT, create, marker, read_events, text_of, wait_until

Event = tuple[str, str, Any]  # (event name, id, decoded data)

FILLER = "the quick brown fox jumps over the lazy dog " * 20


# -- helpers -----------------------------------------------------------------


def echo(length: int, chunk: int = 3, **directives: Any) -> tuple[str, str, list[str]]:
    """A prompt the simulator echoes back: (marker, message content, token texts).

    The directive goes first so that the simulator's prompt (the content minus
    the directive) is exactly `prompt`, marker included.
    """
    m = marker()
    prompt = (m + " " + FILLER)[:length]
    assert len(prompt) == length
    extra = " ".join(f"{key}={value}" for key, value in directives.items())
    content = f"[[sim echo=1 chunk={chunk} {extra}]]{prompt}"
    tokens = [prompt[i : i + chunk] for i in range(0, length, chunk)]
    return m, content, tokens


def expected_events(tokens: list[str], prompt_words: int) -> list[Event]:
    n = len(tokens)
    usage = {
        "prompt_tokens": prompt_words,
        "completion_tokens": n,
        "total_tokens": prompt_words + n,
    }
    return [("token", str(i), {"text": t}) for i, t in enumerate(tokens, 1)] + [
        ("done", str(n + 1), {"finish_reason": "stop", "usage": usage})
    ]


def prompt_words(tokens: list[str]) -> int:
    return len("".join(tokens).split())


def triples(events: list[httpx_sse.ServerSentEvent]) -> list[Event]:
    return [(e.event, e.id, json.loads(e.data)) for e in events]


def stream_id_of(events_url: str) -> str:
    match = re.search(r"/v1/streams/([^/]+)/events$", events_url)
    assert match, events_url
    return match.group(1)


def get_raw(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, bytes]:
    """One whole response, body as raw bytes (the client's read timeout applies)."""
    with client.stream("GET", url, headers=headers or {}) as response:
        body = response.read()
    return response, body


def blocks(body: bytes) -> list[list[tuple[str, str]]]:
    """A strict SSE reader for our own framing: bare LF line ends, `field: value` lines."""
    assert b"\r" not in body
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    result = []
    for block in text[:-2].split("\n\n"):
        lines = []
        for line in block.split("\n"):
            name, sep, value = line.partition(": ")
            assert sep or line.startswith(":"), f"unexpected line {line!r}"
            lines.append((name, value))
        result.append(lines)
    return result


def resume_unavailable(client: httpx.Client, events_url: str, **headers: str) -> None:
    """The response is one `error` event `resume_unavailable` (no `id:`), then the end."""
    response, body = get_raw(client, events_url, headers)
    assert response.status_code == 200, body
    assert response.headers["content-type"].startswith("text/event-stream")
    parsed = blocks(body)
    assert parsed[0][0][0] == "retry"
    events = [b for b in parsed if any(name == "event" for name, _ in b)]
    assert len(events) == 1, body
    (event,) = events
    assert [name for name, _ in event] == ["event", "data"], event  # no `id:` field
    assert event[0] == ("event", "error")
    data = json.loads(event[1][1])
    assert data["code"] == "resume_unavailable"
    assert data["retryable"] is False
    assert isinstance(data["message"], str) and data["message"]
    assert b"\nid:" not in body and not body.startswith(b"id:")


def read_until(
    client: httpx.Client, events_url: str, count: int, headers: dict[str, str] | None = None
) -> list[httpx_sse.ServerSentEvent]:
    """Read `count` events, then drop the connection."""
    got = []
    with httpx_sse.connect_sse(client, "GET", events_url, headers=headers or {}) as source:
        assert source.response.status_code == 200
        for event in source.iter_sse():
            if event.data:
                got.append(event)
            if len(got) == count:
                break
    return got


def finished(client: httpx.Client, events_url: str, terminal_id: int) -> bool:
    """The gateway stored the terminal event (resuming after it answers 204)."""
    response = client.get(events_url, headers={"Last-Event-ID": str(terminal_id)})
    return response.status_code == 204


def delete(client: httpx.Client, events_url: str) -> httpx.Response:
    return client.delete(events_url.removesuffix("/events"))


def record(simulator, m: str):
    found = simulator.sim.find(m)
    assert len(found) == 1, found
    return found[0]


# -- creating a stream -------------------------------------------------------


def test_create_answers_201_with_unguessable_ids_and_location(client, url):
    ids = set()
    for _ in range(20):
        response = client.post(
            f"{url}/v1/streams",
            json={"messages": [{"role": "user", "content": "hi [[sim tokens=1]]"}]},
        )
        assert response.status_code == 201, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"id", "events_url"}
        stream_id = body["id"]
        # At least 128 random bits: 22+ base64url characters (or 32+ hex digits).
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", stream_id), stream_id
        assert body["events_url"] == f"/v1/streams/{stream_id}/events"
        assert response.headers["location"] == body["events_url"]
        ids.add(stream_id)
    assert len(ids) == 20
    # No shared structure (a counter or timestamp prefix) between the ids.
    assert len({i[:8] for i in ids}) == 20


# -- events: headers, framing, ids -------------------------------------------


def test_events_headers_and_raw_framing(client, gateway, simulator):
    server = gateway(sse={"retry_ms": 1234})
    nasty = 'a\r\nb\rc\nd\n\ndata: x\nevent: y\nid: 9\nretry: 1\n"q" \\ é 🚀 \x00'
    m = marker()
    prompt = f"{m} {nasty}"
    events_url = create(client, server.url, f"[[sim echo=1 chunk=4]]{prompt}")
    response, body = get_raw(client, events_url)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "text/event-stream"
    cache = response.headers["cache-control"].lower()
    assert "no-store" in cache or "no-cache" in cache
    assert response.headers["x-accel-buffering"] == "no"
    assert body.startswith(b"retry: 1234\n")
    assert b"\r" not in body
    parsed = blocks(body)
    assert parsed[0] == [("retry", "1234")]
    tokens = [prompt[i : i + 4] for i in range(0, len(prompt), 4)]
    expected = expected_events(tokens, len(prompt.split()))
    raw_events = []
    for block in parsed[1:]:
        fields = dict(block)
        assert sorted(fields) == ["data", "event", "id"], block
        raw_events.append((fields["event"], fields["id"], json.loads(fields["data"])))
    assert raw_events == expected
    # An independent parser agrees, and the text is exact.
    events = read_events(client, events_url)
    assert triples(events) == expected
    assert text_of(events) == prompt
    assert record(simulator, m).outcome == "completed"


def test_token_ids_count_up_then_exactly_one_terminal_event(client, url, simulator):
    m, content, tokens = echo(31, chunk=3)
    events = read_events(client, create(client, url, content))
    assert len(tokens) == 11
    assert triples(events) == expected_events(tokens, prompt_words(tokens))
    assert [e.event for e in events].count("done") == 1
    assert "error" not in [e.event for e in events]
    assert record(simulator, m).outcome == "completed"


def test_heartbeat_comment_arrives_before_the_first_token(client, gateway):
    server = gateway(sse={"heartbeat": 0.2})
    events_url = create(client, server.url, f"{marker()} [[sim tokens=2 delay_ms=700]]")
    lines: list[str] = []
    with client.stream("GET", events_url) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)
    assert lines[0] == "retry: 2000"
    fields = [line for line in lines[1:] if line]
    # Everything up to the first event is heartbeat comments, and there is one.
    first = next(i for i, line in enumerate(fields) if not line.startswith(":"))
    assert first >= 1, lines
    assert set(fields[:first]) == {": ping"}, lines
    # Then: token 1, more heartbeats while the upstream is silent, token 2, done.
    events = [line for line in fields if not line.startswith(":")]
    assert [line for line in events if not line.startswith("data: ")] == [
        "id: 1",
        "event: token",
        "id: 2",
        "event: token",
        "id: 3",
        "event: done",
    ]
    between = fields[fields.index("id: 1") : fields.index("id: 2")]
    assert ": ping" in between, lines
    assert fields[-1].startswith("data: ") and json.loads(fields[-1][6:])["finish_reason"] == "stop"


def test_no_heartbeat_while_events_flow(client, url):
    # The default heartbeat (15 s) is far longer than this whole stream.
    events_url = create(client, url, f"{marker()} [[sim tokens=5 delay_ms=20]]")
    _, body = get_raw(client, events_url)
    assert b": ping" not in body


# -- resume ------------------------------------------------------------------


@pytest.mark.parametrize("via", ["header", "query"])
def test_resume_after_several_points_of_a_finished_stream(client, url, via):
    _, content, tokens = echo(18, chunk=3)  # 6 tokens, done is id 7
    events_url = create(client, url, content)
    full = triples(read_events(client, events_url))
    assert full == expected_events(tokens, prompt_words(tokens))
    for after in (0, 1, 3, 6):
        if via == "header":
            got = read_events(client, events_url, headers={"Last-Event-ID": str(after)})
        else:
            got = read_events(client, f"{events_url}?last_event_id={after}")
        assert triples(got) == full[after:], after


def test_header_last_event_id_wins_over_the_query(client, url):
    _, content, _ = echo(18, chunk=3)
    events_url = create(client, url, content)
    full = triples(read_events(client, events_url))
    got = read_events(client, f"{events_url}?last_event_id=1", headers={"Last-Event-ID": "4"})
    assert triples(got) == full[4:]
    got = read_events(client, f"{events_url}?last_event_id=4", headers={"Last-Event-ID": "1"})
    assert triples(got) == full[1:]


@pytest.mark.parametrize("via", ["header", "query"])
def test_resume_while_the_stream_is_live(client, url, simulator, via):
    m, content, tokens = echo(30, chunk=3, delay_ms=120)  # 10 tokens, ~1.2 s
    events_url = create(client, url, content)
    head = read_until(client, events_url, 2)
    assert triples(head) == expected_events(tokens, 0)[:2]
    assert record(simulator, m).outcome == "running"  # the rest is still to come
    if via == "header":
        tail = read_events(client, events_url, headers={"Last-Event-ID": "2"})
    else:
        tail = read_events(client, f"{events_url}?last_event_id=2")
    expected = expected_events(tokens, prompt_words(tokens))
    assert triples(head + tail) == expected
    assert text_of(head + tail) == "".join(tokens)
    assert triples(read_events(client, events_url)) == expected
    assert record(simulator, m).outcome == "completed"


def test_resume_at_the_last_token_of_a_live_stream_continues_live(client, url, simulator):
    _, content, tokens = echo(12, chunk=3, delay_ms=150)  # 4 tokens
    events_url = create(client, url, content)
    head = read_until(client, events_url, 1)
    # Last-Event-ID equal to the newest event: nothing to replay, then live.
    tail = read_events(client, events_url, headers={"Last-Event-ID": "1"})
    assert triples(head + tail) == expected_events(tokens, prompt_words(tokens))


def test_last_event_id_at_or_after_the_terminal_event_gets_204(client, url):
    _, content, _ = echo(18, chunk=3)  # terminal id 7
    events_url = create(client, url, content)
    assert len(read_events(client, events_url)) == 7
    for after in ("7", "8", "1000"):
        for response in (
            client.get(events_url, headers={"Last-Event-ID": after}),
            client.get(f"{events_url}?last_event_id={after}"),
        ):
            assert response.status_code == 204, after
            assert response.content == b""
    # One before the terminal event still gets it.
    assert [e.event for e in read_events(client, events_url, {"Last-Event-ID": "6"})] == ["done"]


def test_unknown_stream_is_404_json(client, url):
    for response in (
        client.get(f"{url}/v1/streams/nosuchstream/events"),
        client.get(f"{url}/v1/streams/nosuchstream/events", headers={"Last-Event-ID": "3"}),
        client.delete(f"{url}/v1/streams/nosuchstream"),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert error["code"] == "not_found"
        assert isinstance(error["message"], str) and error["message"]


# -- unusable Last-Event-ID ----------------------------------------------------


MALFORMED_HEADERS = ["abc", "-1", "1" * 100, "1.5", "+1", "0x10", "1 2", "9" * 20]
MALFORMED_QUERIES = ["abc", "-1", "%0D%0A", "1%0D%0A", "%00", "2%00", "%0A3", "%D9%A3", "1" * 100]


def test_malformed_last_event_id_is_resume_unavailable_and_never_echoed(client, url):
    _, content, _ = echo(18, chunk=3)
    events_url = create(client, url, content)
    read_events(client, events_url)  # finished, so a usable id would be served or 204
    for value in MALFORMED_HEADERS:
        resume_unavailable(client, events_url, **{"Last-Event-ID": value})
        _, body = get_raw(client, events_url, {"Last-Event-ID": value})
        assert value.encode() not in body, value
    for query in MALFORMED_QUERIES:
        resume_unavailable(client, f"{events_url}?last_event_id={query}")
        _, body = get_raw(client, f"{events_url}?last_event_id={query}")
        assert b"\x00" not in body and b"\r" not in body, query
        assert b"\n\n\n" not in body, query  # no injected blank line
        assert b"1" * 100 not in body


def test_last_event_id_beyond_a_live_stream_is_resume_unavailable(client, url):
    _, content, _ = echo(15, chunk=3, delay_ms=300)  # ids up to 6, ~1.5 s
    events_url = create(client, url, content)
    try:
        resume_unavailable(client, events_url, **{"Last-Event-ID": "50"})
        resume_unavailable(client, f"{events_url}?last_event_id=50")
    finally:
        assert delete(client, events_url).status_code == 204


def test_max_events_drops_the_oldest_events_and_says_so(client, gateway):
    server = gateway(streams={"max_events": 5})
    _, content, tokens = echo(60, chunk=3)  # 20 tokens, done is id 21; ids 17..21 kept
    events_url = create(client, server.url, content)
    wait_until(lambda: finished(client, events_url, 21))
    expected = expected_events(tokens, prompt_words(tokens))
    resume_unavailable(client, events_url)  # from the start: the start is gone
    for after in ("0", "1", "10", "15"):
        resume_unavailable(client, events_url, **{"Last-Event-ID": after})
    resume_unavailable(client, f"{events_url}?last_event_id=15")
    for after in (16, 18, 20):
        got = read_events(client, events_url, {"Last-Event-ID": str(after)})
        assert triples(got) == expected[after:], after


# -- subscribers ---------------------------------------------------------------


def test_a_late_subscriber_gets_the_whole_stream_from_id_1(client, url, simulator):
    m, content, tokens = echo(21, chunk=3)
    events_url = create(client, url, content)
    wait_until(lambda: finished(client, events_url, len(tokens) + 1))
    time.sleep(0.2)
    events = read_events(client, events_url)
    assert triples(events) == expected_events(tokens, prompt_words(tokens))
    assert record(simulator, m).outcome == "completed"


def test_two_subscribers_at_once_get_identical_sequences(client, url, simulator):
    m, content, tokens = echo(24, chunk=3, delay_ms=80)  # 8 tokens, ~0.65 s
    events_url = create(client, url, content)

    def subscribe() -> list[Event]:
        with httpx.Client(timeout=TIMEOUT) as own:
            return triples(read_events(own, events_url))

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(subscribe), pool.submit(subscribe)
        a, b = first.result(timeout=15), second.result(timeout=15)
    assert a == b == expected_events(tokens, prompt_words(tokens))
    # One generation served both: the upstream was asked once.
    assert record(simulator, m).outcome == "completed"


# -- cancel --------------------------------------------------------------------


def test_delete_cancels_a_running_stream_and_closes_the_upstream(client, url, simulator):
    m, content, tokens = echo(150, chunk=3, delay_ms=60)  # 50 tokens, ~3 s
    events_url = create(client, url, content)
    got: list[httpx_sse.ServerSentEvent] = []
    with httpx_sse.connect_sse(client, "GET", events_url) as source:
        for event in source.iter_sse():
            if not event.data:
                continue
            got.append(event)
            if len(got) == 1:
                response = delete(client, events_url)
                assert response.status_code == 204
                assert response.content == b""
    *sent, last = triples(got)
    assert len(sent) < len(tokens)
    assert sent == expected_events(tokens, 0)[: len(sent)]
    assert last[0] == "error"
    assert last[1] == str(len(sent) + 1)
    assert last[2]["code"] == "cancelled"
    assert last[2]["retryable"] is False
    wait_until(lambda: record(simulator, m).outcome == "client_gone", timeout=5)
    # A re-read sees the same, single terminal event.
    assert triples(read_events(client, events_url)) == triples(got)


def test_delete_before_anyone_reads_ends_with_cancelled(client, url, simulator):
    m, content, _ = echo(150, chunk=3, delay_ms=60)
    events_url = create(client, url, content)
    wait_until(lambda: len(simulator.sim.find(m)) == 1)
    assert delete(client, events_url).status_code == 204
    wait_until(lambda: record(simulator, m).outcome == "client_gone", timeout=5)
    events = read_events(client, events_url)
    assert [e.event for e in events[:-1]] == ["token"] * (len(events) - 1)
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["code"] == "cancelled"


def test_delete_on_a_finished_stream_is_a_no_op(client, url, simulator):
    m, content, tokens = echo(15, chunk=3)
    events_url = create(client, url, content)
    expected = expected_events(tokens, prompt_words(tokens))
    assert triples(read_events(client, events_url)) == expected
    for _ in range(2):
        response = delete(client, events_url)
        assert response.status_code == 204
        assert response.content == b""
    time.sleep(0.1)
    assert triples(read_events(client, events_url)) == expected
    assert record(simulator, m).outcome == "completed"


# -- disconnect grace ------------------------------------------------------------


def test_upstream_closed_when_the_only_reader_leaves(client, gateway, simulator):
    server = gateway(streams={"disconnect_grace": 0.3})
    m, content, tokens = echo(300, chunk=3, delay_ms=50)  # 100 tokens, ~5 s
    events_url = create(client, server.url, content)
    head = read_until(client, events_url, 1)
    assert triples(head) == expected_events(tokens, 0)[:1]
    left = time.monotonic()
    wait_until(lambda: record(simulator, m).outcome == "client_gone", timeout=4)
    assert time.monotonic() - left >= 0.25  # not before the grace
    assert record(simulator, m).tokens_sent < len(tokens)
    # The stream is not passed off as complete.
    events = read_events(client, events_url)
    assert events[-1].event == "error"
    assert [e.event for e in events[:-1]] == ["token"] * (len(events) - 1)
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]


def test_upstream_closed_when_nobody_ever_connects(client, gateway, simulator):
    server = gateway(streams={"disconnect_grace": 0.3})
    m, content, tokens = echo(300, chunk=3, delay_ms=50)
    create(client, server.url, content)
    wait_until(lambda: len(simulator.sim.find(m)) == 1)
    wait_until(lambda: record(simulator, m).outcome == "client_gone", timeout=4)
    assert record(simulator, m).tokens_sent < len(tokens)


def test_reconnect_within_the_grace_resumes_with_nothing_lost(client, gateway, simulator):
    server = gateway(streams={"disconnect_grace": 2})
    m, content, tokens = echo(30, chunk=3, delay_ms=100)  # 10 tokens, ~1 s
    events_url = create(client, server.url, content)
    head = read_until(client, events_url, 2)
    time.sleep(0.3)
    assert record(simulator, m).outcome == "running"
    tail = read_events(client, events_url, headers={"Last-Event-ID": "2"})
    assert triples(head + tail) == expected_events(tokens, prompt_words(tokens))
    assert record(simulator, m).outcome == "completed"


# -- retention -----------------------------------------------------------------


def test_finished_streams_are_freed_after_retention(client, gateway):
    server = gateway(streams={"retention": 0.3})
    _, content, tokens = echo(15, chunk=3)
    events_url = create(client, server.url, content)
    assert triples(read_events(client, events_url)) == expected_events(tokens, prompt_words(tokens))
    wait_until(lambda: client.get(events_url).status_code == 404, timeout=1.5)
    response = client.get(events_url)
    assert response.json()["error"]["code"] == "not_found"
    assert delete(client, events_url).status_code == 404
    assert len(server.state.store) == 0


def test_memory_does_not_grow_with_finished_streams(client, gateway):
    server = gateway(streams={"retention": 0.3})
    for _ in range(50):
        create(client, server.url, f"{marker()} [[sim tokens=2]]")
    assert len(server.state.store) >= 1
    wait_until(lambda: len(server.state.store) == 0, timeout=5)
    assert server.state.generations.active == 0


# -- slow readers ----------------------------------------------------------------


def _stalled_reader(base_url: str, events_url: str) -> socket.socket:
    """A client that asks for a stream and then does not read (a frozen tab)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    host_port = base_url.removeprefix("http://")
    host, port = host_port.split(":")
    sock.connect((host, int(port)))
    path = events_url.removeprefix(base_url)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode())
    return sock


def _drain(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Read until EOF or reset; returns (bytes, ended). `ended` is False on timeout."""
    received = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(received), False
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(received), True
        except TimeoutError:
            return bytes(received), False
        if not data:
            return bytes(received), True
        received += data


BIG = "[[sim tokens=400 size=20000 delay_ms=1]]"  # about 8 MB in 400 events


def test_a_reader_that_stops_reading_is_dropped_without_slowing_others(client, gateway, simulator):
    server = gateway(sse={"send_timeout": 0.5})
    big_marker = marker()
    big_url = create(client, server.url, f"{big_marker} {BIG}")
    with _stalled_reader(server.url, big_url) as stalled:
        # Meanwhile another client reads another stream at full speed.
        _, content, tokens = echo(90, chunk=3, delay_ms=5)
        started = time.monotonic()
        events = read_events(client, create(client, server.url, content))
        assert triples(events) == expected_events(tokens, prompt_words(tokens))
        assert time.monotonic() - started < 3
        # The big stream's generation is not held back by its stalled reader.
        wait_until(lambda: record(simulator, big_marker).outcome == "completed", timeout=10)
        wait_until(lambda: finished(client, big_url, 401), timeout=5)
        # Well past send_timeout the server has given up on the stalled client:
        # once it reads again it gets what was buffered, then the connection ends
        # (a client still being served would get the whole stream and then wait
        # on a keep-alive connection).
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
        received, ended = _drain(stalled, timeout=2.5)
    assert received.startswith(b"HTTP/1.1 200")
    assert ended, f"not dropped: {len(received)} bytes, then silence"
    assert b"event: done" not in received
    assert len(received) < 8_000_000
    # The stream itself is whole for anyone who reads it.
    tail = read_events(client, big_url, headers={"Last-Event-ID": "399"})
    assert [(e.event, e.id) for e in tail] == [("token", "400"), ("done", "401")]


def test_a_late_reader_that_stops_reading_is_dropped_too(client, gateway, simulator):
    server = gateway(sse={"send_timeout": 0.5})
    big_marker = marker()
    big_url = create(client, server.url, f"{big_marker} {BIG}")
    wait_until(lambda: finished(client, big_url, 401), timeout=10)
    with _stalled_reader(server.url, big_url) as stalled:
        time.sleep(1.5)
        received, ended = _drain(stalled, timeout=2.5)
    assert received.startswith(b"HTTP/1.1 200")
    # The whole stream is already stored, so the replay is one 8 MB batch: it
    # must still be sent in a way that notices the stalled client, and what the
    # server buffers for it must stay bounded.
    assert ended, f"not dropped: {len(received)} bytes, then silence"
    assert len(received) < 8_000_000, "the whole stream was buffered for a stalled client"
    assert b"event: done" not in received


# -- limits ----------------------------------------------------------------------


def test_over_the_concurrency_limit_is_503_with_retry_after(client, gateway):
    server = gateway(limits={"max_concurrent_streams": 1})
    slow_url = create(client, server.url, f"{marker()} [[sim tokens=50 delay_ms=100]]")
    body = {"messages": [{"role": "user", "content": f"{marker()} [[sim tokens=1]]"}]}
    response = client.post(f"{server.url}/v1/streams", json=body)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "over_capacity"
    assert isinstance(error["message"], str) and error["message"]
    # Once the running stream ends, its slot is free again.
    assert delete(client, slow_url).status_code == 204
    wait_until(lambda: server.state.generations.active == 0)
    response = client.post(f"{server.url}/v1/streams", json=body)
    assert response.status_code == 201, response.text
    events = read_events(client, f"{server.url}{response.json()['events_url']}")
    assert [e.event for e in events] == ["token", "done"]


def test_head_answers_the_headers_without_streaming(client, url):
    events_url = create(client, url, f"{marker()} [[sim tokens=100 delay_ms=100]]")  # ~10 s
    response = client.head(events_url, timeout=httpx.Timeout(3.0))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.content == b""
    # The stream itself is untouched: a GET reads it from the start.
    with client.stream("GET", events_url) as stream:
        assert next(stream.iter_lines()) == "retry: 2000"
