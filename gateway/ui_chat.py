"""The AI SDK's `useChat` backend: its transport talks to the gateway unchanged.

    POST   /v1/ui/chat                  what `DefaultChatTransport` sends: a UI message stream
    GET    /v1/ui/chat/{chatId}/stream  `resume: true`: the running generation replayed, or 204
    DELETE /v1/ui/chat/{chatId}/stream  the stop button: cancels that generation (204)

A generation is an ordinary stream (`Generations.start`, the same store, limits,
auth and metrics as `/v1/streams`); what is new is only the dialect the
response speaks (`gateway.ui_stream`, through `StreamResponse`'s `Encoder`)
and a key per chat in the store that names its latest stream. The key is a
hash of the caller's identity and the chat id, so nobody resumes or stops
another caller's chat. It is forgotten once a response has written the whole
stream (the client has the message; a reload must not replay it) or on stop.
docs/ai-sdk.md is the user's side of this.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth import Identity
from gateway.config import LimitSettings
from gateway.errors import GatewayError
from gateway.payloads import ChatMessage, ChatRequest, check_limits
from gateway.responses import StreamResponse
from gateway.routes import read_request, start_generation
from gateway.state import AppState
from gateway.stores import StoredEvent, StreamStore
from gateway.ui_messages import UIChatRequest, chat_messages
from gateway.ui_stream import DONE, UIMessageStream, encode

__all__ = ["BASE", "chat_request", "routes"]

logger = logging.getLogger("gateway.ui_chat")

#: Where the endpoints live: the `api` of the app's `DefaultChatTransport`.
BASE = "/v1/ui/chat"

#: How the AI SDK recognises a UI message stream (`UI_MESSAGE_STREAM_HEADERS` in `ai`).
_HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}


async def send_messages(request: Request) -> Response | StreamResponse:
    state = AppState.of(request.app)
    identity, body = await read_request(state, request, UIChatRequest)
    chat = chat_request(body, state.settings.limits)
    stream_id = await start_generation(state, identity, chat)
    key = _chat_key(identity, body.id)
    await state.store.set_chat(key, stream_id)
    last = body.messages[-1]
    # Continuing an assistant message (after a client-side tool ran) keeps its id,
    # as the SDK's own servers do; otherwise the client would show it twice.
    message_id = last.id if last.role == "assistant" and last.id else _message_id(stream_id)
    return _stream(state, key, stream_id, message_id)


async def resume(request: Request) -> Response | StreamResponse:
    state = AppState.of(request.app)
    identity = state.auth.identify(request.headers, request.client)
    key = _chat_key(identity, request.path_params["chat_id"])
    stream_id = await state.store.chat_stream(key)
    if stream_id is None or await state.store.info(stream_id) is None:
        return Response(status_code=204)
    return _stream(state, key, stream_id, _message_id(stream_id))


async def stop(request: Request) -> Response:
    """Idempotent: a chat with nothing running is answered 204 as well."""
    state = AppState.of(request.app)
    identity = state.auth.identify(request.headers, request.client)
    key = _chat_key(identity, request.path_params["chat_id"])
    stream_id = await state.store.chat_stream(key)
    if stream_id is not None:
        await state.store.cancel(stream_id)
        await state.store.forget_chat(key, stream_id)
    return Response(status_code=204)


def chat_request(body: UIChatRequest, limits: LimitSettings) -> ChatRequest:
    """The generation's request (text, files, tool calls and results), within the
    operator's `limits`."""
    messages = [ChatMessage.model_validate(message) for message in chat_messages(body.messages)]
    chat = ChatRequest(
        messages=messages,
        model=body.model,
        temperature=body.temperature,
        max_tokens=body.max_tokens,
    )
    check_limits(chat, limits)
    return chat


def _stream(state: AppState, key: str, stream_id: str, message_id: str) -> StreamResponse:
    encoder = _UIEncoder(state.store, key, stream_id, message_id)
    return StreamResponse(state, stream_id, headers=_HEADERS, encoder=encoder)


def _chat_key(identity: Identity, chat_id: str) -> str:
    return hashlib.sha256(
        f"{identity.name}\0{chat_id}".encode("utf-8", "surrogatepass")
    ).hexdigest()


def _message_id(stream_id: str) -> str:
    """The assistant message's id: the same on every replay, and not the stream id
    (which, with auth off, is all it takes to read the stream)."""
    return "msg-" + hashlib.sha256(f"message\0{stream_id}".encode()).hexdigest()[:24]


class _UIEncoder:
    """The `Encoder` of one response: stored events as UI message stream chunks."""

    def __init__(self, store: StreamStore, key: str, stream_id: str, message_id: str) -> None:
        self._store = store
        self._key = key
        self._stream_id = stream_id
        self._message = UIMessageStream(message_id)

    def opening(self) -> bytes:
        return b"".join(encode(chunk) for chunk in self._message.opening())

    def encode(self, events: Sequence[StoredEvent]) -> Iterator[bytes]:
        for event in events:
            for chunk in self._message.chunks(event.event, json.loads(event.data)):
                yield encode(chunk)
            if event.terminal:
                yield DONE

    def failure(self, exc: GatewayError) -> bytes:
        chunks = self._message.chunks("error", json.loads(exc.event_data()))
        return b"".join(encode(chunk) for chunk in chunks) + DONE

    async def finished(self) -> None:
        try:
            await self._store.forget_chat(self._key, self._stream_id)
        except GatewayError as exc:  # the key expires by itself; the stream is complete
            logger.warning("chat of stream %s: cannot forget it: %s", self._stream_id, exc.message)


def routes(base: str = BASE) -> list[BaseRoute]:
    return [
        Route(base, send_messages, methods=["POST"]),
        Route(f"{base}/{{chat_id:path}}/stream", resume, methods=["GET"]),
        Route(f"{base}/{{chat_id:path}}/stream", stop, methods=["DELETE"]),
    ]
