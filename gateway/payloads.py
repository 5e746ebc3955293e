"""Request bodies: read within the size limit, parse, validate into typed models."""

from __future__ import annotations

from typing import Literal, TypeVar

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


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ChatMessage(_Payload):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Payload):
    """`POST /v1/streams`."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)


class LegacyRequest(_Payload):
    """`POST /api/stream`, the seed's contract: one `message` or a `messages` list."""

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
        return ChatRequest(
            messages=messages,
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )


Payload = TypeVar("Payload", bound=BaseModel)


async def read_payload(request: Request, model: type[Payload], limits: LimitSettings) -> Payload:
    """Check the content type, read at most `max_body_bytes`, then validate, and apply
    `limits` (message count and length, `max_tokens`, `allowed_models`).

    The JSON parser refuses invalid UTF-8, lone surrogates and nesting deeper than
    200 levels (400 `invalid_json`), before any model is built."""
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
    messages = getattr(payload, "messages", None) or ()
    if len(messages) > limits.max_messages:
        raise InvalidRequest(f"messages: at most {limits.max_messages} messages are allowed.")
    check_limits(payload, limits)
    return payload


def check_limits(payload: BaseModel, limits: LimitSettings) -> None:
    """The operator's limits on a valid request; `read_payload` applies them."""
    for index, message in enumerate(getattr(payload, "messages", None) or ()):
        content = getattr(message, "content", None)
        if isinstance(content, str) and len(content) > limits.max_message_chars:
            raise InvalidRequest(
                f"messages.{index}.content: at most {limits.max_message_chars} characters."
            )
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(payload, field, None)
        if limits.max_tokens is not None and value is not None and value > limits.max_tokens:
            raise InvalidRequest(f"{field}: at most {limits.max_tokens}.")
    model = getattr(payload, "model", None)
    allowed = limits.allowed_models
    if allowed is not None and model is not None and model not in allowed:
        raise ModelNotAllowed()


def _translate(exc: ValidationError) -> InvalidJSON | InvalidRequest:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return InvalidJSON()
    where = ".".join(str(part) for part in first["loc"])
    return InvalidRequest(f"{where}: {first['msg']}" if where else first["msg"])
