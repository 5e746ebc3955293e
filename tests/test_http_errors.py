"""Errors answered before any stream starts: one JSON shape, the right status, no traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway import create_app
from tests.helpers import marker, run_server, test_settings, wait_until

MAX_BODY = 2000
MAX_MESSAGES = 4
PATHS = ["/v1/streams", "/api/stream"]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def url(simulator) -> Iterator[str]:
    """One gateway with small limits, shared by this module."""
    settings = test_settings(
        simulator, limits={"max_body_bytes": MAX_BODY, "max_messages": MAX_MESSAGES}
    )
    with run_server(create_app(settings)) as gateway_url:
        yield gateway_url


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error shape: `{"error": {"code", "message"}}` with the right status."""
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "retry_after", "upstream"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"].strip()
    return error


def user(content: str = "hi") -> dict[str, str]:
    return {"role": "user", "content": content}


def chat(path: str, **fields: Any) -> dict[str, Any]:
    """A valid body for `path` (then changed by `fields`)."""
    body: dict[str, Any] = {"messages": [user()]} if path == "/v1/streams" else {"message": "hi"}
    body.update(fields)
    return body


# --- 400, 415, 413 --------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "content", [b'{"messages": [', b"", b"{'single': 1}", b"\xff\xfe{}", b"nul"]
)
def test_malformed_json_is_400(client, url, path, content):
    response = client.post(f"{url}{path}", content=content, headers=JSON)
    error = assert_error(response, 400, "invalid_json")
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "json"],
)
def test_wrong_or_missing_content_type_is_415(client, url, path, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    content = json.dumps(chat(path)).encode()
    response = client.post(f"{url}{path}", content=content, headers=headers)
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", PATHS)
def test_json_with_charset_is_accepted(client, url, path):
    content = json.dumps(chat(path)).encode()
    headers = {"Content-Type": "Application/JSON; charset=utf-8"}
    response = client.post(f"{url}{path}", content=content, headers=headers)
    assert response.status_code in (200, 201), response.text


def oversized(path: str) -> bytes:
    body = chat(path, **({"messages": [user("x" * MAX_BODY)]} if path == "/v1/streams" else {}))
    if path == "/api/stream":
        body["message"] = "x" * MAX_BODY
    content = json.dumps(body).encode()
    assert len(content) > MAX_BODY
    return content


@pytest.mark.parametrize("path", PATHS)
def test_body_over_the_limit_with_content_length_is_413(client, url, path):
    response = client.post(f"{url}{path}", content=oversized(path), headers=JSON)
    assert_error(response, 413, "body_too_large")


@pytest.mark.parametrize("path", PATHS)
def test_chunked_body_over_the_limit_is_413(client, url, path):
    content = oversized(path)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(content), 500):
            yield content[start : start + 500]

    response = client.post(f"{url}{path}", content=chunks(), headers=JSON)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "body_too_large")


@pytest.mark.parametrize("path", PATHS)
def test_body_at_the_limit_is_accepted(client, url, path):
    body = chat(path)
    size = len(json.dumps(body).encode())
    if path == "/v1/streams":
        body["messages"] = [user("y" * (MAX_BODY - size + 2))]
    else:
        body["message"] = "y" * (MAX_BODY - size + 2)
    content = json.dumps(body).encode()
    assert len(content) == MAX_BODY
    response = client.post(f"{url}{path}", content=content, headers=JSON)
    assert response.status_code in (200, 201), response.text


# --- 422 ------------------------------------------------------------------------------------

INVALID_CHAT = {
    "empty_messages": {"messages": []},
    "missing_messages": {},
    "messages_null": {"messages": None},
    "messages_not_a_list": {"messages": "hi"},
    "message_not_an_object": {"messages": ["hi"]},
    "wrong_role": {"messages": [{"role": "robot", "content": "hi"}]},
    "role_case": {"messages": [{"role": "User", "content": "hi"}]},
    "missing_role": {"messages": [{"content": "hi"}]},
    "missing_content": {"messages": [{"role": "user"}]},
    "content_number": {"messages": [{"role": "user", "content": 3}]},
    "content_null": {"messages": [{"role": "user", "content": None}]},
    "content_part_not_an_object": {"messages": [{"role": "user", "content": ["hi"]}]},
    "temperature_high": {"messages": [user()], "temperature": 2.5},
    "temperature_negative": {"messages": [user()], "temperature": -0.1},
    "temperature_string": {"messages": [user()], "temperature": "0.5"},
    "temperature_bool": {"messages": [user()], "temperature": True},
    "max_tokens_zero": {"messages": [user()], "max_tokens": 0},
    "max_tokens_negative": {"messages": [user()], "max_tokens": -5},
    "max_tokens_float": {"messages": [user()], "max_tokens": 1.5},
    "max_tokens_string": {"messages": [user()], "max_tokens": "10"},
    "model_empty": {"messages": [user()], "model": ""},
    "model_number": {"messages": [user()], "model": 4},
    "too_many_messages": {"messages": [user()] * (MAX_MESSAGES + 1)},
}


@pytest.mark.parametrize("name", list(INVALID_CHAT))
def test_invalid_fields_are_422(client, url, simulator, name):
    m = marker()
    body = json.loads(json.dumps(INVALID_CHAT[name]).replace('"hi"', json.dumps(m)))
    response = client.post(f"{url}/v1/streams", json=body)
    assert_error(response, 422, "invalid_request")
    assert not simulator.sim.find(m), "an invalid request reached the upstream"


@pytest.mark.parametrize("body", [[], [{"messages": [{"role": "user", "content": "hi"}]}], "x", 1])
@pytest.mark.parametrize("path", PATHS)
def test_json_that_is_not_an_object_is_422(client, url, path, body):
    response = client.post(f"{url}{path}", json=body)
    assert_error(response, 422, "invalid_request")


def test_max_messages_is_allowed(client, url):
    response = client.post(f"{url}/v1/streams", json={"messages": [user()] * MAX_MESSAGES})
    assert response.status_code == 201, response.text


def test_valid_edge_values_are_accepted(client, url):
    for fields in ({"temperature": 0}, {"temperature": 2}, {"temperature": 1}, {"max_tokens": 1}):
        response = client.post(f"{url}/v1/streams", json={"messages": [user()], **fields})
        assert response.status_code == 201, (fields, response.text)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"model": "sim-1"},
        {"message": "hi", "messages": [{"role": "user", "content": "hi"}]},
        {"message": None, "messages": None},
    ],
)
def test_api_stream_needs_exactly_one_of_message_or_messages(client, url, body):
    response = client.post(f"{url}/api/stream", json=body)
    assert_error(response, 422, "invalid_request")


def test_api_stream_too_many_messages_is_422(client, url):
    response = client.post(f"{url}/api/stream", json={"messages": [user()] * (MAX_MESSAGES + 1)})
    assert_error(response, 422, "invalid_request")


# --- 404, 405 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/"),
        ("GET", "/v1/nothing"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/streams/abc/events/more"),
        ("GET", "/api/"),
        ("POST", "/api/streams"),
        ("GET", "/api/stream/x"),
        ("DELETE", "/api/anything"),
    ],
)
def test_unknown_paths_are_404_json(client, url, method, path):
    assert_error(client.request(method, f"{url}{path}"), 404, "not_found")


def test_unknown_stream_is_404_json(client, url):
    assert_error(client.get(f"{url}/v1/streams/no-such-stream/events"), 404, "not_found")
    assert_error(client.delete(f"{url}/v1/streams/no-such-stream"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/streams", {"POST"}),
        ("PUT", "/v1/streams", {"POST"}),
        ("DELETE", "/v1/streams", {"POST"}),
        ("PUT", "/api/stream", {"POST"}),
        ("GET", "/api/stream", {"POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("DELETE", "/readyz", {"GET", "HEAD"}),
        ("POST", "/v1/streams/some-id/events", {"GET", "HEAD"}),
        ("GET", "/v1/streams/some-id", {"DELETE"}),
    ],
)
def test_wrong_method_is_405_json_with_allow(client, url, method, path, allowed):
    response = client.request(method, f"{url}{path}")
    assert_error(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


# --- 503 over the concurrency limit ---------------------------------------------------------


def test_over_the_concurrency_limit_is_503_with_retry_after(client, gateway):
    server = gateway(limits={"max_concurrent_streams": 1})
    body = {"messages": [user(f"{marker()} [[sim tokens=200 delay_ms=50]]")]}
    first = client.post(f"{server.url}/v1/streams", json=body)
    assert first.status_code == 201
    for path in PATHS:
        response = client.post(f"{server.url}{path}", json=chat(path))
        error = assert_error(response, 503, "over_capacity")
        assert int(response.headers["retry-after"]) >= 1
        assert error["retry_after"] >= 1
    # Once the running stream ends, its slot is free again.
    assert client.delete(f"{server.url}/v1/streams/{first.json()['id']}").status_code == 204
    wait_until(lambda: server.state.generations.active == 0)
    response = client.post(f"{server.url}/v1/streams", json={"messages": [user()]})
    assert response.status_code == 201, response.text


def test_failed_streams_free_their_slot(client, gateway):
    server = gateway(limits={"max_concurrent_streams": 1}, upstream={"retries": 0})
    for _ in range(3):
        response = client.post(f"{server.url}/api/stream", json={"message": "[[sim status=500]]"})
        assert_error(response, 502, "upstream_error")
    wait_until(lambda: server.state.generations.active == 0)
    response = client.post(f"{server.url}/api/stream", json={"message": "[[sim echo=1]]ok"})
    assert (response.status_code, response.text) == (200, "ok")


# --- health ---------------------------------------------------------------------------------


def test_healthz_and_readyz(client, url):
    for path in ("/healthz", "/readyz"):
        response = client.get(f"{url}{path}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert "Traceback" not in response.text
