"""The OpenAI-compatible front door: `POST /v1/chat/completions` and `GET /v1/models`.

Existing `openai` SDK code points its `base_url` at the gateway. A streamed
answer is the upstream's own chunks relayed as they come (tool-call deltas,
usage and all), ending in `data: [DONE]`, without the stream store: the SDK
cannot resume, so replay would buy nothing (ARCHITECTURE.md). The status
waits for the first chunk with output, so a failure before it (after any
fallback) is an HTTP error the SDK raises as its usual exception; a failure
after it is an error chunk, which the SDK raises as `openai.APIError`.

A proxy in front (nginx's `proxy_read_timeout`) cuts a response that stays
silent too long, so after each `sse.heartbeat` of silence the gateway sends
bytes that clients ignore: an SSE comment in a stream, a space before a
non-streamed JSON answer. The first one commits the status to 200: a failure
after it is an error chunk, or for a non-streamed answer an OpenAI error body.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.chunks import Chunk
from gateway.errors import GatewayError, Shutdown
from gateway.generation import Outcome, outcome_name
from gateway.limits import holding
from gateway.openai_errors import openai_event, openai_response
from gateway.payloads import ChatMessage, read_payload
from gateway.responses import send_within
from gateway.state import AppState
from gateway.upstream import Finish, OnChunk

__all__ = ["CompletionRequest", "routes"]

logger = logging.getLogger("gateway.openai")

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each chunk on at once
]
_JSON_HEADERS = [(b"content-type", b"application/json"), (b"x-accel-buffering", b"no")]


class CompletionRequest(BaseModel):
    """A chat completion request. The gateway reads what it enforces (`messages`,
    `model`, the `max_tokens` cap) and `stream`; every field is passed on as given."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def arguments(self) -> dict[str, Any]:
        """What the upstream gets (its own model name is added by the upstream)."""
        arguments = self.model_dump(exclude_unset=True, exclude={"model", "stream"})
        if not self.stream:  # the answer is assembled from a stream: ask for its usage
            arguments["stream_options"] = {"include_usage": True}
        return arguments


async def chat_completions(request: Request) -> Response | ASGIApp:
    gateway = AppState.of(request.app)
    try:
        identity = gateway.auth.identify(request.headers, request.client)
        await gateway.limits.check_rate(identity)
        body = await read_payload(request, CompletionRequest, gateway.settings.limits)
        gateway.router.check(body.model)
        gateway.descriptors.check(gateway.settings.server.fd_reserve)
        slot = await gateway.limits.acquire(identity)
    except GatewayError as exc:
        return openai_response(exc)
    return holding(slot, _Completion(gateway, body))


async def models(request: Request) -> Response:
    gateway = AppState.of(request.app)
    try:
        gateway.auth.identify(request.headers, request.client)
    except GatewayError as exc:
        return openai_response(exc)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "sse-gateway"}
        for name in gateway.router.models()
    ]
    return JSONResponse({"object": "list", "data": data})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]


class _Completion:
    """One answer, run in the request's own task: a race between the upstream
    (through the router) and the client leaving; `drain` can cut it too."""

    def __init__(self, gateway: AppState, body: CompletionRequest) -> None:
        self._gateway = gateway
        self._body = body
        self._started = False  # the response has begun
        self._sending = anyio.Lock()  # the answer and the keep-alive bytes share `send`
        self._written = 0.0  # when bytes were last sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self._gateway
        chunks: list[Chunk] = []
        outcome: Outcome | None = Shutdown()  # unless the generation ends
        try:
            with gateway.generations.generation() as meter:

                async def forward(chunk: Chunk) -> None:
                    meter.token()
                    if not self._body.stream:
                        chunks.append(chunk)
                        return
                    body = _frame(chunk.payload)
                    message = {"type": "http.response.body", "body": body, "more_body": True}
                    async with self._sending:
                        await self._start(send)
                        await send_within(send, message, gateway.settings.sse.send_timeout)
                        self._written = anyio.current_time()

                outcome = await self._race(receive, send, forward)
        except GatewayError as exc:  # refused: draining or at capacity
            await openai_response(exc)(scope, receive, send)
            return
        name = outcome_name(outcome)
        meter.finish(name)
        usage = meter.usage(outcome.usage if isinstance(outcome, Finish) else None)
        logger.info(
            "stream finished",
            extra={
                "outcome": name,
                "model": self._body.model,
                "tokens": meter.tokens,
                "usage": usage,
            },
        )
        if outcome is None:
            return  # nobody to answer
        with anyio.move_on_after(self._gateway.settings.sse.send_timeout, shield=True):
            await self._answer(outcome, chunks, scope, receive, send)

    async def _start(self, send: Send) -> None:
        if not self._started:
            self._started = True
            headers = _HEADERS if self._body.stream else _JSON_HEADERS
            await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _keep_alive(self, send: Send) -> None:
        """After each `sse.heartbeat` without a write, bytes the client ignores."""
        interval = self._gateway.settings.sse.heartbeat
        filler = b": keep-alive\n\n" if self._body.stream else b" "  # JSON allows leading space
        self._written = anyio.current_time()
        while True:
            await anyio.sleep(max(0.0, self._written + interval - anyio.current_time()))
            async with self._sending:
                if anyio.current_time() - self._written >= interval:
                    await self._start(send)
                    await send({"type": "http.response.body", "body": filler, "more_body": True})
                    self._written = anyio.current_time()

    async def _race(self, receive: Receive, send: Send, forward: OnChunk) -> Outcome | None:
        """The upstream's outcome, or None when the client left first."""
        outcome: Outcome | None = None
        async with anyio.create_task_group() as race:

            async def generate() -> None:
                nonlocal outcome
                try:
                    outcome = await self._gateway.router.stream_chunks(
                        self._body.model, self._body.arguments(), forward
                    )
                except GatewayError as exc:
                    outcome = exc
                except SendTimeoutError:
                    logger.warning("client too slow: dropped after sse.send_timeout")
                race.cancel_scope.cancel()

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                race.cancel_scope.cancel()

            race.start_soon(generate)
            race.start_soon(watch_disconnect)
            race.start_soon(self._keep_alive, send)
        return outcome

    async def _answer(
        self,
        outcome: Outcome,
        chunks: list[Chunk],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if isinstance(outcome, GatewayError) and not self._started:
            await openai_response(outcome)(scope, receive, send)
            return
        if not self._body.stream:
            if isinstance(outcome, GatewayError):  # after keep-alive spaces: status 200 sent
                answer = openai_response(outcome)
            else:
                answer = JSONResponse(assemble(chunks, outcome))
            if not self._started:
                await answer(scope, receive, send)
                return
            body = bytes(answer.body)  # the status and headers went out with the first space
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if not self._started:  # cannot happen: a finished answer forwarded its chunks
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        tail = b"data: [DONE]\n\n" if isinstance(outcome, Finish) else openai_event(outcome)
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def _frame(payload: str) -> bytes:
    """One `data:` event. A chunk the upstream spread over several `data:` lines was
    joined with LF (JSON whitespace); each line gets its own `data:` again."""
    return b"data: " + payload.replace("\n", "\ndata: ").encode() + b"\n\n"


def assemble(chunks: list[Chunk], finish: Finish) -> dict[str, Any]:
    """The `chat.completion` object that the stream of `chat.completion.chunk`s spells."""
    first = json.loads(chunks[0].payload)
    content = "".join(chunk.content or "" for chunk in chunks)
    reasoning = "".join(chunk.reasoning or "" for chunk in chunks)
    calls = finish.tool_calls
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or not calls else None,
        "refusal": None,
    }
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"] or "", "arguments": call["arguments"]},
            }
            for call in calls
        ]
    return {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "system_fingerprint": first.get("system_fingerprint"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish.finish_reason,
            }
        ],
        "usage": finish.usage,
    }
