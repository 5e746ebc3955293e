"""Upstream behaviour seen through the gateway: exactness, faults, retries, secrets, usage.

Every stream is read with httpx-sse (`read_events`), an SSE parser independent
of the gateway's own framing, against the shared simulator over real HTTP.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx_sse
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import create_app
from tests.helpers import (
    GatewayServer,
    create,
    marker,
    read_events,
    run_server,
    test_settings,
    text_of,
    wait_until,
)

API_KEY = "sk-test-secret-key"

RETRYABLE = {
    "upstream_unavailable": True,
    "upstream_timeout": True,
    "upstream_rate_limited": True,
    "upstream_error": True,
    "upstream_incomplete": True,
    "upstream_auth": False,
    "upstream_bad_request": False,
}


def ended(events: list[httpx_sse.ServerSentEvent]) -> tuple[str, dict[str, Any]]:
    """Check the shape every stream must have and return its terminal event.

    Tokens with ids 1..n, then exactly one terminal event (`done` or `error`)
    with id n+1, and nothing after it.
    """
    assert events, "the stream sent no event at all"
    kinds = [e.event for e in events]
    assert kinds[:-1] == ["token"] * (len(events) - 1), kinds
    assert kinds[-1] in ("done", "error"), kinds
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    data = json.loads(events[-1].data)
    if kinds[-1] == "error":
        assert set(data) <= {"code", "message", "retryable", "retry_after", "upstream"}, data
        assert isinstance(data["message"], str) and data["message"]
        assert data["retryable"] is RETRYABLE[data["code"]], data
    return kinds[-1], data


def tokens_of(events: list[httpx_sse.ServerSentEvent]) -> list[str]:
    return [json.loads(e.data)["text"] for e in events if e.event == "token"]


def stream(client: httpx.Client, url: str, content: str) -> list[httpx_sse.ServerSentEvent]:
    return read_events(client, create(client, url, content))


@pytest.fixture(scope="module")
def url(simulator, store_settings) -> Iterator[str]:
    """One gateway with the default test settings (retries: 2), shared by this module."""
    with run_server(create_app(test_settings(simulator, **store_settings))) as gateway_url:
        yield gateway_url


@pytest.fixture(scope="module")
def no_retry(simulator, store_settings) -> Iterator[str]:
    """One gateway with `upstream.retries: 0`, so each fault reaches the client as is."""
    settings = test_settings(simulator, upstream={"retries": 0}, **store_settings)
    with run_server(create_app(settings)) as gateway_url:
        yield gateway_url


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# --- exactness ------------------------------------------------------------------------------

NASTY = {
    "newlines": "line one\nline two\n\nafter a blank line\n",
    "carriage_returns": "carriage\rreturn\r\rtwice\r",
    "crlf": "crlf\r\nline\r\n\r\nend\r\n",
    "mixed_breaks": "\n\r\n\r\r\n\n\r",
    "sse_fields": "data: fake\n\nevent: done\ndata: {}\n\nid: 99\nretry: 0\n: comment\n:\n",
    "sse_fields_crlf": "event: error\r\ndata: x\r\n\r\nid: 7\r\nretry: 1\r\n:ping\r\n\r\n",
    "field_at_start": "data: starts the answer",
    "colon_only": ":",
    "quotes": '"double" \'single\' `back` \u201ccurly\u201d \\" \\\\ \\n \\u0041 \\',
    "json_like": '{"text": "nested"}\n[1, 2, {"a": null}]',
    "unicode_separators": "sep\u2028line\u2029para\x85next\u000bvt\u000cff",
    "controls": "\ttab\t\x01\x02\x03\x07\x08\x1b[31mansi\x1b[0m\x1f\x7f\x80\x9f",
    "emoji": "grin 😀 family 👨‍👩‍👧‍👦 thumbs 👍🏽 flag 🇫🇷 coder 👩🏿‍💻 keycap 1️⃣",
    "cjk": "漢字かなカナ 한국어 中文，标点。",  # noqa: RUF001
    "rtl": "עברית العربية \u200f mixed \u202eoverride\u202c \u200d zwj",
    "spaces": "  leading and trailing spaces  ",
    "combining": "e\u0301 a\u030a n\u0303 Z\u0351\u0308\u0353",
    "astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 𓀀",  # noqa: RUF001
}

EVERYTHING = "".join(NASTY.values())


@pytest.mark.parametrize("name", list(NASTY))
def test_echoed_text_is_relayed_byte_for_byte(client, url, name):
    text = NASTY[name]
    events = stream(client, url, f"[[sim echo=1 chunk=3]]{text}")
    assert ended(events)[0] == "done"
    assert text_of(events).encode() == text.encode()
    assert tokens_of(events) == [text[i : i + 3] for i in range(0, len(text), 3)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_exactness_holds_for_every_chunk_size(client, url, chunk):
    events = stream(client, url, f"[[sim echo=1 chunk={chunk}]]{EVERYTHING}")
    kind, done = ended(events)
    assert kind == "done"
    assert text_of(events).encode() == EVERYTHING.encode()
    expected = [EVERYTHING[i : i + chunk] for i in range(0, len(EVERYTHING), chunk)]
    assert tokens_of(events) == expected
    assert done["usage"]["completion_tokens"] == len(expected)


def test_raw_frames_end_lines_with_lf_only_even_for_cr_text(client, url):
    """`\\r` in the text must not reach the wire as a line break (lines end in `\\n`)."""
    text = NASTY["crlf"] + NASTY["carriage_returns"] + NASTY["unicode_separators"]
    events_url = create(client, url, f"[[sim echo=1 chunk=2]]{text}")
    with client.stream("GET", events_url) as response:
        raw = response.read()
    assert b"\r" not in raw
    assert raw.startswith(b"retry: ")
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == ""
    assert sum(block.count("\nevent: token\n") for block in blocks) == (len(text) + 1) // 2


# --- faults: exactly one terminal event, the last, with the right code --------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "upstream_error"),
        (401, "upstream_auth"),
        (403, "upstream_auth"),
        (400, "upstream_bad_request"),
        (404, "upstream_bad_request"),
    ],
)
def test_http_error_before_streaming(client, no_retry, simulator, status, code):
    url = no_retry
    m = marker()
    events = stream(client, url, f"{m} [[sim status={status}]]")
    assert len(events) == 1
    kind, error = ended(events)
    assert (kind, error["code"]) == ("error", code)
    assert "retry_after" not in error
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected"]


def test_rate_limit_carries_retry_after(client, no_retry, simulator):
    url = no_retry
    m = marker()
    events = stream(client, url, f"{m} [[sim status=429 retry_after=7]]")
    kind, error = ended(events)
    assert len(events) == 1
    assert (kind, error["code"], error["retryable"]) == ("error", "upstream_rate_limited", True)
    assert error["retry_after"] == 7
    assert len(simulator.sim.find(m)) == 1


def test_non_retryable_errors_are_not_retried(client, url, simulator):
    for status, code in [(401, "upstream_auth"), (400, "upstream_bad_request")]:
        m = marker()
        events = stream(client, url, f"{m} [[sim status={status}]]")
        assert ended(events)[1]["code"] == code
        assert len(simulator.sim.find(m)) == 1, status


def test_dropped_connection_after_tokens(client, no_retry, simulator):
    url = no_retry
    m = marker()
    events = stream(client, url, f"[[sim echo=1 chunk=2 fault=drop after=3]]{m} abcdefgh")
    kind, error = ended(events)
    assert tokens_of(events) == [m[:2], m[2:4], m[4:6]]
    assert (kind, error["code"], error["retryable"]) == ("error", "upstream_error", True)
    (record,) = simulator.sim.find(m)
    assert (record.outcome, record.tokens_sent) == ("fault", 3)


def test_dropped_connection_before_any_token(client, no_retry, simulator):
    url = no_retry
    m = marker()
    events = stream(client, url, f"{m} [[sim fault=drop]]")
    assert len(events) == 1
    kind, error = ended(events)
    assert (kind, error["code"]) == ("error", "upstream_error")


def test_malformed_chunk(client, no_retry, simulator):
    url = no_retry
    m = marker()
    events = stream(client, url, f"{m} [[sim fault=malformed after=2]]")
    kind, error = ended(events)
    assert len(events) == 3
    assert (kind, error["code"], error["retryable"]) == ("error", "upstream_error", True)


@pytest.mark.parametrize("fault", ["no_finish", "eof"])
@pytest.mark.parametrize("after", [0, 3])
def test_stream_ending_without_finish_reason_is_incomplete(client, no_retry, fault, after):
    url = no_retry
    events = stream(client, url, f"{marker()} [[sim fault={fault} after={after}]]")
    kind, error = ended(events)
    assert len(events) == after + 1
    assert "done" not in [e.event for e in events]
    assert (kind, error["code"], error["retryable"]) == ("error", "upstream_incomplete", True)


def test_stall_after_tokens_hits_idle_timeout_and_closes_upstream(client, gateway, simulator):
    url = gateway(upstream={"retries": 0, "timeouts": {"idle": 0.3}}).url
    m = marker()
    started = time.monotonic()
    events = stream(client, url, f"{m} [[sim fault=stall after=2]]")
    elapsed = time.monotonic() - started
    kind, error = ended(events)
    assert len(events) == 3
    assert (kind, error["code"], error["retryable"]) == ("error", "upstream_timeout", True)
    assert 0.3 <= elapsed < 3
    (record,) = simulator.sim.find(m)
    wait_until(lambda: record.outcome == "client_gone")
    assert record.tokens_sent == 2


def test_first_token_timeout(client, gateway, simulator):
    url = gateway(upstream={"retries": 0, "timeouts": {"first_token": 0.3}}).url
    m = marker()
    started = time.monotonic()
    events = stream(client, url, f"{m} [[sim delay_ms=5000]]")
    elapsed = time.monotonic() - started
    assert len(events) == 1
    kind, error = ended(events)
    assert (kind, error["code"], error["retryable"]) == ("error", "upstream_timeout", True)
    assert 0.3 <= elapsed < 4
    (record,) = simulator.sim.find(m)
    wait_until(lambda: record.outcome == "client_gone")
    assert record.tokens_sent == 0


def test_stall_before_the_first_token_hits_the_first_token_timeout(client, gateway, simulator):
    url = gateway(upstream={"retries": 0, "timeouts": {"first_token": 0.3, "idle": 5}}).url
    m = marker()
    started = time.monotonic()
    events = stream(client, url, f"{m} [[sim fault=stall]]")
    assert time.monotonic() - started < 1.5
    assert len(events) == 1
    assert ended(events)[1]["code"] == "upstream_timeout"
    (record,) = simulator.sim.find(m)
    wait_until(lambda: record.outcome == "client_gone")


def test_first_token_timeout_is_retried_then_reported(client, gateway, simulator):
    url = gateway(upstream={"retries": 1, "timeouts": {"first_token": 0.2}}).url
    m = marker()
    events = stream(client, url, f"{m} [[sim delay_ms=2000]]")
    assert ended(events)[1]["code"] == "upstream_timeout"
    assert len(simulator.sim.find(m)) == 2


def test_slow_tokens_within_idle_do_not_time_out(client, gateway):
    """The first-token deadline no longer applies once tokens flow."""
    url = gateway(upstream={"retries": 0, "timeouts": {"first_token": 1.0, "idle": 1.5}}).url
    # 1.8 s in all, past first_token; each gap well within idle even on a busy machine.
    events = stream(client, url, f"{marker()} [[sim tokens=6 delay_ms=300]]")
    assert ended(events)[0] == "done"
    assert len(tokens_of(events)) == 6


def test_total_timeout(client, gateway, simulator):
    url = gateway(upstream={"retries": 0, "timeouts": {"total": 0.5}}).url
    m = marker()
    started = time.monotonic()
    events = stream(client, url, f"{m} [[sim tokens=100 delay_ms=40]]")
    elapsed = time.monotonic() - started
    kind, error = ended(events)
    assert (kind, error["code"], error["retryable"]) == ("error", "upstream_timeout", True)
    assert 2 <= len(events) - 1 < 100
    assert 0.5 <= elapsed < 3.5
    (record,) = simulator.sim.find(m)
    wait_until(lambda: record.outcome == "client_gone")


def test_unreachable_upstream(client, gateway, closed_port):
    url = gateway(upstream={"retries": 0, "base_url": f"http://127.0.0.1:{closed_port}/v1"}).url
    events = stream(client, url, "hello")
    assert len(events) == 1
    kind, error = ended(events)
    assert (kind, error["code"], error["retryable"]) == ("error", "upstream_unavailable", True)


# --- retries --------------------------------------------------------------------------------


def test_server_error_is_retried_before_the_first_token(client, url, simulator):
    m = marker()
    events = stream(client, url, f"{m} [[sim tokens=4 status=500 times=1 key={m}]]")
    kind, _ = ended(events)
    assert kind == "done"
    assert len(tokens_of(events)) == 4
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected", "completed"]


def test_rate_limit_retry_honours_retry_after(client, url, simulator):
    m = marker()
    started = time.monotonic()
    events = stream(client, url, f"{m} [[sim tokens=3 status=429 retry_after=0.5 times=2 key={m}]]")
    elapsed = time.monotonic() - started
    assert ended(events)[0] == "done"
    assert len(tokens_of(events)) == 3
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected", "rejected", "completed"]
    # Two waits of 0.5 s; the exponential backoff alone would total at most 0.75 s.
    assert 1.0 <= elapsed < 3


def test_retries_are_counted(client, url, simulator):
    """`retries` attempts after the first, no more: 3 failures beat retries=2."""
    m = marker()
    events = stream(client, url, f"{m} [[sim status=429 retry_after=0.05 times=3 key={m}]]")
    kind, error = ended(events)
    assert (kind, error["code"]) == ("error", "upstream_rate_limited")
    assert error["retry_after"] == 1  # whole seconds for clients; the retries waited 0.05 s
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected"] * 3


def test_no_retry_when_retries_is_zero(client, no_retry, simulator):
    url = no_retry
    m = marker()
    events = stream(client, url, f"{m} [[sim status=500 times=1 key={m}]]")
    assert len(events) == 1
    assert ended(events)[1]["code"] == "upstream_error"
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected"]


def test_retry_after_beyond_the_cap_is_not_retried(client, url, simulator):
    m = marker()
    started = time.monotonic()
    events = stream(client, url, f"{m} [[sim status=429 retry_after=5 times=1 key={m}]]")
    elapsed = time.monotonic() - started
    kind, error = ended(events)
    assert (kind, error["code"]) == ("error", "upstream_rate_limited")
    assert error["retry_after"] == 5
    assert elapsed < 4
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected"]


def test_no_retry_after_the_first_token(client, url, simulator):
    m = marker()
    events = stream(client, url, f"{m} [[sim tokens=6 fault=drop after=2]]")
    kind, error = ended(events)
    assert len(tokens_of(events)) == 2
    assert (kind, error["code"]) == ("error", "upstream_error")
    time.sleep(0.3)  # a retry, if any, would have reached the simulator by now
    assert [r.outcome for r in simulator.sim.find(m)] == ["fault"]


def test_unreachable_upstream_is_retried(client, gateway, closed_port):
    url = gateway(upstream={"retries": 2, "base_url": f"http://127.0.0.1:{closed_port}/v1"}).url
    started = time.monotonic()
    events = stream(client, url, "hello")
    elapsed = time.monotonic() - started
    assert ended(events)[1]["code"] == "upstream_unavailable"
    # Two backoffs of at least 0.125 s and 0.25 s (half of 0.25 * 2**attempt).
    assert elapsed >= 0.375


# --- the API key ----------------------------------------------------------------------------


def test_api_key_reaches_the_upstream_but_no_event(client, url, simulator):
    m = marker()
    events_url = create(client, url, f"[[sim echo=1]]{m} please repeat")
    with client.stream("GET", events_url) as response:
        raw = response.read()
    (record,) = simulator.sim.find(m)
    assert record.headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY.encode() not in raw
    assert b"secret" not in raw


@pytest.mark.parametrize("status", [400, 401, 403, 429, 500])
def test_api_key_never_appears_in_errors(client, no_retry, status):
    url = no_retry
    events_url = create(client, url, f"[[sim status={status}]] {marker()}")
    with client.stream("GET", events_url) as response:
        raw = response.read()
    assert b"event: error" in raw
    assert API_KEY.encode() not in raw


@pytest.fixture
def quoting_upstream() -> Iterator[str]:
    """An upstream that, like OpenAI on a bad key, quotes the credential in its error."""

    async def completions(request: Request) -> JSONResponse:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        status = 401 if "auth" in (await request.body()).decode() else 400
        message = f"Incorrect API key provided: {key}. You passed {key!r}."
        body = {"error": {"message": message, "type": "invalid_request_error", "code": key}}
        return JSONResponse(body, status_code=status, headers={"x-key": key})

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    with run_server(app) as upstream_url:
        yield f"{upstream_url}/v1"


@pytest.mark.parametrize("prompt", ["auth", "bad"])
def test_api_key_quoted_by_the_upstream_is_not_passed_on(client, gateway, quoting_upstream, prompt):
    url = gateway(upstream={"retries": 0, "base_url": quoting_upstream}).url
    events_url = create(client, url, prompt)
    with client.stream("GET", events_url) as response:
        raw = response.read()
    assert b"event: error" in raw
    assert API_KEY.encode() not in raw
    assert b"secret" not in raw
    # The same holds for the JSON error of /api/stream.
    response = client.post(f"{url}/api/stream", json={"message": prompt})
    assert response.status_code == 502
    assert response.json()["error"]["code"] in ("upstream_auth", "upstream_bad_request")
    assert API_KEY not in response.text
    assert all(API_KEY not in value for value in response.headers.values())


# --- usage and empty deltas -----------------------------------------------------------------


def test_done_carries_usage(client, url):
    m = marker()
    events = stream(client, url, f"{m} [[sim tokens=7]]")
    kind, done = ended(events)
    assert kind == "done"
    assert done["finish_reason"] == "stop"
    usage = done["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["prompt_tokens"] == 1  # the simulator counts the words left: the marker
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


def test_max_tokens_gives_finish_reason_length(client, url):
    events_url = create(client, url, f"{marker()} [[sim tokens=10]]", max_tokens=4)
    events = read_events(client, events_url)
    kind, done = ended(events)
    assert len(tokens_of(events)) == 4
    assert (kind, done["finish_reason"], done["usage"]["completion_tokens"]) == (
        "done",
        "length",
        4,
    )


def test_role_only_and_empty_deltas_make_no_token_events(client, url):
    # The simulator opens with a role-only delta (`content: ""`) and ends with an
    # empty delta carrying finish_reason, then a usage chunk with no choices.
    for content in (f"{marker()} [[sim tokens=3]]", f"{marker()} [[sim tokens=0]]"):
        events = stream(client, url, content)
        assert all(json.loads(e.data)["text"] for e in events if e.event == "token")
        assert ended(events)[0] == "done"
    assert len(events) == 1  # tokens=0: only done
    assert json.loads(events[0].data)["usage"]["completion_tokens"] == 0


def test_generation_starts_at_once_without_a_reader(client, url, simulator):
    m = marker()
    create(client, url, f"{m} [[sim tokens=3]]")
    wait_until(lambda: [r.outcome for r in simulator.sim.find(m)] == ["completed"])


def test_shutdown_closes_the_upstream_and_ends_the_stream_with_shutdown(client, simulator):
    """Stopping the server cancels what is still running after the drain timeout."""
    app = create_app(test_settings(simulator, server={"drain_timeout": 0.2}))
    m = marker()
    with run_server(app) as url:
        create(client, url, f"{m} [[sim tokens=100 delay_ms=100]]")
        wait_until(lambda: simulator.sim.find(m) and simulator.sim.find(m)[0].tokens_sent > 0)
        store = GatewayServer(url, app).state.store
        stream = store._streams[next(iter(store._streams))]
    events = stream.since(0)
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["code"] == "shutdown"
    assert json.loads(events[-1].data)["retryable"] is True
    wait_until(lambda: simulator.sim.find(m)[0].outcome == "client_gone")


def test_coalescing_joins_deltas_but_never_holds_back_the_first(client, gateway, simulator):
    url = gateway(sse={"coalesce_ms": 50}).url
    m = marker()
    answer = f"{m} " + "".join(f"{i:03d}," for i in range(250))
    events = stream(client, url, f"{answer}[[sim echo=1 chunk=4 delay_ms=1]]")
    tokens = tokens_of(events)
    deltas = -(-len(answer) // 4)
    assert ended(events)[0] == "done"
    assert "".join(tokens) == answer
    assert tokens[0] == answer[:4]
    assert len(tokens) <= deltas / 5
    assert simulator.sim.find(m)[0].tokens_sent == deltas
