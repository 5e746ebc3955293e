"""`parse_chunk` (gateway/chunks.py): the hot path that reads upstream chunks without
SDK models, and what it does with chunks that are not safe to pass on."""

import json

import pytest

from gateway.chunks import Chunk, ToolCallDelta, ToolCalls, parse_chunk
from gateway.errors import UpstreamFailed


def chunk(**fields):
    return json.dumps({"id": "c", "object": "chat.completion.chunk", **fields})


def delta(**fields):
    return chunk(choices=[{"index": 0, "delta": fields, "finish_reason": None}])


def test_content_delta():
    payload = delta(content="Hi")
    assert parse_chunk(payload) == Chunk(payload, content="Hi")
    assert parse_chunk(payload).output


def test_role_only_delta_and_null_content_carry_no_output():
    for payload in (delta(role="assistant"), delta(content=None), delta(content="")):
        parsed = parse_chunk(payload)
        assert parsed.content in (None, "") and not parsed.output


def test_finish_chunk_and_usage_chunk_with_empty_choices():
    finish = chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "length"}], usage=None)
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert parse_chunk(finish).finish_reason == "length"
    assert parse_chunk(chunk(choices=[], usage=usage)).usage == usage


def test_other_choices_are_ignored():
    payload = chunk(
        choices=[
            {"index": 1, "delta": {"content": "other"}, "finish_reason": "stop"},
            {"index": 0, "delta": {"content": "mine"}, "finish_reason": None},
        ]
    )
    assert parse_chunk(payload) == Chunk(payload, content="mine")


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"reasoning_content": "think"}, "think"),
        ({"reasoning": "think"}, "think"),
        (  # OpenRouter sends both: the text once
            {
                "reasoning": "think",
                "reasoning_details": [{"type": "reasoning.text", "text": "think"}],
            },
            "think",
        ),
        (
            {
                "reasoning_details": [
                    {"type": "reasoning.text", "text": "a"},
                    {"type": "reasoning.summary", "summary": "b"},
                ]
            },
            "ab",
        ),
        ({"reasoning_details": [{"type": "reasoning.encrypted", "data": "xyz"}]}, None),
    ],
)
def test_reasoning_under_each_name(fields, text):
    parsed = parse_chunk(delta(**fields))
    assert parsed.reasoning == text and parsed.output == bool(text)


def test_tool_call_deltas_assemble_in_order():
    first = delta(
        tool_calls=[
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "f", "arguments": ""},
            },
            {
                "index": 1,
                "id": "call_b",
                "type": "function",
                "function": {"name": "g", "arguments": '{"x"'},
            },
        ]
    )
    rest = [
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"q": '}}]),
        delta(tool_calls=[{"index": 1, "function": {"arguments": ": 1}"}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
    ]
    parsed = [parse_chunk(payload) for payload in (first, *rest)]
    assert parsed[0].tool_calls == (
        ToolCallDelta(0, "call_a", "f", ""),
        ToolCallDelta(1, "call_b", "g", '{"x"'),
    )
    assert all(p.output for p in parsed)
    calls = ToolCalls()
    for p in parsed:
        for part in p.tool_calls:
            calls.add(part)
    assert calls.assembled() == [
        {"id": "call_a", "name": "f", "arguments": '{"q": 1}'},
        {"id": "call_b", "name": "g", "arguments": '{"x": 1}'},
    ]


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
        delta(reasoning_content=["a"]),
        delta(tool_calls="call"),
        delta(tool_calls=["call"]),
        delta(tool_calls=[{"index": "0", "function": {"arguments": "{}"}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": {"a": 1}}}]),
        delta(tool_calls=[{"index": 0, "function": "f"}]),
        delta(tool_calls=[{"index": 0, "id": 7}]),
        delta(tool_calls=[{"index": 10**9}]),
    ],
)
def test_malformed_chunks(payload):
    with pytest.raises(UpstreamFailed, match="malformed"):
        parse_chunk(payload)


def test_error_object_mid_stream_carries_the_upstreams_account():
    with pytest.raises(UpstreamFailed, match="overloaded") as caught:
        parse_chunk(json.dumps({"error": {"message": "overloaded", "type": "server_error"}}))
    assert caught.value.upstream == {
        "status": None,
        "message": "overloaded",
        "type": "server_error",
    }


def test_raw_utf8_and_escapes_are_relayed_as_sent():
    text = "a\u2028b\u2029c\u0085d😀\\r\\n\\ud83d\\ude00"
    payload = '{"choices": [{"index": 0, "delta": {"content": "' + text + '"}}]}'
    parsed = parse_chunk(payload)
    assert parsed.payload is payload
    assert parsed.content == "a\u2028b\u2029c\u0085d😀\r\n😀"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_nulled_and_such_usage_dropped(constant):
    payload = f'{{"choices": [], "usage": {{"prompt_tokens": {constant}, "completion_tokens": 2}}}}'
    parsed = parse_chunk(payload)
    assert parsed.usage is None
    assert json.loads(parsed.payload, parse_constant=pytest.fail) == {
        "choices": [],
        "usage": {"prompt_tokens": None, "completion_tokens": 2},
    }


def test_usage_overflowing_to_infinity_is_dropped_and_the_json_kept():
    payload = '{"choices": [], "usage": {"prompt_tokens": 1e999}}'
    parsed = parse_chunk(payload)
    assert parsed.usage is None and parsed.payload is payload  # valid JSON, only too big


def test_nested_usage_details_are_kept():
    usage = {"completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 3}}
    assert parse_chunk(chunk(choices=[], usage=usage)).usage == usage


def test_lone_surrogates_become_replacement_characters_everywhere():
    delta = '{"content": "a\\ud800b", "reasoning": "\\uDFFF"}'
    payload = '{"id": "x\\udc00", "choices": [{"index": 0, "delta": ' + delta + "}]}"
    parsed = parse_chunk(payload)
    assert parsed.content == "a\ufffdb" and parsed.reasoning == "\ufffd"
    assert json.loads(parsed.payload)["id"] == "x\ufffd"
    parsed.payload.encode("utf-8")  # no lone surrogate left
