"""`POST /api/stream`: the seed's contract (raw text), its SSE variant and its failures."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import httpx_sse
import pytest

from gateway import create_app
from tests.helpers import create, marker, read_events, run_server, test_settings, text_of

TEXT = 'Plain\ttext\r\nwith data: lines\nevent: x\n\n: and 😀👩🏽‍💻 漢字 עברית "quotes" \\ end'


@pytest.fixture(scope="module")
def url(simulator) -> Iterator[str]:
    """One gateway with `upstream.retries: 0` and a short first-token timeout."""
    settings = test_settings(simulator, upstream={"retries": 0, "timeouts": {"first_token": 0.3}})
    with run_server(create_app(settings)) as gateway_url:
        yield gateway_url


def api(url: str) -> str:
    return f"{url}/api/stream"


def sse_events(
    client: httpx.Client, url: str, body: dict[str, Any]
) -> list[httpx_sse.ServerSentEvent]:
    with httpx_sse.connect_sse(client, "POST", api(url), json=body) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [event for event in source.iter_sse() if event.data]


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    return error


# --- text mode ------------------------------------------------------------------------------


def test_message_streams_the_answer_as_plain_text(client, url):
    response = client.post(api(url), json={"message": f"[[sim echo=1 chunk=4]]{TEXT}"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == TEXT.encode()
    assert response.headers["x-stream-id"]


def test_messages_list_streams_the_answer_as_plain_text(client, url, simulator):
    m = marker()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": f"[[sim echo=1 chunk=1]]{m} {TEXT}"},
    ]
    response = client.post(api(url), json={"messages": messages})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == f"{m} {TEXT}"
    (record,) = simulator.sim.find(m)
    assert record.outcome == "completed"


def test_text_body_equals_the_token_events_of_the_same_prompt(client, url):
    prompt = f"{marker()} [[sim tokens=12]]"
    events = read_events(client, create(client, url, prompt))
    assert [e.event for e in events][-1] == "done"
    expected = text_of(events)
    assert len(expected.split()) == 12
    response = client.post(api(url), json={"message": prompt})
    assert response.status_code == 200
    assert response.text == expected


def test_text_arrives_as_it_is_generated(client, url):
    """Raw text is streamed, not buffered until the end."""
    body = {"message": f"{marker()} [[sim tokens=6 delay_ms=100]]"}
    with client.stream("POST", api(url), json=body) as response:
        assert response.status_code == 200
        pieces = [piece for piece in response.iter_raw() if piece]
    assert len(pieces) >= 3


def test_x_auth_header_is_accepted(client, url):
    response = client.post(
        api(url),
        json={"message": "[[sim echo=1]]hello there"},
        headers={"X-Auth": "some-user-token"},
    )
    assert response.status_code == 200
    assert response.text == "hello there"


def test_options_are_passed_upstream(client, url):
    body = {"message": f"{marker()} [[sim tokens=10]]", "max_tokens": 3, "temperature": 0.5}
    response = client.post(api(url), json=body)
    assert response.status_code == 200
    assert len(response.text.split()) == 3


# --- SSE mode -------------------------------------------------------------------------------


def test_sse_mode_sends_the_same_events_as_v1_streams(client, url):
    prompt = f"{marker()} [[sim tokens=5]]"
    expected = read_events(client, create(client, url, prompt))
    events = sse_events(client, url, {"message": prompt})
    assert [(e.event, e.id, e.data) for e in events] == [(e.event, e.id, e.data) for e in expected]
    assert [e.event for e in events] == ["token"] * 5 + ["done"]
    assert [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert json.loads(events[-1].data)["usage"]["completion_tokens"] == 5


def test_sse_mode_starts_with_retry_and_keeps_text_exact(client, url):
    body = {"messages": [{"role": "user", "content": f"[[sim echo=1 chunk=2]]{TEXT}"}]}
    headers = {"Accept": "text/event-stream"}
    with client.stream("POST", api(url), json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "no-store" in response.headers["cache-control"]
        assert response.headers["x-accel-buffering"] == "no"
        raw = response.read()
    assert raw.startswith(b"retry: ")
    assert b"\r" not in raw
    events = sse_events(client, url, body)
    assert text_of(events) == TEXT
    assert events[-1].event == "done"


def test_sse_mode_failure_after_streaming_began_ends_with_an_error_event(client, url):
    m = marker()
    events = sse_events(client, url, {"message": f"[[sim echo=1 chunk=3 fault=drop after=3]]{m}"})
    assert [e.event for e in events] == ["token"] * 3 + ["error"]
    assert [e.id for e in events] == ["1", "2", "3", "4"]
    assert text_of(events) == m[:9]
    error = json.loads(events[-1].data)
    assert (error["code"], error["retryable"]) == ("upstream_error", True)


# --- failures -------------------------------------------------------------------------------


def test_rate_limit_before_the_first_byte_is_a_429(client, url):
    response = client.post(api(url), json={"message": "[[sim status=429 retry_after=3]] hi"})
    error = assert_json_error(response, 429, "upstream_rate_limited")
    assert response.headers["retry-after"] == "3"
    assert error["retry_after"] == 3


def test_fractional_retry_after_is_rounded_up_never_down(client, url):
    """An HTTP Retry-After is whole seconds: 1.2 s upstream must not become 1 s (too early)."""
    response = client.post(api(url), json={"message": "[[sim status=429 retry_after=1.2]] hi"})
    error = assert_json_error(response, 429, "upstream_rate_limited")
    assert error["retry_after"] == 2
    assert response.headers["retry-after"] == "2"


@pytest.mark.parametrize(
    ("directive", "code"),
    [("fault=drop", "upstream_error"), ("fault=malformed", "upstream_error")],
)
def test_upstream_fault_before_the_first_byte_is_a_502(client, url, directive, code):
    response = client.post(api(url), json={"message": f"[[sim {directive}]] hi"})
    assert_json_error(response, 502, code)


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "upstream_error"), (401, "upstream_auth"), (400, "upstream_bad_request")],
)
def test_upstream_http_error_before_the_first_byte_is_a_502(client, url, status, code):
    response = client.post(api(url), json={"message": f"[[sim status={status}]] hi"})
    assert_json_error(response, 502, code)
    assert "retry-after" not in response.headers


def test_upstream_error_in_sse_mode_before_the_first_byte_is_also_json(client, url):
    response = client.post(
        api(url),
        json={"message": "[[sim status=500]] hi"},
        headers={"Accept": "text/event-stream"},
    )
    assert_json_error(response, 502, "upstream_error")


def test_first_token_timeout_is_a_504(client, url, simulator):
    m = marker()
    response = client.post(api(url), json={"message": f"{m} [[sim delay_ms=2000]]"})
    assert_json_error(response, 504, "upstream_timeout")


@pytest.mark.parametrize("fault", ["no_finish", "eof"])
def test_incomplete_answer_before_the_first_byte_is_an_error(client, url, fault):
    response = client.post(api(url), json={"message": f"[[sim fault={fault}]] hi"})
    assert_json_error(response, 502, "upstream_incomplete")


def test_unreachable_upstream_is_a_502_or_503(client, gateway):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        base_url = f"http://127.0.0.1:{port}/v1"
        gateway_url = gateway(upstream={"retries": 0, "base_url": base_url}).url
        response = client.post(api(gateway_url), json={"message": "hi"})
    assert response.status_code in (502, 503)
    assert_json_error(response, response.status_code, "upstream_unavailable")


def test_failure_after_streaming_began_does_not_look_like_success(client, url, simulator):
    m = marker()
    body = {"message": f"[[sim echo=1 chunk=3 delay_ms=20 fault=drop after=3]]{m} tail"}
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", api(url), json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        for piece in response.iter_raw():
            received += piece
    assert received == m[:9].encode()
    (record,) = simulator.sim.find(m)
    assert (record.outcome, record.tokens_sent) == ("fault", 3)


@pytest.mark.parametrize("fault", ["malformed", "no_finish", "eof"])
def test_other_failures_after_streaming_began_are_abnormal_ends(client, url, fault):
    m = marker()
    body = {"message": f"[[sim echo=1 chunk=2 fault={fault} after=2]]{m}"}
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", api(url), json=body) as response,
    ):
        assert response.status_code == 200
        for piece in response.iter_raw():
            received += piece
    assert received == m[:4].encode()


def test_complete_text_response_ends_normally(client, url):
    """The counterpart of the abnormal ends: a finished answer reads cleanly to its end."""
    with client.stream("POST", api(url), json={"message": "[[sim echo=1]]fine"}) as response:
        assert response.read() == b"fine"
        assert response.is_closed


# --- body validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"message": 42},
        {"message": None},
        {"message": ["a list"]},
        {"messages": []},
        {"messages": "not a list"},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"message": "hi", "temperature": 5},
        {"message": "hi", "max_tokens": 0},
        {},
        {"message": "hi", "messages": [{"role": "user", "content": "hi"}]},
    ],
)
def test_invalid_bodies_are_422(client, url, body):
    assert_json_error(client.post(api(url), json=body), 422, "invalid_request")


def test_malformed_json_is_400(client, url):
    response = client.post(
        api(url), content=b'{"message": ', headers={"Content-Type": "application/json"}
    )
    assert_json_error(response, 400, "invalid_json")


def test_wrong_content_type_is_415(client, url):
    response = client.post(
        api(url), content=b'{"message": "hi"}', headers={"Content-Type": "text/plain"}
    )
    assert_json_error(response, 415, "unsupported_media_type")
