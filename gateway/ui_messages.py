"""What the AI SDK's `DefaultChatTransport` POSTs, and its UI messages as chat
completions messages: pure code, no I/O.

The body is `{"id": chat id, "messages": [UI message], "trigger", "messageId"}`
plus whatever the app adds with the transport's `body` (ignored here, except
`model`, `temperature` and `max_tokens`). A UI message is `{"id", "role",
"parts": [...]}`; its parts become:

- `text`: `content`; a user's or system's text parts are joined by a newline,
  an assistant's as they are;
- `file` (user messages): a content part: `image_url` for images,
  `input_audio` for WAV/MP3 data URLs, `file` for other data URLs;
- `tool-<name>`, `dynamic-tool` (assistant): `tool_calls` of the assistant
  message, then a `tool` message with the output, the error text or a denial;
- `step-start` (assistant): starts the next assistant message, after the
  tool results of the step before;
- `reasoning`, `file` (assistant), `source-url`, `source-document`, `data-*`:
  nothing, as chat completions has no input for them (and some servers refuse
  `reasoning_content`).

Anything else is a 422 that names the part.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidRequest

__all__ = ["UIChatRequest", "UIMessage", "chat_messages"]

Message = dict[str, Any]

_IGNORED = frozenset({"reasoning", "source-url", "source-document", "step-start"})
_AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}
_CALL_STATES = frozenset({"input-available", "approval-requested", "approval-responded"})
_RESULT_STATES = frozenset({"output-available", "output-error", "output-denied"})


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = ""
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]]


class UIChatRequest(BaseModel):
    """`POST /v1/ui/chat`: the transport's fields; the app's own `body` fields pass unchecked."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=256)
    messages: list[UIMessage] = Field(min_length=1)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None  # the transport's name
    model: str | None = Field(default=None, min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)


def chat_messages(messages: list[UIMessage]) -> list[Message]:
    """The conversation as chat completions messages; `InvalidRequest` names a bad part."""
    out: list[Message] = []
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if message.role == "assistant":
            out += _assistant(message.parts, where, call_ids)
            continue
        content = _content(message.parts, where, files=message.role == "user")
        if content:
            out.append({"role": message.role, "content": content})
    if not out:
        raise InvalidRequest("messages: no message has any content.")
    return out


def _content(parts: list[dict[str, Any]], where: str, *, files: bool) -> str | list[Message]:
    """A user's or system's parts: a string when they are all text, else content parts."""
    texts: list[str] = []
    content: list[Message] = []
    for index, part in enumerate(parts):
        kind = _kind(part, f"{where}.parts.{index}")
        if kind == "text":
            text = _string(part, "text", f"{where}.parts.{index}")
            texts.append(text)
            content.append({"type": "text", "text": text})
        elif kind == "file":
            if not files:
                raise InvalidRequest(f"{where}.parts.{index}: files belong to user messages.")
            content.append(_file(part, f"{where}.parts.{index}"))
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            raise InvalidRequest(f"{where}.parts.{index}: tool parts belong to assistant messages.")
        elif not _ignored(kind):
            raise InvalidRequest(f"{where}.parts.{index}: unknown part type {kind!r}.")
    if len(content) == len(texts):
        return "\n".join(texts)
    return content


def _assistant(parts: list[dict[str, Any]], where: str, call_ids: set[str]) -> list[Message]:
    """One assistant message per step: its text and tool calls, then the calls' results."""
    out: list[Message] = []
    texts: list[str] = []
    calls: list[Message] = []
    results: list[Message] = []

    def end_step() -> None:
        if texts or calls:
            message: Message = {"role": "assistant", "content": "".join(texts) or None}
            if calls:
                message["tool_calls"] = list(calls)
            out.append(message)
            out.extend(results)
        texts.clear()
        calls.clear()
        results.clear()

    for index, part in enumerate(parts):
        at = f"{where}.parts.{index}"
        kind = _kind(part, at)
        if kind == "step-start":
            end_step()
        elif kind == "text":
            texts.append(_string(part, "text", at))
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            call = _tool(part, kind, at, call_ids)
            if call is not None:
                calls.append(call[0])
                if call[1] is not None:
                    results.append(call[1])
        elif kind != "file" and not _ignored(kind):
            raise InvalidRequest(f"{at}: unknown part type {kind!r}.")
    end_step()
    return out


def _tool(
    part: dict[str, Any], kind: str, at: str, call_ids: set[str]
) -> tuple[Message, Message | None] | None:
    """A tool part as (the call, its `tool` message or `None`); `None` while its input streams."""
    name = _string(part, "toolName", at) if kind == "dynamic-tool" else kind.removeprefix("tool-")
    call_id = _string(part, "toolCallId", at)
    state = part.get("state")
    if state == "input-streaming":
        return None
    if state not in _CALL_STATES and state not in _RESULT_STATES:
        raise InvalidRequest(f"{at}: unknown tool part state {state!r}.")
    if "input" not in part:
        what = "a tool result" if state in _RESULT_STATES else "a tool call"
        raise InvalidRequest(f"{at}: {what} for call {call_id!r}, whose input is unknown.")
    if call_id in call_ids:
        raise InvalidRequest(f"{at}: tool call id {call_id!r} is used twice.")
    call_ids.add(call_id)
    arguments = json.dumps(part["input"], ensure_ascii=False)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if state == "output-available":
        output = part.get("output")
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    elif state == "output-error":
        text = str(part.get("errorText") or "The tool failed.")
    elif state == "output-denied":
        text = "The user denied this tool call."
    else:
        return call, None
    return call, {"role": "tool", "tool_call_id": call_id, "content": text}


def _file(part: dict[str, Any], at: str) -> Message:
    media_type = _string(part, "mediaType", at).lower()
    url = _string(part, "url", at)
    if media_type.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": url}}
    if not url.startswith("data:"):
        raise InvalidRequest(
            f"{at}: only images may be given by URL; send {media_type} as a data: URL."
        )
    data = url.partition(",")[2]
    if media_type in _AUDIO_FORMATS:
        return {
            "type": "input_audio",
            "input_audio": {"data": data, "format": _AUDIO_FORMATS[media_type]},
        }
    filename = part.get("filename") if isinstance(part.get("filename"), str) else "file"
    return {"type": "file", "file": {"file_data": url, "filename": filename}}


def _kind(part: Any, at: str) -> str:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise InvalidRequest(f"{at}: a part must be an object with a string 'type'.")
    kind: str = part["type"]
    return kind


def _ignored(kind: str) -> bool:
    return kind in _IGNORED or kind.startswith("data-")


def _string(part: dict[str, Any], key: str, at: str) -> str:
    value = part.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{at}.{key}: a string is required.")
    return value
