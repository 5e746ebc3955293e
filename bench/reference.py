"""The ceiling of this stack: a minimal relay with no features.

aiohttp client to the upstream, a raw ASGI SSE writer, nothing else: no
store, no resume, no timeouts, no error events. Run with
`BENCH_UPSTREAM=http://127.0.0.1:8001/v1 uvicorn bench.reference:app`.
"""

import json
import os

import aiohttp

from gateway.decoder import SSEDecoder

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8001/v1")
state: dict[str, aiohttp.ClientSession] = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            await send({"type": "lifespan.startup.complete"})
        await state["session"].close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = {"model": "sim-1", "messages": json.loads(body)["messages"], "stream": True}
    async with state["session"].post(f"{UPSTREAM}/chat/completions", json=request) as upstream:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        decoder = SSEDecoder()
        async for data in upstream.content.iter_any():
            for sse in decoder.feed(data):
                if sse.data.startswith("[DONE]"):
                    continue
                choices = json.loads(sse.data)["choices"]
                text = choices[0]["delta"].get("content") if choices else None
                if text:
                    event = b"event: token\ndata: " + json.dumps({"text": text}).encode() + b"\n\n"
                    await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"event: done\ndata: {}\n\n"})
