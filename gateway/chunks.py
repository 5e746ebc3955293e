"""The upstream's `chat.completion.chunk`s: parsed, checked, and made safe to pass on.

An upstream is not trusted to write valid output, and every value the gateway
writes must be valid JSON that encodes as UTF-8:

- `NaN` and `Infinity` are not JSON, though Python's parser takes them: a chunk
  holding one is written again with `null` in their place, and a `usage` with
  a non-finite number (`NaN`, or `1e999`, which is JSON but overflows) is dropped;
- a lone surrogate (`"\\ud800"`) cannot be encoded as UTF-8: it becomes U+FFFD,
  in the text handed on and in the chunk relayed;
- a chunk of the wrong shape (content that is not a string, `tool_calls` that
  are not a list of objects, ...) is `UpstreamFailed`, as is a chunk that
  carries an error object (as OpenAI sends mid-stream).

Chunks without either problem are relayed as the upstream wrote them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import UpstreamFailed
from gateway.upstream_errors import upstream_detail

__all__ = ["Chunk", "ToolCallDelta", "ToolCalls", "finite_usage", "parse_chunk"]

#: A JSON escape of a UTF-16 surrogate: the only way a chunk can hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_TOOL_CALLS = 128


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call `index`: its id and name come once, its arguments in fragments."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class Chunk:
    #: The JSON to relay: the upstream's own text unless it had to be made valid.
    payload: str
    content: str | None = None
    reasoning: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None

    @property
    def output(self) -> bool:
        """Whether the chunk carries output (text, reasoning or a tool call), not only
        a role, a finish reason or usage."""
        return bool(self.content or self.reasoning or self.tool_calls)


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _malformed() -> UpstreamFailed:
    return UpstreamFailed("The upstream sent a malformed chunk.")


def parse_chunk(payload: str) -> Chunk:
    """Choice 0's deltas, the finish reason and the usage of one chunk.

    Raises `UpstreamFailed` for a chunk that is not JSON, has the wrong shape,
    or carries an error object.
    """
    rewrite = False
    try:
        chunk = json.loads(payload, parse_constant=_refuse_constant)
    except _NonFinite:
        chunk, rewrite = json.loads(payload, parse_constant=float), True
    except ValueError:
        raise _malformed() from None
    try:
        drop_usage = rewrite and _has_non_finite(chunk.get("usage"))
        if rewrite or _SURROGATE_ESCAPE.search(payload):
            chunk, changed = _clean(chunk)
            if rewrite or changed:
                payload = json.dumps(chunk, ensure_ascii=False)
        return _read(chunk, payload, drop_usage)
    except (AttributeError, TypeError):
        raise _malformed() from None


def _read(chunk: Any, payload: str, drop_usage: bool) -> Chunk:
    error = chunk.get("error")
    if error:
        upstream = upstream_detail(error)
        message = upstream.get("message") or "The upstream reported an error mid-stream."
        raise UpstreamFailed(message, upstream=upstream)
    content = reasoning = finish = None
    calls: tuple[ToolCallDelta, ...] = ()
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        finish = choice.get("finish_reason")
        delta = choice.get("delta") or {}
        content = delta.get("content")
        reasoning = _reasoning(delta)
        if delta.get("tool_calls") is not None:
            calls = _tool_calls(delta["tool_calls"])
    usage = chunk.get("usage")
    if not all(isinstance(value, str | None) for value in (content, reasoning, finish)):
        raise _malformed()
    if not isinstance(usage, dict | None):
        raise _malformed()
    usage = None if drop_usage else finite_usage(usage)
    return Chunk(payload, content, reasoning, calls, finish, usage)


def _reasoning(delta: dict[str, Any]) -> str | None:
    """The reasoning text of a delta, under any of the names upstreams use:
    `reasoning_content` (DeepSeek, llama.cpp, vLLM), `reasoning` (OpenRouter,
    Ollama, newer vLLM), or the texts of a `reasoning_details` list (OpenRouter,
    which sends the same text in `reasoning` too)."""
    text = delta.get("reasoning_content") or delta.get("reasoning")
    if text is not None or not delta.get("reasoning_details"):
        return text  # checked by the caller
    parts = [
        detail.get("text") or detail.get("summary") or ""
        for detail in delta["reasoning_details"]
        if detail.get("type") in ("reasoning.text", "reasoning.summary")
    ]
    if not all(isinstance(part, str) for part in parts):
        raise _malformed()
    return "".join(parts) or None


def _tool_calls(parts: Any) -> tuple[ToolCallDelta, ...]:
    if not isinstance(parts, list):
        raise _malformed()
    calls = []
    for position, part in enumerate(parts):
        function = part.get("function") or {}
        index, id, name = part.get("index", position), part.get("id"), function.get("name")
        arguments = function.get("arguments") or ""
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < _MAX_TOOL_CALLS
            or not isinstance(id, str | None)
            or not isinstance(name, str | None)
            or not isinstance(arguments, str)
        ):
            raise _malformed()
        calls.append(ToolCallDelta(index, id or None, name or None, arguments))
    return tuple(calls)


def finite_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """`usage`, or None when it holds a number JSON cannot carry."""
    if usage is None or not _has_non_finite(usage):
        return usage
    return None


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(item) for item in value)
    return False


def _clean(value: Any) -> tuple[Any, bool]:
    """`value` with lone surrogates replaced and non-finite numbers nulled; and
    whether anything changed."""
    if isinstance(value, str):
        clean = _SURROGATE.sub("\ufffd", value)
        return clean, clean != value
    if isinstance(value, float) and not math.isfinite(value):
        return None, True
    if isinstance(value, dict):
        items = [(_clean(key), _clean(item)) for key, item in value.items()]
        cleaned = {key: item for (key, _), (item, _) in items}
        return cleaned, any(key_changed or changed for (_, key_changed), (_, changed) in items)
    if isinstance(value, list):
        pairs = [_clean(item) for item in value]
        return [item for item, _ in pairs], any(changed for _, changed in pairs)
    return value, False


class ToolCalls:
    """The tool calls an answer makes, assembled from their deltas."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, delta: ToolCallDelta) -> None:
        call = self._calls.setdefault(delta.index, {"id": None, "name": None, "arguments": []})
        call["id"] = call["id"] or delta.id
        call["name"] = call["name"] or delta.name  # sent whole, in the call's first delta
        call["arguments"].append(delta.arguments)

    def __len__(self) -> int:
        return len(self._calls)

    def assembled(self) -> list[dict[str, Any]]:
        """`[{"id", "name", "arguments"}]` by index; empty when there were none."""
        return [
            {"id": call["id"], "name": call["name"], "arguments": "".join(call["arguments"])}
            for _, call in sorted(self._calls.items())
        ]
