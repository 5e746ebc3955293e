"""The AI SDK's UI messages as chat completions messages, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import LimitSettings
from gateway.errors import InvalidRequest
from gateway.ui_chat import chat_request
from gateway.ui_messages import UIChatRequest, UIMessage, chat_messages


def ui(role: str, *parts: dict[str, Any]) -> UIMessage:
    return UIMessage(id=f"{role}-1", role=role, parts=list(parts))  # type: ignore[arg-type]


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool(state: str, **fields: Any) -> dict[str, Any]:
    return {"type": "tool-weather", "toolCallId": "call_1", "state": state, **fields}


def test_text_conversation():
    messages = [
        ui("system", text("Be brief.")),
        ui("user", text("Hi"), text("there")),
        ui(
            "assistant",
            {"type": "step-start"},
            text("Hel"),
            text("lo"),
            {"type": "reasoning", "text": "r"},
        ),
    ]
    assert chat_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_files_become_content_parts():
    image = {"type": "file", "mediaType": "image/png", "url": "https://x.test/a.png"}
    audio = {"type": "file", "mediaType": "audio/wav", "url": "data:audio/wav;base64,UklG"}
    pdf = {
        "type": "file",
        "mediaType": "application/pdf",
        "filename": "a.pdf",
        "url": "data:application/pdf;base64,JVBE",
    }
    (message,) = chat_messages([ui("user", text("Look"), image, audio, pdf)])
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
            {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
            {
                "type": "file",
                "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
            },
        ],
    }


def test_tool_parts_become_calls_and_results_step_by_step():
    messages = [
        ui("user", text("Weather in Paris?")),
        ui(
            "assistant",
            {"type": "step-start"},
            text("Checking."),
            tool("output-available", input={"city": "Paris"}, output={"temp": 21}),
            {
                "type": "dynamic-tool",
                "toolName": "clock",
                "toolCallId": "call_2",
                "state": "output-error",
                "input": {},
                "errorText": "down",
            },
            {"type": "step-start"},
            text("It is 21 degrees."),
        ),
    ]
    assert chat_messages(messages)[1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "clock", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "down"},
        {"role": "assistant", "content": "It is 21 degrees."},
    ]


def test_a_call_still_streaming_its_input_is_left_out_and_a_denial_is_a_result():
    messages = [
        ui("user", text("go")),
        ui(
            "assistant",
            tool("output-denied", input={}),
            {**tool("input-streaming"), "toolCallId": "call_9"},
        ),
    ]
    out = chat_messages(messages)
    assert [m["role"] for m in out] == ["user", "assistant", "tool"]
    assert [c["id"] for c in out[1]["tool_calls"]] == ["call_1"]
    assert out[2]["content"] == "The user denied this tool call."


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (
            ui("user", {"type": "video", "url": "x"}),
            "messages.0.parts.0: unknown part type 'video'.",
        ),
        (
            ui("user", {"text": "no type"}),
            "messages.0.parts.0: a part must be an object with a string 'type'.",
        ),
        (ui("user", {"type": "text"}), "messages.0.parts.0.text: a string is required."),
        (
            ui("user", tool("output-available", input={}, output=1)),
            "messages.0.parts.0: tool parts belong to assistant messages.",
        ),
        (
            ui("system", {"type": "file", "mediaType": "image/png", "url": "x"}),
            "messages.0.parts.0: files belong to user messages.",
        ),
        (
            ui(
                "user",
                {"type": "file", "mediaType": "application/pdf", "url": "https://x.test/a.pdf"},
            ),
            "messages.0.parts.0: only images may be given by URL; "
            "send application/pdf as a data: URL.",
        ),
        (
            ui("assistant", tool("output-available", output="sunny")),
            "messages.0.parts.0: a tool result for call 'call_1', whose input is unknown.",
        ),
        (
            ui("assistant", tool("exploded", input={})),
            "messages.0.parts.0: unknown tool part state 'exploded'.",
        ),
        (ui("assistant", {"type": "data-x", "data": 1}), "messages: no message has any content."),
    ],
)
def test_bad_parts_are_named(message, problem):
    with pytest.raises(InvalidRequest) as caught:
        chat_messages([message])
    assert caught.value.message == problem


def test_a_tool_call_id_used_twice_is_refused():
    call = tool("output-available", input={}, output="x")
    with pytest.raises(InvalidRequest, match="tool call id 'call_1' is used twice"):
        chat_messages([ui("assistant", call), ui("user", text("again")), ui("assistant", call)])


def test_the_request_to_relay_carries_the_body_fields_and_the_limits():
    body = UIChatRequest.model_validate(
        {
            "id": "c",
            "messages": [{"id": "u", "role": "user", "parts": [text("hi")]}],
            "model": "sim-1",
            "temperature": 0.5,
            "max_tokens": 9,
            "appField": {"anything": True},
        }
    )
    chat = chat_request(body, LimitSettings())
    assert [m.model_dump() for m in chat.messages] == [{"role": "user", "content": "hi"}]
    assert (chat.model, chat.temperature, chat.max_tokens) == ("sim-1", 0.5, 9)
    with pytest.raises(InvalidRequest, match="at most 1 characters"):
        chat_request(body, LimitSettings(max_message_chars=1))


def test_files_reach_the_generation_as_content_parts():
    image = {"type": "file", "mediaType": "image/png", "url": "https://x.test/a.png"}
    body = UIChatRequest(id="c", messages=[ui("user", text("see"), image)])
    (message,) = chat_request(body, LimitSettings()).messages
    assert message.model_dump() == {
        "role": "user",
        "content": [
            {"type": "text", "text": "see"},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
        ],
    }
