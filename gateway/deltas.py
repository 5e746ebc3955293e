"""A chunk's output as the gateway's own stream events: `token`, `reasoning` and
`tool_call` deltas, each with the JSON data its event carries.

This is how `/v1/streams` (and what reads it) hands an answer on; the OpenAI
front door relays the upstream's chunks themselves instead.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.chunks import Chunk

__all__ = ["Delta", "DeltaKind", "OnDelta", "deltas"]

DeltaKind = Literal["token", "reasoning", "tool_call"]


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of output, as a stream event: `kind` is its name, `data` its JSON.

    `text` is the answer or reasoning text, or a tool call's argument fragment;
    a tool call's `id` and `name` come with its first fragment.
    """

    kind: DeltaKind
    text: str
    index: int = 0
    id: str | None = None
    name: str | None = None

    @property
    def data(self) -> str:
        if self.kind != "tool_call":
            return '{"text": ' + json.dumps(self.text) + "}"
        call: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            call["id"] = self.id
        if self.name is not None:
            call["name"] = self.name
        call["arguments"] = self.text
        return json.dumps(call)

    def continued_by(self, other: Delta) -> bool:
        """Whether `other` only adds text to this delta (same kind, same tool call),
        so the two may go out as one event."""
        return (
            other.kind == self.kind
            and other.index == self.index
            and other.id is None
            and other.name is None
        )

    def joined(self, text: str) -> Delta:
        return Delta(self.kind, self.text + text, self.index, self.id, self.name)


OnDelta = Callable[[Delta], Awaitable[None]]


def deltas(chunk: Chunk) -> list[Delta]:
    """A chunk's output as events: reasoning, then text, then tool-call pieces."""
    found = []
    if chunk.reasoning:
        found.append(Delta("reasoning", chunk.reasoning))
    if chunk.content:
        found.append(Delta("token", chunk.content))
    for call in chunk.tool_calls:
        if call.arguments or call.id or call.name:
            found.append(Delta("tool_call", call.arguments, call.index, call.id, call.name))
    return found
