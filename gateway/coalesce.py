"""Coalescing: token deltas that arrive within `sse.coalesce_ms` go out as one event.

A fast model can send a thousand deltas a second; each becomes a stored event,
a frame and a write per reader. Joining the deltas of a short window cuts
that work several times over while the text stays exact. The first delta is
never held back, so time to first token does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import anyio

__all__ = ["Coalescer"]


class Coalescer:
    """Buffers deltas for up to `window` seconds, then emits them joined.

    `add` takes each delta; `run` is the task that flushes when a window ends
    (it never returns: cancel it); `flush` emits what is left, e.g. before the
    terminal event.
    """

    def __init__(self, emit: Callable[[str], Awaitable[None]], window: float) -> None:
        self._emit = emit
        self._window = window
        self._buffer: list[str] = []
        self._due = 0.0
        self._pending = anyio.Event()
        self._first = True

    async def add(self, text: str) -> None:
        if self._first:
            self._first = False
            await self._emit(text)
            return
        self._buffer.append(text)
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
        if self._buffer:
            text = "".join(self._buffer)
            self._buffer.clear()
            await self._emit(text)
