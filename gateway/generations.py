"""Generations: each runs in a task the gateway owns, never in a request.

`Generations` admits new ones (refused while draining or at
`limits.max_concurrent_streams`, counted before the first await so a burst
cannot slip past the limit), starts each as a `Generation` in a task of its
own (a plain asyncio task: an anyio task group's task costs more per stream,
and drain, not a group, is what ends them), and on shutdown drains them:
running ones get `server.drain_timeout` to finish, then are cut and end with
`error: shutdown`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from gateway import logs
from gateway.config import Settings
from gateway.errors import OverCapacity, Shutdown
from gateway.generation import Generation
from gateway.limits import Slot
from gateway.metrics import Metrics, StreamMeter
from gateway.payloads import ChatRequest
from gateway.routing import Router
from gateway.stores import StreamStore

__all__ = ["Generations"]


class Generations:
    """The app's running generations: admission, start, drain."""

    def __init__(
        self,
        settings: Settings,
        store: StreamStore,
        upstream: Router,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._settings = settings
        self._store = store
        self._upstream = upstream
        #: The generations' tasks, referenced until they end (the loop keeps only weak ones).
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._draining = False
        #: One cancel scope per running generation, for `drain` to cut.
        self._running: set[anyio.CancelScope] = set()

    @property
    def draining(self) -> bool:
        """No new stream is accepted: `drain` was called (at once on SIGTERM, see
        `gateway.server`)."""
        return self._draining

    @property
    def active(self) -> int:
        """Generations running now (and admitted ones being set up)."""
        return self._active

    async def start(
        self, chat: ChatRequest, *, stream_id: str | None, slot: Slot, caller: str | None = None
    ) -> str:
        """Create a stream and start generating into it; returns its id (`stream_id`,
        or a random one); `caller` names who asked, in the finished-stream log line.

        From the moment this returns, the generation owns `slot` (the caller's
        concurrency slot, see `limits`) and releases it when it ends. If this
        raises, the slot is still the caller's to release.
        """
        self._admit()
        stream_id = stream_id or secrets.token_urlsafe(24)
        try:
            self._upstream.check(chat.model)
            await self._store.create(stream_id)
        except BaseException:
            self._leave()
            raise
        settings = self._settings
        generation = Generation(
            stream_id,
            lambda on_delta: self._upstream.stream_deltas(chat, on_delta),
            self._store,
            meter=self._metrics.stream_started(),
            slot=slot,
            disconnect_grace=settings.streams.disconnect_grace,
            coalesce=settings.sse.coalesce_ms / 1000,
            log={"caller": caller, "model": chat.model},
            log_content=(lambda text: _content(chat, text)) if settings.logging.content else None,
        )
        logs.stream_id.set(stream_id)  # for the request's own log lines
        task = asyncio.get_running_loop().create_task(self._run(generation), name=stream_id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stream_id

    @contextmanager
    def generation(self) -> Iterator[StreamMeter]:
        """A generation that runs in the caller's task instead (the OpenAI front door):
        refused and counted like the others, and cut by `drain` (it then raises
        cancellation). The caller finishes the meter."""
        self._admit()
        try:
            with self._cancellable():
                yield self._metrics.stream_started()
        finally:
            self._leave()

    async def drain(self, timeout: float) -> None:
        """Refuse new streams, wait up to `timeout` seconds for running generations to
        end by themselves, then cut the rest (they end with `error: shutdown`)."""
        self._draining = True
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        for scope in self._running:
            scope.cancel()
        await self._idle.wait()

    def _admit(self) -> None:
        """Count one more generation, or refuse it; no await between check and count."""
        if self.draining:
            raise Shutdown(retry_after=1)
        if self._active >= self._settings.limits.max_concurrent_streams:
            raise OverCapacity(retry_after=1)
        self._active += 1
        if self._active == 1:
            self._idle = anyio.Event()

    def _leave(self) -> None:
        self._active -= 1
        if not self._active:
            self._idle.set()

    @contextmanager
    def _cancellable(self) -> Iterator[None]:
        """A scope `drain` can cut."""
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                yield
            finally:
                self._running.discard(scope)

    async def _run(self, generation: Generation) -> None:
        # The task has a copy of the request's context: its request id, this stream's id.
        try:
            with self._cancellable():
                await generation.run()
        finally:
            self._leave()


def _content(chat: ChatRequest, completion: str) -> dict[str, str]:
    """The prompt and the answer, for the log line, when `logging.content` is on."""
    prompt = json.dumps([message.model_dump() for message in chat.messages], ensure_ascii=False)
    return {"prompt": prompt, "completion": completion}
