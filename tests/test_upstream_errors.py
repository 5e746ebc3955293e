"""gateway/upstream_errors.py: the `openai` SDK's and `httpx2`'s exceptions, and the
upstream's own error objects, as gateway errors."""

from __future__ import annotations

import email.utils
import json
import math
import time

import httpx2
import openai
import pytest

from gateway.errors import (
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    from_event_data,
)
from gateway.upstream_errors import from_upstream, upstream_detail

REQUEST = httpx2.Request("POST", "http://x")


def status_error(
    status: int,
    headers: dict[str, str] | None = None,
    cls: type[openai.APIStatusError] = openai.APIStatusError,
    message: str = "upstream said no",
) -> openai.APIStatusError:
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    return cls(message, response=response, body={"message": message})


@pytest.mark.parametrize("streaming", [False, True])
def test_timeout(streaming):
    error = from_upstream(openai.APITimeoutError(request=REQUEST), streaming=streaming)
    assert type(error) is UpstreamTimeout
    assert (error.status, error.code, error.retryable) == (504, "upstream_timeout", True)


def test_connection_error_before_streaming_is_unavailable():
    error = from_upstream(openai.APIConnectionError(request=REQUEST), streaming=False)
    assert type(error) is UpstreamUnavailable
    assert (error.status, error.code, error.retryable) == (502, "upstream_unavailable", True)


def test_connection_error_mid_stream_is_upstream_error():
    error = from_upstream(openai.APIConnectionError(request=REQUEST), streaming=True)
    assert type(error) is UpstreamFailed
    assert (error.status, error.code, error.retryable) == (502, "upstream_error", True)
    assert error.message == "The upstream connection was lost mid-stream."


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
@pytest.mark.parametrize("streaming", [False, True])
def test_rate_limited(headers, retry_after, streaming):
    exc = status_error(429, headers, openai.RateLimitError)
    error = from_upstream(exc, streaming=streaming)
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
    exc = status_error(429, {"Retry-After": when}, openai.RateLimitError)
    error = from_upstream(exc, streaming=False)
    assert error.retry_after is not None
    assert 25 < error.retry_after <= 30


def test_rate_limited_with_retry_after_date_in_the_past_is_zero():
    exc = status_error(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, openai.RateLimitError)
    assert from_upstream(exc, streaming=False).retry_after == 0.0


@pytest.mark.parametrize(
    ("status", "sdk_class", "expected"),
    [
        (401, openai.AuthenticationError, UpstreamAuth),
        (403, openai.PermissionDeniedError, UpstreamAuth),
        (400, openai.BadRequestError, UpstreamBadRequest),
        (404, openai.NotFoundError, UpstreamBadRequest),
        (409, openai.ConflictError, UpstreamBadRequest),
        (422, openai.UnprocessableEntityError, UpstreamBadRequest),
        (413, openai.APIStatusError, UpstreamBadRequest),
        (500, openai.InternalServerError, UpstreamFailed),
        (502, openai.InternalServerError, UpstreamFailed),
        (503, openai.InternalServerError, UpstreamFailed),
        (504, openai.InternalServerError, UpstreamFailed),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
def test_status_errors(status, sdk_class, expected, streaming):
    error = from_upstream(status_error(status, cls=sdk_class), streaming=streaming)
    assert type(error) is expected
    if expected is UpstreamAuth:  # about the gateway's key: the upstream's words stay out
        assert error.message == f"The upstream answered HTTP {status}."
        assert error.upstream is None
    else:
        assert error.message == "upstream said no"
        assert error.upstream == {"status": status, "message": "upstream said no"}
    assert error.retry_after is None
    assert error.status == 502


def test_auth_and_bad_request_are_not_retryable_but_5xx_is():
    assert from_upstream(status_error(401), streaming=False).retryable is False
    assert from_upstream(status_error(400), streaming=False).retryable is False
    assert from_upstream(status_error(500), streaming=False).retryable is True


def test_credentials_in_the_upstream_message_are_never_passed_on():
    secret = "sk-live-LEAKED-0123456789"
    for status in (400, 401, 429, 500):
        exc = status_error(status, message=f"Incorrect API key provided: {secret}")
        error = from_upstream(exc, streaming=False)
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
    response = httpx2.Response(400, request=REQUEST)
    exc = openai.BadRequestError("bad", response=response, body=body["error"])
    error = from_upstream(exc, streaming=False)
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


def test_api_error_mid_stream():
    exc = openai.APIError("An error occurred during streaming", REQUEST, body={"message": "x"})
    error = from_upstream(exc, streaming=True)
    assert type(error) is UpstreamFailed
    assert error.message == "The upstream reported an error mid-stream."


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx2.ReadTimeout("slow"), UpstreamTimeout),
        (httpx2.RemoteProtocolError("peer closed connection"), UpstreamFailed),
        (httpx2.ReadError("reset"), UpstreamFailed),
    ],
)
def test_transport_errors_while_reading_a_body(exc, expected):
    error = from_upstream(exc, streaming=True)
    assert type(error) is expected
    assert error.retryable


def test_unknown_exception_is_upstream_error():
    error = from_upstream(RuntimeError("boom"), streaming=True)
    assert type(error) is UpstreamFailed
    assert error.message == UpstreamFailed.default_message


def test_from_upstream_with_errors_raised_by_the_sdk_client():
    # The SDK's own factory builds the exception subclasses from a response.
    with openai.OpenAI(api_key="k", base_url="http://x/v1", max_retries=0) as client:
        response = httpx2.Response(
            429, headers={"retry-after-ms": "2000"}, json={"error": {}}, request=REQUEST
        )
        exc = client._make_status_error_from_response(response)
    assert isinstance(exc, openai.RateLimitError)
    error = from_upstream(exc, streaming=False)
    assert type(error) is UpstreamRateLimited
    assert error.retry_after == 2.0
