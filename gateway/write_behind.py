"""Write-behind: a generation's deltas go to a store whose appends wait for a round
trip without waiting for each one; those that come meanwhile go out together.

Awaiting every append before reading the upstream's next chunk moves one event per
round trip per stream, and each event costs a call, a reply and a wake-up. Here `add`
returns at once while few deltas wait, one write is on its way at a time, and it
takes every delta that waits (one `StreamStore.append_many`). The events are the
same as with an append each: one per delta, in order, with the same ids; only the
calls are fewer. `coalesce.py` is what joins deltas into fewer events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from gateway.deltas import Delta
from gateway.stores import pulse

__all__ = ["WriteBehind"]


class WriteBehind:
    """Writes the deltas given to `add`, in order, in as few calls of `write` as the
    calls' round trips allow.

    Back-pressure: `add` waits while more than `bound` deltas wait for a write (memory
    stays bounded, and a slow store slows the upstream's reading as an append each
    would). A failed write is raised by the next `add` and by `flush`, so the
    generation ends with it as with a failed append; nothing is written after it.
    `flush` waits until everything added is written, e.g. before the terminal event.
    """

    def __init__(self, write: Callable[[Sequence[Delta]], Awaitable[object]], bound: int) -> None:
        self._write = write
        self._bound = bound
        #: Deltas added and not yet taken by a write.
        self._waiting: list[Delta] = []
        #: The one task writing, while there is something to write.
        self._writing: asyncio.Task[None] | None = None
        #: Pulsed when a write takes the waiting deltas, and when the writing ends.
        self._taken = asyncio.Event()
        self._failure: Exception | None = None

    async def add(self, delta: Delta) -> None:
        """Hand `delta` on; it is written even if this call is cancelled while it waits."""
        self._raise_failure()
        self._waiting.append(delta)
        if self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write_waiting())
        elif len(self._waiting) > self._bound:
            await self._taken.wait()
            self._raise_failure()

    async def flush(self) -> None:
        """Until every delta added is written; raises the failure of a write."""
        if self._writing is not None:
            await asyncio.wait([self._writing])  # not cancelled with the caller
        self._raise_failure()

    async def _write_waiting(self) -> None:
        try:
            while self._waiting:
                deltas, self._waiting = self._waiting, []
                pulse(self._taken)
                await self._write(deltas)
        except Exception as exc:  # raised in the generation by the next `add` or `flush`
            self._failure = exc
        finally:
            self._writing = None
            pulse(self._taken)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
