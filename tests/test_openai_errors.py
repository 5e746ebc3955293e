"""gateway/openai_errors.py: the gateway's errors in OpenAI's shape, with the status
that makes the `openai` SDK raise what it raises for OpenAI itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.errors import (
    GatewayError,
    InvalidJSON,
    InvalidRequest,
    ModelNotFound,
    OverCapacity,
    Shutdown,
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    from_event_data,
)
from gateway.openai_errors import openai_event, openai_response

OPENAI_DOC = Path(__file__).parent.parent / "docs" / "openai.md"


def answered(exc: GatewayError) -> tuple[int, dict[str, object], dict[str, str]]:
    response = openai_response(exc)
    return response.status_code, json.loads(response.body), dict(response.headers)


@pytest.mark.parametrize(
    ("exc", "status", "kind", "param"),
    [
        (InvalidJSON(), 400, "invalid_request_error", None),
        (InvalidRequest(), 400, "invalid_request_error", None),  # OpenAI's 400, not 422
        (ModelNotFound(), 404, "invalid_request_error", "model"),
        (UpstreamRateLimited(), 429, "rate_limit_error", None),
        (UpstreamFailed(), 502, "server_error", None),
        (UpstreamAuth(), 502, "server_error", None),
        (UpstreamTimeout(), 504, "server_error", None),
        (Shutdown(), 503, "server_error", None),
    ],
)
def test_status_type_and_param(exc, status, kind, param):
    assert answered(exc)[:2] == (
        status,
        {"error": {"message": exc.message, "type": kind, "param": param, "code": exc.code}},
    )


def test_retry_after_is_kept():
    status, _, headers = answered(OverCapacity(retry_after=2.5))
    assert (status, headers["retry-after"]) == (503, "3")


def test_a_refused_request_is_answered_as_the_upstream_did():
    upstream = {
        "status": 400,
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    exc = UpstreamBadRequest(upstream["message"], upstream=upstream)
    assert answered(exc)[:2] == (
        400,
        {
            "error": {
                "message": upstream["message"],
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
    )


def test_other_refusals_stay_the_gateways_502():
    """A 409 is not the caller's to fix by changing the request the way a 400 is."""
    exc = UpstreamBadRequest("conflict", upstream={"status": 409, "message": "conflict"})
    status, body, _ = answered(exc)
    assert (status, body["error"]["code"]) == (502, "upstream_bad_request")


def test_the_event_is_the_body_as_one_data_line():
    exc = UpstreamFailed('line\nbreak "quoted"')
    event = openai_event(exc)
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert event.count(b"\n") == 2
    assert json.loads(event[len(b"data: ") :]) == answered(exc)[1]


def test_the_docs_table_states_the_statuses_answered():
    """docs/openai.md's error table: each code in a row with a status is answered
    with that status."""
    text = OPENAI_DOC.read_text()
    table = text[text.index("| failure | status |") :].split("\n\n")[0].splitlines()[2:]
    checked = 0
    for row in table:
        _, status, _, codes = (cell.strip() for cell in row.strip("|").split("|"))
        if not status.isdigit():
            continue  # the upstream's own status
        for code in re.findall(r"`(\w+)`", codes):
            error = from_event_data(json.dumps({"code": code}))  # the class of `code`
            assert error.code == code
            assert answered(error)[0] == int(status), code
            checked += 1
    assert checked >= 10
