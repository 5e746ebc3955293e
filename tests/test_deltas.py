"""gateway/deltas.py: a chunk's output as the gateway's own events, and their data."""

from __future__ import annotations

import json

from gateway.chunks import parse_chunk
from gateway.deltas import Delta, deltas


def chunk(delta: dict[str, object]) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta}]})


def test_a_chunk_gives_reasoning_then_text_then_tool_call_pieces():
    payload = chunk(
        {
            "content": "Hi",
            "reasoning_content": "think",
            "tool_calls": [
                {"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}},
                {"index": 1, "function": {"arguments": '{"x"'}},
            ],
        }
    )
    assert deltas(parse_chunk(payload)) == [
        Delta("reasoning", "think"),
        Delta("token", "Hi"),
        Delta("tool_call", "", 0, "call_a", "f"),
        Delta("tool_call", '{"x"', 1),
    ]


def test_a_chunk_without_output_gives_nothing():
    assert deltas(parse_chunk(chunk({"role": "assistant", "content": ""}))) == []
    empty_call = {"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}
    assert deltas(parse_chunk(chunk(empty_call))) == []


def test_event_data():
    assert json.loads(Delta("token", 'a "b"\n').data) == {"text": 'a "b"\n'}
    assert json.loads(Delta("reasoning", "r").data) == {"text": "r"}
    first = Delta("tool_call", "{", 2, "call_b", "g")
    assert json.loads(first.data) == {"index": 2, "id": "call_b", "name": "g", "arguments": "{"}
    assert json.loads(Delta("tool_call", "}", 2).data) == {"index": 2, "arguments": "}"}


def test_only_more_text_of_the_same_piece_continues_a_delta():
    token, call = Delta("token", "a"), Delta("tool_call", "{", 0, "call_a", "f")
    assert token.continued_by(Delta("token", "b"))
    assert not token.continued_by(Delta("reasoning", "b"))
    assert call.continued_by(Delta("tool_call", "}", 0))
    assert not call.continued_by(Delta("tool_call", "}", 1))
    assert not call.continued_by(Delta("tool_call", "", 0, "call_b", "g"))  # a new call
    assert call.joined("}") == Delta("tool_call", "{}", 0, "call_a", "f")
