"""Stored events as the AI SDK's UI message stream chunks: every event kind."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.ui_stream import DONE, UIMessageStream, encode, finish_reason

Event = tuple[str, dict[str, Any]]


def chunks(*events: Event) -> list[dict[str, Any]]:
    stream = UIMessageStream("msg-1")
    out = stream.opening()
    for event, data in events:
        out += stream.chunks(event, data)
    return out


OPENING = [{"type": "start", "messageId": "msg-1"}, {"type": "start-step"}]
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_tokens_are_one_text_part_then_finish_with_usage():
    got = chunks(
        ("token", {"text": "Hel"}),
        ("token", {"text": "lo"}),
        ("done", {"finish_reason": "stop", "usage": USAGE}),
    )
    assert got == [
        *OPENING,
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Hel"},
        {"type": "text-delta", "id": "text-1", "delta": "lo"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop", "messageMetadata": {"usage": USAGE}},
    ]


def test_without_usage_finish_has_no_metadata_and_empty_tokens_give_nothing():
    got = chunks(("token", {"text": ""}), ("done", {"finish_reason": "length", "usage": None}))
    assert got == [*OPENING, {"type": "finish-step"}, {"type": "finish", "finishReason": "length"}]


def test_reasoning_then_text_are_two_parts_in_order():
    got = chunks(
        ("reasoning", {"text": "think"}),
        ("reasoning", {"text": "ing"}),
        ("token", {"text": "answer"}),
        ("done", {"finish_reason": "stop", "usage": None}),
    )
    assert got[2:-2] == [
        {"type": "reasoning-start", "id": "reasoning-1"},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "think"},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "ing"},
        {"type": "reasoning-end", "id": "reasoning-1"},
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "answer"},
        {"type": "text-end", "id": "text-2"},
    ]


def test_tool_call_deltas_stream_the_input_and_done_makes_it_available():
    got = chunks(
        ("token", {"text": "Let me look."}),
        ("tool_call", {"index": 0, "id": "call_a", "name": "weather", "arguments": ""}),
        ("tool_call", {"index": 0, "arguments": '{"city": '}),
        ("tool_call", {"index": 1, "id": "call_b", "name": "time", "arguments": "{}"}),
        ("tool_call", {"index": 0, "arguments": '"Paris"}'}),
        ("done", {"finish_reason": "tool_calls", "usage": None}),
    )
    assert got[2:] == [
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Let me look."},
        {"type": "text-end", "id": "text-1"},
        {"type": "tool-input-start", "toolCallId": "call_a", "toolName": "weather"},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '{"city": '},
        {"type": "tool-input-start", "toolCallId": "call_b", "toolName": "time"},
        {"type": "tool-input-delta", "toolCallId": "call_b", "inputTextDelta": "{}"},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '"Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_a",
            "toolName": "weather",
            "input": {"city": "Paris"},
        },
        {"type": "tool-input-available", "toolCallId": "call_b", "toolName": "time", "input": {}},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    ]


def test_done_with_tool_calls_is_authoritative_even_without_deltas():
    final = [{"id": "call_x", "name": "search", "arguments": '{"q": "sse"}'}]
    got = chunks(("done", {"finish_reason": "tool_calls", "usage": None, "tool_calls": final}))
    assert got[2] == {
        "type": "tool-input-available",
        "toolCallId": "call_x",
        "toolName": "search",
        "input": {"q": "sse"},
    }


def test_arguments_that_are_not_json_are_a_tool_input_error():
    got = chunks(
        ("tool_call", {"index": 0, "id": "call_a", "name": "f", "arguments": '{"broken'}),
        ("done", {"finish_reason": "tool_calls", "usage": None}),
    )
    assert got[4] == {
        "type": "tool-input-error",
        "toolCallId": "call_a",
        "toolName": "f",
        "input": '{"broken',
        "errorText": "The tool call's arguments are not valid JSON.",
    }


def test_an_error_ends_the_message_with_the_gateways_text_and_no_finish():
    data = {"code": "upstream_timeout", "message": "The upstream timed out.", "retryable": True}
    got = chunks(("token", {"text": "a"}), ("error", data))
    assert got[-1] == {"type": "error", "errorText": "The upstream timed out."}
    assert [c["type"] for c in got].count("finish") == 0


def test_a_cancelled_stream_is_an_abort():
    data = {"code": "cancelled", "message": "The stream was cancelled.", "retryable": False}
    assert chunks(("error", data))[-1] == {"type": "abort", "reason": "The stream was cancelled."}


def test_unknown_event_kinds_give_nothing():
    assert chunks(("something_new", {"x": 1})) == OPENING


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool-calls"),
        ("function_call", "tool-calls"),
        ("content_filter", "content-filter"),
        ("whatever", "other"),
        (None, "other"),
    ],
)
def test_finish_reasons(reason, expected):
    assert finish_reason(reason) == expected


def test_a_chunk_is_one_data_line_even_with_line_breaks():
    frame = encode({"type": "text-delta", "id": "t", "delta": "a\nb\r\nc 🎉"})
    assert frame.count(b"\n") == 2 and frame.endswith(b"\n\n")
    assert json.loads(frame.removeprefix(b"data: "))["delta"] == "a\nb\r\nc 🎉"
    assert DONE == b"data: [DONE]\n\n"


def test_a_replay_gives_the_same_chunks():
    events: list[Event] = [("token", {"text": "x"}), ("done", {"finish_reason": "stop"})]
    assert chunks(*events) == chunks(*events)
