"""Routing: which upstreams serve a model name, and falling back between them.

The `upstream` section is the default route: it serves requests that name no
model and the model `upstream.model`. `routes` adds model names, each served
by a list of upstreams tried in order. An upstream that fails before the
first token with a retryable error (cannot connect, timeout, 429, 5xx, a
broken answer) hands the request to the next one after a short backoff;
once a token was handed on, a failure is the answer. Every upstream is one
aiohttp session, made once and closed with the router.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

from gateway.config import Settings, UpstreamSettings
from gateway.deltas import OnDelta
from gateway.errors import GatewayError, ModelNotFound
from gateway.metrics import Metrics
from gateway.payloads import ChatRequest
from gateway.upstream import Finish, OnChunk, Upstream

__all__ = ["Router"]

logger = logging.getLogger("gateway.routing")

#: What an upstream hands on: a delta, or a chunk for the OpenAI front door.
Item = TypeVar("Item")

#: Backoff before the next upstream: 0.1 s, 0.2 s, 0.4 s ... at most 1 s.
_BACKOFF_BASE = 0.1
_BACKOFF_MAX = 1.0


class Router:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        self._default = settings.upstream.model
        table: dict[str, Sequence[UpstreamSettings]] = {self._default: [settings.upstream]}
        table.update(settings.routes)
        pool_size = settings.limits.max_concurrent_streams
        self._routes = {
            model: [
                Upstream(target, settings.base_url_of(target), metrics, pool_size=pool_size)
                for target in targets
            ]
            for model, targets in table.items()
        }

    def models(self) -> list[str]:
        """The model names this gateway serves, the default first."""
        return list(self._routes)

    def check(self, model: str | None) -> None:
        """Raise `ModelNotFound` unless `model` is routed (None: the default)."""
        self._upstreams(model)

    async def stream_deltas(self, chat: ChatRequest, on_delta: OnDelta) -> Finish:
        """`Upstream.stream_deltas` over the route of `chat.model`, with fallback."""
        return await self._route(chat.model, lambda up, out: up.stream_deltas(chat, out), on_delta)

    async def stream_chunks(
        self, model: str, arguments: dict[str, Any], on_chunk: OnChunk
    ) -> Finish:
        """`Upstream.stream_chunks` (the upstream's chunks, for the OpenAI front door)
        over the route of `model`, with fallback."""
        return await self._route(model, lambda up, out: up.stream_chunks(arguments, out), on_chunk)

    async def aclose(self) -> None:
        for upstreams in self._routes.values():
            for upstream in upstreams:
                await upstream.aclose()

    def _upstreams(self, model: str | None) -> list[Upstream]:
        upstreams = self._routes.get(model or self._default)
        if upstreams is None:
            raise ModelNotFound(f"The model {model!r} does not exist or is not routed here.")
        return upstreams

    async def _route(
        self,
        model: str | None,
        call: Callable[[Upstream, Callable[[Item], Awaitable[None]]], Awaitable[Finish]],
        forward: Callable[[Item], Awaitable[None]],
    ) -> Finish:
        name = model or self._default
        upstreams = self._upstreams(model)
        started = False

        async def hand_on(item: Item) -> None:
            nonlocal started
            started = True
            await forward(item)

        for index, upstream in enumerate(upstreams):
            try:
                finish = await call(upstream, hand_on)
            except GatewayError as exc:
                last = index == len(upstreams) - 1
                if started or last or not exc.retryable:
                    self._served(name, upstream if started else None, index, exc.code)
                    raise
                logger.warning(
                    "upstream failed, trying the next",
                    extra={"model": name, "upstream": upstream.name, "code": exc.code},
                )
                await anyio.sleep(min(_BACKOFF_BASE * 2**index, _BACKOFF_MAX))
            else:
                self._served(name, upstream, index, "done")
                return dataclasses.replace(finish, upstream=upstream.name)
        raise AssertionError("unreachable")  # pragma: no cover

    def _served(self, model: str, upstream: Upstream | None, index: int, outcome: str) -> None:
        """Record which upstream answered (`none`: all failed before the first token)."""
        served = upstream.name if upstream else "none"
        self._metrics.routed.labels(model, served, outcome).inc()
        logger.info(
            "routed",
            extra={"model": model, "upstream": served, "fallbacks": index, "outcome": outcome},
        )
