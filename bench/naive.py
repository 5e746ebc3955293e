"""What a user would write instead: the blog post's relay on the same packages.

The openai SDK's stream and sse-starlette, one route, no store, no resume,
no timeouts of its own. Run with
`BENCH_UPSTREAM=http://127.0.0.1:8001/v1 uvicorn bench.naive:app`.
"""

import json
import os

from openai import AsyncOpenAI
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.routing import Route

client = AsyncOpenAI(base_url=os.environ.get("BENCH_UPSTREAM"), api_key="unused")


async def stream(request):
    body = await request.json()

    async def events():
        response = await client.chat.completions.create(
            model="sim-1", messages=body["messages"], stream=True
        )
        async for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content:
                yield {
                    "event": "token",
                    "data": json.dumps({"text": chunk.choices[0].delta.content}),
                }
        yield {"event": "done", "data": "{}"}

    return EventSourceResponse(events())


app = Starlette(routes=[Route("/stream", stream, methods=["POST"])])
