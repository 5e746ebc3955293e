"""Stored stream events as the AI SDK's UI message stream: pure code, no I/O.

The AI SDK's `useChat` (npm `ai` 6.x, `DefaultChatTransport`) reads SSE whose
`data:` lines are JSON chunks (the `uiMessageChunkSchema` of `ai`), then
`data: [DONE]`. One `UIMessageStream` per response turns the events of one
stored stream, in order, into those chunks:

    (opening)   start {messageId}, start-step
    token       text-start (once per block), text-delta
    reasoning   reasoning-start (once per block), reasoning-delta
    tool_call   tool-input-start (first delta of a call), tool-input-delta
    done        text-end / reasoning-end, tool-input-available (or tool-input-error
                when the arguments are not JSON) per call, finish-step,
                finish {finishReason, messageMetadata: {usage}}
    error       abort {reason} for `cancelled` (a stop), else error {errorText}

A switch between text, reasoning and tool calls ends the open block, so the
assembled message has its parts in the order they were generated. Part ids
are counters, so a replay of the same events gives the same chunks (the SDK
replaces the message on resume rather than appending to it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["DONE", "UIMessageStream", "encode", "finish_reason"]

Chunk = dict[str, Any]

#: The last line of every UI message stream.
DONE = b"data: [DONE]\n\n"

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}


def finish_reason(reason: str | None) -> str:
    """The SDK's finish reason for a chat completions one (`other` when it has none)."""
    return _FINISH_REASONS.get(reason or "", "other")


def encode(chunk: Chunk) -> bytes:
    """One chunk as one SSE event (JSON escapes line breaks, so it is one `data:` line)."""
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


@dataclass
class _ToolCall:
    id: str
    name: str
    arguments: str = ""


class UIMessageStream:
    """The chunks of one assistant message, event by event (see the module docstring)."""

    def __init__(self, message_id: str) -> None:
        self._message_id = message_id
        #: The open text or reasoning block: (`text` | `reasoning`, part id).
        self._block: tuple[str, str] | None = None
        self._blocks = 0
        #: Tool calls by their index in the upstream's deltas.
        self._calls: dict[int, _ToolCall] = {}

    def opening(self) -> list[Chunk]:
        return [{"type": "start", "messageId": self._message_id}, {"type": "start-step"}]

    def chunks(self, event: str, data: dict[str, Any]) -> list[Chunk]:
        """The chunks for one stored event; unknown kinds give none (forward compatible)."""
        if event == "token":
            return self._delta("text", data.get("text") or "")
        if event == "reasoning":
            return self._delta("reasoning", data.get("text") or "")
        if event == "tool_call":
            return self._tool_call(data)
        if event == "done":
            return self._done(data)
        if event == "error":
            return self._error(data)
        return []

    def _delta(self, kind: str, text: str) -> list[Chunk]:
        if not text:
            return []
        out: list[Chunk] = []
        if self._block is None or self._block[0] != kind:
            out += self._end_block()
            self._blocks += 1
            self._block = (kind, f"{kind}-{self._blocks}")
            out.append({"type": f"{kind}-start", "id": self._block[1]})
        out.append({"type": f"{kind}-delta", "id": self._block[1], "delta": text})
        return out

    def _end_block(self) -> list[Chunk]:
        if self._block is None:
            return []
        kind, part_id = self._block
        self._block = None
        return [{"type": f"{kind}-end", "id": part_id}]

    def _tool_call(self, data: dict[str, Any]) -> list[Chunk]:
        out = self._end_block()
        index = int(data.get("index") or 0)
        arguments = data.get("arguments") or ""
        call = self._calls.get(index)
        if call is None:
            call = _ToolCall(data.get("id") or f"call_{index}", data.get("name") or "")
            self._calls[index] = call
            out.append({"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name})
        call.arguments += arguments
        if arguments:
            out.append(
                {"type": "tool-input-delta", "toolCallId": call.id, "inputTextDelta": arguments}
            )
        return out

    def _done(self, data: dict[str, Any]) -> list[Chunk]:
        out = self._end_block()
        final = data.get("tool_calls")
        calls = (
            [_ToolCall(c["id"], c["name"], c.get("arguments") or "") for c in final]
            if final
            else [self._calls[index] for index in sorted(self._calls)]
        )
        out += [_available(call) for call in calls]
        finish: Chunk = {"type": "finish", "finishReason": finish_reason(data.get("finish_reason"))}
        if data.get("usage") is not None:
            finish["messageMetadata"] = {"usage": data["usage"]}
        return [*out, {"type": "finish-step"}, finish]

    def _error(self, data: dict[str, Any]) -> list[Chunk]:
        message = str(data.get("message") or "The generation failed.")
        if data.get("code") == "cancelled":
            return [{"type": "abort", "reason": message}]
        return [{"type": "error", "errorText": message}]


def _available(call: _ToolCall) -> Chunk:
    """The call's complete input; a `tool-input-error` when its arguments are not JSON."""
    chunk: Chunk = {"toolCallId": call.id, "toolName": call.name}
    try:
        return {
            "type": "tool-input-available",
            **chunk,
            "input": json.loads(call.arguments or "{}"),
        }
    except ValueError:
        problem = "The tool call's arguments are not valid JSON."
        return {"type": "tool-input-error", **chunk, "input": call.arguments, "errorText": problem}
