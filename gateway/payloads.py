"""Request bodies: read within the size limit, parse, validate into typed models.

A chat request is what the chat completions API accepts. The gateway reads
only what it enforces or needs (`messages` and their roles, `model`,
`temperature`, `max_tokens`); every other field, and every other field of a
message (content parts, `tool_calls`, `tool_call_id`, `name`...), is passed
to the upstream as given, for the upstream to judge.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from gateway.config import LimitSettings
from gateway.errors import (
    BodyTooLarge,
    InvalidJSON,
    InvalidRequest,
    ModelNotAllowed,
    UnsupportedMediaType,
)

__all__ = ["ChatMessage", "ChatRequest", "LegacyRequest", "check_limits", "read_payload"]


class ChatMessage(BaseModel):
    """A message is passed on as sent; its role is checked, and its text counted."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":  # which may only call tools
            raise ValueError(f"a {self.role!r} message needs 'content'")
        return self

    def characters(self) -> int:
        """The characters of its text: the content, the `text` of content parts, and
        every string in its other fields (tool call arguments, names...); not the
        data of images, audio or files, which `max_body_bytes` bounds."""
        parts = self.content if isinstance(self.content, list) else [self.content]
        text = sum(
            _characters(part.get("text") if isinstance(part, dict) else part) for part in parts
        )
        return text + _characters(self.model_extra)


def _characters(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_characters(key) + _characters(item) for key, item in value.items())
    if isinstance(value, list):
        return sum(_characters(item) for item in value)
    return 0


class ChatRequest(BaseModel):
    """`POST /v1/streams`; fields other than these are passed on as given."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)


class LegacyRequest(BaseModel):
    """`POST /api/stream`, the seed's contract: one `message` or a `messages` list,
    and the fields of a chat request."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    message: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> LegacyRequest:
        if (self.message is None) == (self.messages is None):
            raise ValueError("give exactly one of 'message' or 'messages'")
        return self

    def to_chat(self) -> ChatRequest:
        messages = self.messages or [ChatMessage(role="user", content=self.message or "")]
        fields = self.model_dump(exclude_unset=True, exclude={"message", "messages"})
        return ChatRequest(messages=messages, **fields)


Payload = TypeVar("Payload", bound=BaseModel)


async def read_payload(request: Request, model: type[Payload], limits: LimitSettings) -> Payload:
    """Check the content type, read at most `max_body_bytes`, then validate, and apply
    `limits` (message count and length, `max_tokens`, `allowed_models`).

    The JSON parser refuses invalid UTF-8, lone surrogates and nesting deeper than
    200 levels (400 `invalid_json`), before any model is built; numbers JSON cannot
    carry (`NaN`, `Infinity`, `1e999`) are refused after (`_check_finite`)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise BodyTooLarge(f"The body is larger than {limits.max_body_bytes} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise BodyTooLarge(f"The body is larger than {limits.max_body_bytes} bytes.")
    try:
        payload = model.model_validate_json(bytes(body))
    except ValidationError as exc:
        raise _translate(exc) from None
    _check_finite(bytes(body))
    messages = getattr(payload, "messages", None) or ()
    if len(messages) > limits.max_messages:
        raise InvalidRequest(f"messages: at most {limits.max_messages} messages are allowed.")
    check_limits(payload, limits)
    return payload


def check_limits(payload: BaseModel, limits: LimitSettings) -> None:
    """The operator's limits on a valid request; `read_payload` applies them."""
    message = getattr(payload, "message", None)
    if isinstance(message, str) and len(message) > limits.max_message_chars:
        raise InvalidRequest(f"message: at most {limits.max_message_chars} characters.")
    for index, item in enumerate(getattr(payload, "messages", None) or ()):
        if isinstance(item, ChatMessage) and item.characters() > limits.max_message_chars:
            raise InvalidRequest(
                f"messages.{index}: at most {limits.max_message_chars} characters of text."
            )
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(payload, field, None)
        if limits.max_tokens is None or value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest(f"{field}: must be an integer.")
        if value > limits.max_tokens:
            raise InvalidRequest(f"{field}: at most {limits.max_tokens}.")
    model = getattr(payload, "model", None)
    allowed = limits.allowed_models
    if allowed is not None and model is not None and model not in allowed:
        raise ModelNotAllowed()


#: Where a body may hold a number JSON cannot carry: `NaN`, `Infinity`, an exponent of
#: three digits (`1e999` overflows to infinity).
_MAYBE_NOT_FINITE = re.compile(rb"NaN|Infinity|\d[eE][+-]?\d{3}")


def _check_finite(body: bytes) -> None:
    """Refuse `NaN`, `Infinity` and numbers that overflow, which pydantic's parser
    takes but no JSON encoder writes: a field passed on as given would fail at the
    upstream request instead. Only a body that may hold one is parsed again."""
    if _MAYBE_NOT_FINITE.search(body) is None:
        return

    def constant(name: str) -> float:
        raise InvalidJSON(f"{name} is not a JSON number.")

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise InvalidJSON(f"{text[:20]} is too large a number.")
        return number

    json.loads(body, parse_constant=constant, parse_float=finite)


def _translate(exc: ValidationError) -> InvalidJSON | InvalidRequest:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return InvalidJSON()
    where = ".".join(str(part) for part in first["loc"])
    return InvalidRequest(f"{where}: {first['msg']}" if where else first["msg"])
