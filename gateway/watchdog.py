"""The deadlines of one upstream answer, watched by a timer instead of the socket.

A socket's read timeout sees bytes, not progress: an upstream that sends
keep-alive comments but no token never trips it, nor can it bound a whole
answer. The watchdog cancels
the answer's scope by the clock: `upstream.timeouts.first_token` for the first
output, `idle` between outputs after it, and a deadline over all
(`upstream.timeouts.total`, counted over one upstream's attempts).
"""

from __future__ import annotations

import asyncio

import anyio

__all__ = ["Watchdog"]


class Watchdog:
    """Cancels `scope` when the upstream is too slow: no first token within
    `first_token`, a silence over `idle` once tokens flow, or the `deadline`.

    A chunk only records the time (`touch`); the timer re-arms itself when it
    fires before its time, so the per-chunk cost is one float assignment.
    """

    def __init__(
        self, scope: anyio.CancelScope, first_token: float, idle: float, deadline: float
    ) -> None:
        self._scope = scope
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._deadline = deadline
        self._due = min(self._loop.time() + first_token, deadline)
        self._last: float | None = None
        self._handle = self._loop.call_at(self._due, self._check)
        #: A content token has arrived: `idle` applies from now on.
        self.started = False

    def touch(self) -> None:
        """A chunk arrived; the first content token switches to the `idle` limit."""
        self._last = self._loop.time()
        if not self.started:
            self.started = True
            self._arm(min(self._last + self._idle, self._deadline))

    def shorten(self, seconds: float) -> None:
        """Give the upstream at most `seconds` more."""
        self._deadline = min(self._deadline, self._loop.time() + seconds)
        self._last = None
        self._arm(self._deadline)

    def _arm(self, due: float) -> None:
        self._handle.cancel()
        self._due = due
        self._handle = self._loop.call_at(due, self._check)

    def stop(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        if self._last is not None:
            self._due = min(self._last + self._idle, self._deadline)
        if self._loop.time() >= self._due:
            self._scope.cancel()
        else:
            self._handle = self._loop.call_at(self._due, self._check)
