"""`Exits`: the stream responses to cut when the server exits, one per app
(`AppState.exits`); each `StreamResponse` is in it for as long as it writes."""

from __future__ import annotations

import asyncio

import anyio

__all__ = ["Exits"]


class Exits:
    """The responses to cut when the server exits, each after its grace period.

    One per app (`AppState.exits`): the drain watcher calls `exiting` when the
    server says it is exiting (`gateway.server`'s exit notice), instead of a
    waiting task per response.
    """

    def __init__(self) -> None:
        self._responses: dict[anyio.CancelScope, float] = {}
        self._exiting = False

    def add(self, response: anyio.CancelScope, grace: float) -> None:
        self._responses[response] = grace
        if self._exiting:
            asyncio.get_running_loop().call_later(grace, response.cancel)

    def discard(self, response: anyio.CancelScope) -> None:
        self._responses.pop(response, None)

    def exiting(self) -> None:
        """The server is exiting: cut every response once its grace has passed."""
        self._exiting = True
        loop = asyncio.get_running_loop()
        for response, grace in list(self._responses.items()):
            loop.call_later(grace, response.cancel)
