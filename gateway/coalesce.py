"""Coalescing: deltas that arrive within `sse.coalesce_ms` go out as fewer events.

A fast model can send a thousand deltas a second; each becomes a stored event,
a frame and a write per reader. Joining the deltas of a short window cuts
that work several times over while the text stays exact. Only consecutive
deltas of one kind (and one tool call) are joined, so events never change
order: reasoning, text and each tool call's arguments keep their sequence.
The first delta is never held back, so time to first token does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import anyio

from gateway.deltas import Delta

__all__ = ["Coalescer"]


class Coalescer:
    """Buffers deltas for up to `window` seconds, then emits them joined.

    `add` takes each delta; `run` is the task that flushes when a window ends
    (it never returns: cancel it); `flush` emits what is left, e.g. before the
    terminal event.
    """

    def __init__(self, emit: Callable[[Delta], Awaitable[None]], window: float) -> None:
        self._emit = emit
        self._window = window
        #: Runs of deltas to join: the first delta of each, and the texts that follow it.
        self._buffer: list[tuple[Delta, list[str]]] = []
        self._due = 0.0
        self._pending = anyio.Event()
        self._first = True

    async def add(self, delta: Delta) -> None:
        if self._first:
            self._first = False
            await self._emit(delta)
            return
        if self._buffer and self._buffer[-1][0].continued_by(delta):
            self._buffer[-1][1].append(delta.text)
            return
        self._buffer.append((delta, []))
        if len(self._buffer) == 1:
            self._due = anyio.current_time() + self._window
            self._pending.set()

    async def run(self) -> NoReturn:
        while True:
            await self._pending.wait()
            await anyio.sleep_until(self._due)
            self._pending = anyio.Event()
            with anyio.CancelScope(shield=True):  # text taken from the buffer is never lost
                await self.flush()

    async def flush(self) -> None:
        runs, self._buffer = self._buffer, []
        for first, texts in runs:
            await self._emit(first.joined("".join(texts)) if texts else first)
