"""Hostile input against one real gateway: huge, deep, mistyped or malformed bodies get a
4xx JSON error without reaching the upstream, and random bodies and headers (hypothesis)
never get a 5xx."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import create_app
from gateway.auth import hash_key
from tests.helpers import TIMEOUT, marker, run_server, test_settings

KEY = "fuzz-key-3c9d"
MAX_BODY = 20_000


@pytest.fixture(scope="module")
def server(simulator) -> Iterator[str]:
    """One gateway for the module (hypothesis runs many examples against it)."""
    overrides: dict[str, Any] = {
        "limits": {"max_body_bytes": MAX_BODY, "max_tokens": 1000, "allowed_models": ["sim-1"]},
        "streams": {"disconnect_grace": 0.5},
    }
    with run_server(create_app(test_settings(simulator, **overrides))) as url:
        yield url


@pytest.fixture(scope="module")
def secured(simulator) -> Iterator[str]:
    auth = {"mode": "api_key", "api_keys": [hash_key(KEY)]}
    with run_server(create_app(test_settings(simulator, auth=auth))) as url:
        yield url


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


def user(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


HI = json.dumps(user("hi")).encode()
BAD = "invalid_request"


def test_a_huge_chunked_body_is_refused_without_being_read(server, simulator):
    """Up to 1 GB offered in chunks: the answer is a 413 after about `max_body_bytes`."""
    parts = urlsplit(server)
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        head = (
            "POST /v1/streams HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        deadline = time.monotonic() + 20
        while sent < 1 << 30 and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.01)
            if readable:
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = sock.recv(65536)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body == {
        "error": {"code": "body_too_large", "message": f"The body is larger than {MAX_BODY} bytes."}
    }
    assert sent < 10 * 1024 * 1024  # refused long before the gigabyte


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, {}, 413, "body_too_large"),
        (b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400, "invalid_json"),
        (HI, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (HI, {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        (b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}]}', {}, 400, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "\\ud800 lone"}]}', {}, 400, "invalid_json"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), {}, 422, BAD),
        (json.dumps({"messages": [{"role": "user", "content": {"a": 1}}]}).encode(), {}, 422, BAD),
        (json.dumps({**user("x"), "max_tokens": 10**30}).encode(), {}, 422, "invalid_request"),
        (json.dumps({**user("x"), "model": "other"}).encode(), {}, 400, "model_not_allowed"),
        (b"", {}, 400, "invalid_json"),
    ],
    ids=[
        "too-large", "deep", "text-plain", "form", "invalid-utf8", "lone-surrogate",
        "unknown-role", "object-content", "huge-max-tokens", "unknown-model", "empty",
    ],
)  # fmt: skip
def test_bad_bodies_are_refused_before_the_upstream(
    http, server, simulator, content, headers, status, code
):
    word = marker()
    content = content.replace(b'"hi"', f'"{word}"'.encode())
    for path in ("/v1/streams", "/api/stream"):
        request_headers = {"Content-Type": "application/json", **headers}
        response = http.post(f"{server}{path}", content=content, headers=request_headers)
        assert_error(response, status, code)
    assert simulator.sim.find(word) == []


# --- fuzzing -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
roles = st.sampled_from(["user", "system", "assistant", "tool", ""])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": json_values}), max_size=3)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"messages": messages},
        optional={
            "model": st.one_of(st.text(max_size=20), st.just("sim-1"), json_values),
            "max_tokens": st.one_of(st.integers(), json_values),
            "temperature": st.one_of(st.floats(), json_values),
            "message": json_values,
            "extra": json_values,
        },
    ),
)
# What an HTTP client sends at all: printable ASCII, no surrounding spaces.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(
    str.strip
)
headers = st.dictionaries(
    st.sampled_from(
        ["Authorization", "X-Auth", "Content-Type", "Last-Event-ID", "X-Forwarded-For",
         "X-Request-ID", "Origin", "Accept"]
    ),
    header_text | st.sampled_from(["application/json", f"Bearer {KEY}", KEY, "text/event-stream"]),
    max_size=4,
)  # fmt: skip
paths = st.sampled_from(["/v1/streams", "/api/stream", "/v1/chat/completions"])
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(path=paths, body=bodies, extra=headers, raw=st.booleans())
def test_random_bodies_and_headers_never_get_a_5xx(http, server, secured, path, body, extra, raw):
    content = json.dumps(body).encode()
    if raw:  # bytes that need not be JSON, or UTF-8
        content = content[: len(content) // 2] + b"\xff\x00" + content[len(content) // 2 :]
    for url in (server, secured):
        request_headers = {"Content-Type": "application/json", **extra}
        response = http.post(f"{url}{path}", content=content, headers=request_headers)
        assert response.status_code < 500, (response.status_code, response.text)
        if response.status_code >= 400:
            assert "error" in response.json()


@FUZZ
@given(stream_id=st.text(max_size=80), extra=headers)
def test_random_stream_ids_and_headers_never_get_a_5xx(http, server, secured, stream_id, extra):
    for url in (server, secured):
        path = "/v1/streams/" + quote(stream_id, safe="")
        response = http.delete(f"{url}{path}", headers=extra)
        assert response.status_code < 500, (response.status_code, response.text)
