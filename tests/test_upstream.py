"""`parse_chunk`: the hot path that reads upstream chunks without SDK models."""

import json

import pytest

from gateway.errors import UpstreamFailed
from gateway.upstream import parse_chunk


def chunk(**fields):
    return json.dumps({"id": "c", "object": "chat.completion.chunk", **fields})


def test_content_delta():
    payload = chunk(choices=[{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}])
    assert parse_chunk(payload) == ("Hi", None, None)


def test_role_only_delta_and_null_content_carry_no_text():
    role = chunk(choices=[{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])
    null = chunk(choices=[{"index": 0, "delta": {"content": None}, "finish_reason": None}])
    assert parse_chunk(role) == (None, None, None)
    assert parse_chunk(null) == (None, None, None)


def test_finish_chunk_and_usage_chunk_with_empty_choices():
    finish = chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "length"}], usage=None)
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert parse_chunk(finish) == (None, "length", None)
    assert parse_chunk(chunk(choices=[], usage=usage)) == (None, None, usage)


def test_other_choices_are_ignored():
    payload = chunk(
        choices=[
            {"index": 1, "delta": {"content": "other"}, "finish_reason": "stop"},
            {"index": 0, "delta": {"content": "mine"}, "finish_reason": None},
        ]
    )
    assert parse_chunk(payload) == ("mine", None, None)


@pytest.mark.parametrize(
    "payload",
    [
        '{"choices": [',
        "[1, 2]",
        '"text"',
        chunk(choices=[{"index": 0, "delta": {"content": 5}}]),
        chunk(choices=[{"index": 0, "delta": "x"}]),
        chunk(choices="x"),
        chunk(choices=[], usage="many"),
    ],
)
def test_malformed_chunks(payload):
    with pytest.raises(UpstreamFailed, match="malformed"):
        parse_chunk(payload)


def test_error_object_mid_stream():
    with pytest.raises(UpstreamFailed, match="reported an error"):
        parse_chunk(json.dumps({"error": {"message": "overloaded", "type": "server_error"}}))
