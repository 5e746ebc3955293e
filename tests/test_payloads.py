"""Request bodies (gateway/payloads.py): read within the size limit, validated, the
operator's limits applied, and every field the gateway does not enforce passed on.
(tests/test_http_errors.py checks the same refusals as a client sees them.)"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from starlette.requests import Request
from starlette.types import Message

from gateway.config import LimitSettings
from gateway.errors import (
    BodyTooLarge,
    GatewayError,
    InvalidJSON,
    InvalidRequest,
    ModelNotAllowed,
    UnsupportedMediaType,
)
from gateway.payloads import ChatMessage, ChatRequest, LegacyRequest, read_payload

USER = [{"role": "user", "content": "hi"}]


def request(
    chunks: Sequence[bytes],
    content_type: str | None = "application/json",
    content_length: int | None = None,
) -> Request:
    """A request whose body arrives in `chunks` (without a Content-Length unless given)."""
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


def read(
    body: Any,
    model: type[BaseModel] = ChatRequest,
    limits: LimitSettings | None = None,
    **headers: Any,
) -> BaseModel:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = request([raw[:3], raw[3:]], **headers)
    return anyio.run(read_payload, req, model, limits or LimitSettings())


def refused(body: Any, **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        read(body, **kwargs)
    return caught.value


def test_fields_the_gateway_does_not_enforce_are_passed_on_as_given() -> None:
    tool = {"role": "tool", "content": "42", "tool_call_id": "call_a"}
    body = {"messages": [*USER, tool], "model": "m", "top_p": 0.5, "tools": [{"type": "x"}]}
    chat = read(body)
    assert isinstance(chat, ChatRequest)
    assert chat.model_dump(exclude_unset=True) == body


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", None),
        ("Application/JSON; charset=utf-8", None),
        ("text/plain", UnsupportedMediaType),
        (None, UnsupportedMediaType),
    ],
)
def test_the_media_type_must_be_json(
    content_type: str | None, expected: type[GatewayError] | None
) -> None:
    if expected is None:
        read({"messages": USER}, content_type=content_type)
    else:
        assert type(refused({"messages": USER}, content_type=content_type)) is expected


def test_a_body_over_the_limit_is_refused_declared_or_not() -> None:
    limits = LimitSettings(max_body_bytes=64)
    body = {"messages": [{"role": "user", "content": "x" * 100}]}
    assert type(refused(body, limits=limits)) is BodyTooLarge
    assert type(refused(body, limits=limits, content_length=65)) is BodyTooLarge
    small = {"messages": USER}
    assert type(refused(small, limits=limits, content_length=65)) is BodyTooLarge  # as declared
    assert read({"messages": USER}, limits=limits)


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"messages": "\xff"}', b'"\\udc00"', b"[" * 300 + b"]" * 300, b""],
)
def test_bytes_that_are_not_json_are_invalid_json(raw: bytes) -> None:
    assert type(refused(raw)) is InvalidJSON


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [{"role": "user", "content": "hi"}], "seed": NaN}',
        b'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": -Infinity}}',
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"x": 1e999}]}',
        b'{"messages": [{"role": "user", "content": [{"type": "text", "n": 2E+400}]}]}',
    ],
)
def test_numbers_json_cannot_carry_are_invalid_json(raw: bytes) -> None:
    """Pydantic's parser takes them; they could not be passed on to the upstream."""
    error = refused(raw)
    assert type(error) is InvalidJSON
    assert "number" in error.message


def test_text_that_only_looks_like_such_numbers_passes() -> None:
    body = {"messages": [{"role": "user", "content": "NaN Infinity 1e999"}], "x": 1e-300}
    assert read(body)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0"),
        ({"messages": USER, "temperature": 3}, "temperature"),
        ({"messages": USER, "max_tokens": "5"}, "max_tokens"),
        ({"messages": USER, "model": ""}, "model"),
        ([], ""),
    ],
)
def test_an_invalid_request_names_the_field(body: Any, where: str) -> None:
    error = refused(body)
    assert type(error) is InvalidRequest
    assert error.status == 422
    assert error.message.startswith(f"{where}: " if where else "")


def test_an_assistant_message_may_have_only_tool_calls() -> None:
    calls = [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assistant = {"role": "assistant", "tool_calls": calls}
    assert read({"messages": [*USER, assistant]})


def test_the_operators_limits() -> None:
    limits = LimitSettings(
        max_messages=2, max_message_chars=5, max_tokens=10, allowed_models=["a", "b"]
    )
    assert read({"messages": USER * 2, "model": "a", "max_tokens": 10}, limits=limits)
    cases: list[tuple[dict[str, Any], type[GatewayError], str]] = [
        ({"messages": USER * 3}, InvalidRequest, "messages: at most 2 messages"),
        ({"messages": [{"role": "user", "content": "123456"}]}, InvalidRequest, "messages.0:"),
        ({"messages": USER, "max_tokens": 11}, InvalidRequest, "max_tokens: at most 10"),
        ({"messages": USER, "max_completion_tokens": 11}, InvalidRequest, "max_completion"),
        ({"messages": USER, "max_completion_tokens": True}, InvalidRequest, "integer"),
        ({"messages": USER, "model": "c"}, ModelNotAllowed, ""),
    ]
    for body, error, message in cases:
        problem = refused(body, limits=limits)
        assert type(problem) is error, body
        assert message in problem.message


def test_a_message_counts_all_its_text_but_not_its_media() -> None:
    parts = [
        {"type": "text", "text": "abc"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 1000}},
    ]
    assert ChatMessage(role="user", content=parts).characters() == 3
    calls = [{"id": "ab", "function": {"name": "f", "arguments": "{}"}}]
    assistant = {"role": "assistant", "tool_calls": calls}
    # Every string of its other fields, keys too: tool_calls id ab function name f arguments {}
    assert ChatMessage.model_validate(assistant).characters() == 38
    limits = LimitSettings(max_message_chars=37)
    assert "messages.1:" in refused({"messages": [*USER, assistant]}, limits=limits).message


def test_the_seed_contract_takes_one_message_or_a_list() -> None:
    legacy = read({"message": "hello", "temperature": 0.5, "user": "u"}, LegacyRequest)
    assert isinstance(legacy, LegacyRequest)
    chat = legacy.to_chat()
    assert [m.model_dump(exclude_unset=True) for m in chat.messages] == [
        {"role": "user", "content": "hello"}
    ]
    assert chat.model_dump(exclude_unset=True, exclude={"messages"}) == {
        "temperature": 0.5,
        "user": "u",
    }
    listed = read({"messages": USER}, LegacyRequest)
    assert isinstance(listed, LegacyRequest)
    assert listed.to_chat().messages[0].content == "hi"
    for body in ({}, {"message": "a", "messages": USER}):
        assert type(refused(body, model=LegacyRequest)) is InvalidRequest
    long = {"message": "x" * 6}
    assert (
        "message: at most 5"
        in refused(long, model=LegacyRequest, limits=LimitSettings(max_message_chars=5)).message
    )
