"""The upstream: an OpenAI-compatible chat completions API, called with the `openai` SDK.

The SDK's defaults are not ours: its 600 s read timeout and its own retries are
replaced by `upstream.timeouts` and `upstream.retries`, and a deadline watched
here catches a stalled stream whatever the socket does. Retries happen only
before the first token was handed on, so a client never sees text twice.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import openai
from openai._response import AsyncAPIResponse

from gateway.config import UpstreamSettings
from gateway.errors import (
    GatewayError,
    UpstreamFailed,
    UpstreamIncomplete,
    UpstreamTimeout,
    from_upstream,
)
from gateway.payloads import ChatRequest

__all__ = ["Finish", "OnToken", "Upstream", "parse_chunk"]

OnToken = Callable[[str], Awaitable[None]]

_CLOSE_TIMEOUT = 2.0
_BACKOFF_BASE = 0.25


@dataclass(frozen=True, slots=True)
class Finish:
    finish_reason: str
    usage: dict[str, Any] | None


class Upstream:
    def __init__(self, settings: UpstreamSettings, base_url: str) -> None:
        self._settings = settings
        timeouts = settings.timeouts
        api_key = settings.api_key.get_secret_value() if settings.api_key else "unset"
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=httpx2.Timeout(
                connect=timeouts.connect,
                read=max(timeouts.first_token, timeouts.idle),
                write=timeouts.connect,
                pool=timeouts.connect,
            ),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, chat: ChatRequest, on_token: OnToken) -> Finish:
        """Stream one answer, handing each content delta to `on_token`.

        Raises a `GatewayError` subclass; retries those that are retryable
        while no token has been handed on yet.
        """
        settings = self._settings
        deadline = anyio.current_time() + settings.timeouts.total
        relayed = False

        async def relay(text: str) -> None:
            nonlocal relayed
            relayed = True
            await on_token(text)

        for attempt in range(settings.retries + 1):
            try:
                return await self._attempt(chat, relay, deadline)
            except GatewayError as exc:
                delay = self._retry_delay(exc, attempt, deadline)
                if relayed or delay is None:
                    raise
            await anyio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_delay(self, exc: GatewayError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or `None` to give up."""
        settings = self._settings
        if not exc.retryable or attempt >= settings.retries:
            return None
        if exc.retry_after is not None:
            delay = exc.retry_after
        else:
            delay = _BACKOFF_BASE * 2**attempt * (0.5 + random.random() / 2)
        if delay > settings.max_retry_wait or anyio.current_time() + delay >= deadline:
            return None
        return delay

    async def _attempt(self, chat: ChatRequest, on_token: OnToken, deadline: float) -> Finish:
        """One request. The body is read as raw SSE lines: building an SDK model
        per chunk costs more CPU than everything else the gateway does per token."""
        timeouts = self._settings.timeouts
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        response: AsyncAPIResponse[Any] | None = None
        started = done = False
        first_token_by = anyio.current_time() + timeouts.first_token
        with anyio.CancelScope(deadline=min(first_token_by, deadline)) as watchdog:
            try:
                request = self._client.chat.completions.with_streaming_response.create(
                    **self._arguments(chat), stream=True
                )
                response = await request.__aenter__()
                data: list[str] = []
                async for line in response.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[6:] if line.startswith("data: ") else line[5:])
                        continue
                    if line or not data or done:
                        continue  # other fields and comments; a blank line ends an event
                    payload = "\n".join(data)
                    data.clear()
                    if payload.startswith("[DONE]"):
                        # Read on to the end of the body, briefly, so the connection is reused.
                        done = True
                        watchdog.deadline = min(watchdog.deadline, anyio.current_time() + 0.1)
                        continue
                    content, finish, chunk_usage = parse_chunk(payload)
                    if chunk_usage is not None:
                        usage = chunk_usage
                    if finish:
                        finish_reason = finish
                    if content:
                        await on_token(content)
                        started = True
                    if started:
                        watchdog.deadline = min(anyio.current_time() + timeouts.idle, deadline)
            except (openai.OpenAIError, httpx2.HTTPError) as exc:
                raise from_upstream(exc, streaming=response is not None) from exc
            finally:
                if response is not None:
                    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                        await response.close()
        if watchdog.cancelled_caught and not done:
            raise UpstreamTimeout(
                "The upstream stopped sending tokens."
                if started
                else "The upstream sent no token in time."
            )
        if finish_reason is None:
            raise UpstreamIncomplete()
        return Finish(finish_reason, usage)

    def _arguments(self, chat: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": chat.model or self._settings.model,
            "messages": [message.model_dump() for message in chat.messages],
            "stream_options": {"include_usage": True},
        }
        if chat.temperature is not None:
            arguments["temperature"] = chat.temperature
        if chat.max_tokens is not None:
            arguments["max_tokens"] = chat.max_tokens
        return arguments


def parse_chunk(payload: str) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """Content delta, finish reason and usage of one `chat.completion.chunk` (choice 0).

    Raises `UpstreamFailed` for a chunk that is not JSON, has the wrong shape,
    or carries an error object (as OpenAI sends mid-stream).
    """
    content = finish = None
    try:
        chunk = json.loads(payload)
        if chunk.get("error"):
            raise UpstreamFailed("The upstream reported an error mid-stream.")
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                finish = choice.get("finish_reason")
                content = (choice.get("delta") or {}).get("content")
        usage = chunk.get("usage")
    except (ValueError, AttributeError, TypeError):
        raise UpstreamFailed("The upstream sent a malformed chunk.") from None
    if not isinstance(content, str | None) or not isinstance(usage, dict | None):
        raise UpstreamFailed("The upstream sent a malformed chunk.")
    return content, finish, usage
