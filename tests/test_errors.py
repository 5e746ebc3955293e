"""gateway/errors.py: the one table of statuses and SSE error codes, and the openai mapping."""

from __future__ import annotations

import email.utils
import json
import math
import time

import httpx2
import openai
import pytest

from gateway import errors
from gateway.errors import (
    BodyTooLarge,
    Cancelled,
    Forbidden,
    GatewayError,
    GenerationLost,
    Internal,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    NotFound,
    OverCapacity,
    RateLimited,
    ResumeUnavailable,
    Shutdown,
    StoreUnavailable,
    TooManyStreams,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamFailed,
    UpstreamIncomplete,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_response,
    from_event_data,
    from_upstream,
    openai_response,
)

REQUEST = httpx2.Request("POST", "http://x")

# class, HTTP status, SSE code, retryable: the table in the errors.py docstring.
TABLE = [
    (InvalidJSON, 400, "invalid_json", False),
    (ModelNotAllowed, 400, "model_not_allowed", False),
    (Unauthorized, 401, "unauthorized", False),
    (Forbidden, 403, "forbidden", False),
    (RateLimited, 429, "rate_limited", True),
    (TooManyStreams, 429, "too_many_streams", True),
    (NotFound, 404, "not_found", False),
    (ModelNotFound, 404, "model_not_found", False),
    (MethodNotAllowed, 405, "method_not_allowed", False),
    (BodyTooLarge, 413, "body_too_large", False),
    (UnsupportedMediaType, 415, "unsupported_media_type", False),
    (InvalidRequest, 422, "invalid_request", False),
    (OverCapacity, 503, "over_capacity", True),
    (StoreUnavailable, 503, "store_unavailable", True),
    (GenerationLost, 503, "generation_lost", True),
    (ResumeUnavailable, 409, "resume_unavailable", False),
    (Cancelled, 409, "cancelled", False),
    (Shutdown, 503, "shutdown", True),
    (Internal, 500, "internal", False),
    (UpstreamUnavailable, 502, "upstream_unavailable", True),
    (UpstreamTimeout, 504, "upstream_timeout", True),
    (UpstreamRateLimited, 429, "upstream_rate_limited", True),
    (UpstreamFailed, 502, "upstream_error", True),
    (UpstreamIncomplete, 502, "upstream_incomplete", True),
    (UpstreamAuth, 502, "upstream_auth", False),
    (UpstreamBadRequest, 502, "upstream_bad_request", False),
]

RETRYABLE = {
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_rate_limited",
    "upstream_error",
    "upstream_incomplete",
    "over_capacity",
    "rate_limited",
    "too_many_streams",
    "shutdown",
    "store_unavailable",
    "generation_lost",
}


def all_classes() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    todo = [GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def status_error(
    status: int,
    headers: dict[str, str] | None = None,
    cls: type[openai.APIStatusError] = openai.APIStatusError,
    message: str = "upstream said no",
) -> openai.APIStatusError:
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    return cls(message, response=response, body={"message": message})


# --- the table ---------------------------------------------------------------


@pytest.mark.parametrize(("cls", "status", "code", "retryable"), TABLE)
def test_table(cls, status, code, retryable):
    assert (cls.status, cls.code, cls.retryable) == (status, code, retryable)
    error = cls()
    assert error.message == cls.default_message
    assert error.message
    assert str(error) == error.message
    assert error.retry_after is None
    challenge = {"WWW-Authenticate": 'Bearer realm="sse-gateway"'}
    assert error.headers() == (challenge if cls is Unauthorized else {})


def test_every_class_is_in_the_table():
    listed = {row[0] for row in TABLE} | {GatewayError, UpstreamError}
    assert set(all_classes()) == listed


def test_retryable_set_is_exact():
    assert {cls.code for cls in all_classes() if cls.retryable} == RETRYABLE
    assert {cls.code for cls in all_classes() if not cls.retryable} == {
        "invalid_json",
        "model_not_allowed",
        "unauthorized",
        "forbidden",
        "not_found",
        "model_not_found",
        "method_not_allowed",
        "body_too_large",
        "unsupported_media_type",
        "invalid_request",
        "resume_unavailable",
        "cancelled",
        "internal",
        "upstream_auth",
        "upstream_bad_request",
    }


def test_upstream_errors_are_never_4xx_except_429():
    for cls in all_classes():
        if issubclass(cls, UpstreamError):
            assert cls.status == 429 or cls.status >= 500, cls


# --- event_data, body, headers, error_response -------------------------------


@pytest.mark.parametrize(("cls", "status", "code", "retryable"), TABLE)
def test_event_data(cls, status, code, retryable):
    assert json.loads(cls("Something broke.").event_data()) == {
        "code": code,
        "message": "Something broke.",
        "retryable": retryable,
    }


@pytest.mark.parametrize(("cls", "status", "code", "retryable"), TABLE)
def test_body_shape(cls, status, code, retryable):
    assert cls("Nope.").body() == {"error": {"code": code, "message": "Nope."}}


def test_event_data_is_one_line_of_json():
    data = UpstreamFailed('line\nbreak\r"quoted" 🎉').event_data()
    assert "\n" not in data
    assert "\r" not in data
    assert json.loads(data)["message"] == 'line\nbreak\r"quoted" 🎉'


def test_retry_after_in_event_data_body_and_headers():
    error = UpstreamRateLimited("Slow down.", retry_after=3.0)
    assert json.loads(error.event_data()) == {
        "code": "upstream_rate_limited",
        "message": "Slow down.",
        "retryable": True,
        "retry_after": 3.0,
    }
    assert error.body() == {
        "error": {"code": "upstream_rate_limited", "message": "Slow down.", "retry_after": 3.0}
    }
    assert error.headers() == {"Retry-After": "3"}


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.2, "2"), (2.5, "3"), (7.0, "7")],
)
def test_retry_after_header_is_whole_seconds_rounded_up(seconds, header):
    # Never shorter than the real wait, or clients come back too early.
    assert OverCapacity(retry_after=seconds).headers() == {"Retry-After": header}


def test_retry_after_is_whole_seconds_everywhere():
    """A rate limit's remaining window (56.73 s) is 57 in the body and the event too."""
    error = OverCapacity(retry_after=56.73452874700001)
    assert error.body()["error"]["retry_after"] == 57
    assert json.loads(error.event_data())["retry_after"] == 57
    assert error.headers() == {"Retry-After": "57"}


def test_error_response():
    response = error_response(OverCapacity(retry_after=2))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "2"
    assert json.loads(response.body) == {
        "error": {
            "code": "over_capacity",
            "message": OverCapacity.default_message,
            "retry_after": 2,
        }
    }


def test_error_response_without_retry_after():
    response = error_response(NotFound())
    assert response.status_code == 404
    assert "retry-after" not in response.headers
    assert json.loads(response.body) == {"error": {"code": "not_found", "message": "Not found."}}


# --- from_event_data ----------------------------------------------------------


@pytest.mark.parametrize(("cls", "status", "code", "retryable"), TABLE)
@pytest.mark.parametrize("retry_after", [None, 4.5])
def test_from_event_data_round_trips(cls, status, code, retryable, retry_after):
    original = cls("A message.", retry_after=retry_after)
    rebuilt = from_event_data(original.event_data())
    assert (rebuilt.status, rebuilt.code, rebuilt.retryable) == (status, code, retryable)
    assert rebuilt.message == "A message."
    assert rebuilt.retry_seconds == original.retry_seconds
    assert rebuilt.event_data() == original.event_data()
    assert rebuilt.body() == original.body()
    assert rebuilt.headers() == original.headers()


@pytest.mark.parametrize(
    "cls",
    [row[0] for row in TABLE if row[0] not in (Internal, UpstreamFailed)],
)
def test_from_event_data_rebuilds_the_class(cls):
    # Internal and UpstreamFailed share their code with GatewayError and UpstreamError.
    assert type(from_event_data(cls().event_data())) is cls


def test_from_event_data_unknown_code_is_internal():
    rebuilt = from_event_data('{"code": "no_such_code", "message": "?", "retryable": true}')
    assert (rebuilt.status, rebuilt.code, rebuilt.retryable) == (500, "internal", False)
    assert rebuilt.message == "?"


# --- from_upstream -------------------------------------------------------------


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


def test_the_upstream_error_object_is_bounded_and_answered_as_sent_to_openai_clients():
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
    assert set(error.upstream) == {"status", "message", "type", "param", "code"}
    answer = openai_response(error)
    assert answer.status_code == 400
    assert json.loads(answer.body)["error"] == {
        "message": error.message,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert from_event_data(error.event_data()).upstream == error.upstream


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


def test_module_exports_every_class():
    for cls in all_classes():
        assert cls.__name__ in errors.__all__
