"""gateway/upstream_errors.py: an upstream's error responses, aiohttp's exceptions, and
the upstream's own error objects, as gateway errors."""

from __future__ import annotations

import email.utils
import json
import math
import time

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.errors import (
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    from_event_data,
)
from gateway.upstream_errors import from_status, from_transport, upstream_detail


def status_error(
    status: int, headers: dict[str, str] | None = None, message: str = "upstream said no"
) -> UpstreamError:
    body = json.dumps({"error": {"message": message}}).encode()
    return from_status(status, CIMultiDict(headers or {}), body)  # as aiohttp gives them


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0"}, 0.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "500", "Retry-After": "7"}, 0.5),
        ({"retry-after-ms": "soon", "Retry-After": "7"}, 7.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "86400"}, 3600.0),
        ({}, None),
    ],
)
def test_rate_limited(headers, retry_after):
    error = status_error(429, headers)
    assert type(error) is UpstreamRateLimited
    assert (error.status, error.code, error.retryable) == (429, "upstream_rate_limited", True)
    assert error.retry_after == retry_after
    assert error.message == "upstream said no"  # the upstream's own
    expected = {
        "code": "upstream_rate_limited",
        "message": error.message,
        "retryable": True,
        "upstream": {"status": 429, "message": "upstream said no"},
    }
    if retry_after is not None:
        expected["retry_after"] = max(1, math.ceil(retry_after))  # whole seconds
    assert json.loads(error.event_data()) == expected


def test_rate_limited_with_retry_after_as_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    error = status_error(429, {"Retry-After": when})
    assert error.retry_after is not None
    assert 25 < error.retry_after <= 30


def test_rate_limited_with_retry_after_date_in_the_past_is_zero():
    error = status_error(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert error.retry_after == 0.0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, UpstreamAuth),
        (403, UpstreamAuth),
        (400, UpstreamBadRequest),
        (404, UpstreamBadRequest),
        (409, UpstreamBadRequest),
        (413, UpstreamBadRequest),
        (422, UpstreamBadRequest),
        (500, UpstreamFailed),
        (502, UpstreamFailed),
        (503, UpstreamFailed),
        (504, UpstreamFailed),
    ],
)
def test_status_errors(status, expected):
    error = status_error(status)
    assert type(error) is expected
    if expected is UpstreamAuth:  # about the gateway's key: the upstream's words stay out
        assert error.message == f"The upstream answered HTTP {status}."
        assert error.upstream is None
    else:
        assert error.message == "upstream said no"
        assert error.upstream == {"status": status, "message": "upstream said no"}
    assert error.retry_after is None
    assert error.status == 502


@pytest.mark.parametrize(
    ("body", "message", "detail"),
    [
        (b"overloaded, try later\n", "overloaded, try later", {"message": "overloaded, try later"}),
        (
            b'{"message": "flat object", "code": 7}',
            "flat object",
            {"message": "flat object", "code": 7},
        ),
        (b"", "The upstream answered HTTP 503.", {}),
        (
            b"<html>\xff\xfe</html>",
            "<html>\ufffd\ufffd</html>",
            {"message": "<html>\ufffd\ufffd</html>"},
        ),
        (b"[" * 100_000, "[" * 1000, {"message": "[" * 1000}),
        (b'{"error": {"message": NaN}}', "The upstream answered HTTP 503.", {}),
    ],
)
def test_an_error_body_that_is_not_an_openai_error_object(body, message, detail):
    """Text, another shape, nothing, bad UTF-8, nesting too deep to parse, `NaN`."""
    error = from_status(503, {}, body)
    assert type(error) is UpstreamFailed
    assert error.message == message
    assert error.upstream == {"status": 503, **detail}
    json.loads(error.event_data(), parse_constant=pytest.fail)


def test_auth_and_bad_request_are_not_retryable_but_5xx_is():
    assert status_error(401).retryable is False
    assert status_error(400).retryable is False
    assert status_error(500).retryable is True


def test_credentials_in_the_upstream_message_are_never_passed_on():
    secret = "sk-live-LEAKED-0123456789"
    for status in (400, 401, 429, 500):
        error = status_error(status, message=f"Incorrect API key provided: {secret}")
        assert secret not in error.message
        assert secret not in error.event_data()
        assert secret not in json.dumps(error.body())
        assert secret not in str(error)


def test_the_upstream_error_object_is_bounded():
    body = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens." + "x" * 5000,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
            "extra": "not passed",
        }
    }
    error = from_status(400, {}, json.dumps(body).encode())
    assert error.message.startswith("This model's maximum context length is 8192 tokens.")
    assert len(error.message) == 1000
    assert error.upstream == {
        "status": 400,
        "message": error.message,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert from_event_data(error.event_data()).upstream == error.upstream


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("overloaded", {"message": "overloaded"}),
        ({"error": {"message": "m", "code": 42}}, {"message": "m", "code": 42}),
        ({"message": "m", "code": True, "type": None, "param": ["x"]}, {"message": "m"}),
        ({"error": ["not", "an", "object"]}, {}),
        (None, {}),
    ],
)
def test_upstream_detail_keeps_only_strings_and_numbers(body, detail):
    """What an upstream sends mid-stream need not be an object of strings."""
    assert upstream_detail(body) == {"status": None, **detail}


CONNECTION = aiohttp.client_reqrep.ConnectionKey("x", 80, False, True, None, None, None)


@pytest.mark.parametrize(
    ("exc", "streaming", "expected"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), False, UpstreamTimeout),
        (aiohttp.SocketTimeoutError("read"), False, UpstreamTimeout),
        (aiohttp.SocketTimeoutError("read"), True, UpstreamTimeout),
        (TimeoutError(), True, UpstreamTimeout),
        (
            aiohttp.ClientConnectorError(CONNECTION, ConnectionRefusedError(111, "refused")),
            False,
            UpstreamUnavailable,
        ),
        (aiohttp.ServerDisconnectedError(), False, UpstreamUnavailable),
        (aiohttp.ServerDisconnectedError(), True, UpstreamFailed),
        (aiohttp.ClientPayloadError("cut"), True, UpstreamFailed),
        (aiohttp.ClientOSError(104, "reset"), True, UpstreamFailed),
    ],
)
def test_transport_errors(exc, streaming, expected):
    error = from_transport(exc, streaming=streaming)
    assert type(error) is expected
    assert error.retryable
    if expected is UpstreamFailed:
        assert error.message == "The upstream connection was lost mid-stream."


def test_a_response_that_cannot_be_read_is_upstream_error():
    exc = aiohttp.ClientResponseError(
        aiohttp.RequestInfo("http://x", "POST", {}, "http://x"),
        (),
        status=400,
        message="Invalid header",
    )  # type: ignore[arg-type]
    error = from_transport(exc, streaming=False)
    assert type(error) is UpstreamFailed
    assert error.message == UpstreamFailed.default_message
