"""The bench's upstream mock: OpenAI's streaming chat completions wire format at
almost no CPU, so the systems under test, not the mock, are what is measured.

The project's simulator (`sse-gateway simulate`) is a Starlette app with a task
group per answer; at 10,000 streams it would need a core of its own. This one is
a bare asyncio protocol on uvloop with httptools (uvicorn's parser): each answer
is one coroutine that writes pre-encoded chunks. It reads the simulator's
`[[sim tokens=N delay_ms=N]]` directive from the request body and answers
`GET /v1/models`, which is all the bench asks of it.

Run alone: `python -m bench.upstream --port 8001`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

import httptools
import uvloop

_DIRECTIVE = re.compile(rb"tokens=(\d+)(?:\s+delay_ms=(\d+))?")
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_MODELS = json.dumps({"object": "list", "data": [{"id": "sim-1", "object": "model"}]}).encode()
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def _chunk(delta: str, finish: str | None = None) -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "sim-1",
            "choices": [{"index": 0, "delta": json.loads(delta), "finish_reason": finish}],
        }
    )
    return _chunked(f"data: {body}\n\n".encode())


def _chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


_ROLE = _chunk('{"role": "assistant", "content": ""}')
_TOKENS = [_chunk(json.dumps({"content": f" w{i}"})) for i in range(100)]
_END = _chunk("{}", "stop") + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class _Connection(asyncio.Protocol):
    """One keep-alive connection: requests one after the other, each answered by a task."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._answer: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None:
            self._answer.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        assert transport is not None
        body, self._body = b"".join(self._body), []
        if self._url.endswith(b"/models"):
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            )
            transport.write(head % len(_MODELS) + _MODELS)
        elif self._url.endswith(b"/chat/completions"):
            found = _DIRECTIVE.search(body)
            tokens = int(found.group(1)) if found else 20
            delay = int(found.group(2) or 0) / 1000 if found else 0.0
            self._answer = asyncio.get_running_loop().create_task(_answer(transport, tokens, delay))
        else:
            transport.write(_NOT_FOUND)


async def _answer(transport: asyncio.Transport, tokens: int, delay: float) -> None:
    transport.write(_HEAD + _ROLE)
    for index in range(tokens):
        if delay:
            await asyncio.sleep(delay)
        elif index % 16 == 15:
            await asyncio.sleep(0)  # back to back, yet fair to the other answers
        if transport.is_closing():
            return
        transport.write(_TOKENS[index % len(_TOKENS)])
    transport.write(_END)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, "127.0.0.1", port, backlog=16384)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    uvloop.run(serve(parser.parse_args().port))
