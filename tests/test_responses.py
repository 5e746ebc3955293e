"""`StreamResponse` and the error responses (gateway/responses.py) at the ASGI level,
over a memory store: the exact bytes a reader gets, SSE or text, and how a failure
shows before and after the first byte."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import ASGIApp, Message

from gateway import Settings, load_settings
from gateway.errors import OverCapacity, UpstreamTimeout
from gateway.events import HEARTBEAT, frame, retry
from gateway.exits import Exits
from gateway.metrics import Metrics
from gateway.responses import StreamResponse, error_response, sse_error_response
from gateway.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

WATCHDOG = 5.0


def settings(**sse: Any) -> Settings:
    return load_settings(os.devnull, environ={}, overrides={"sse": {"retry_ms": 1500, **sse}})


async def stored(store: MemoryStore, *events: tuple[str, dict[str, Any]]) -> None:
    await store.create("s")
    for event, data in events:
        await store.append("s", event, json.dumps(data))


async def get(app: ASGIApp) -> httpx.Response:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with anyio.fail_after(WATCHDOG):
            return await client.get("/")


async def messages(app: ASGIApp) -> list[Message]:
    """What `app` sends, for a GET from a client that never leaves."""
    sent: list[Message] = []

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with anyio.fail_after(WATCHDOG):
        await app(scope, receive, send)
    return sent


@dataclass
class Parts:
    """What a response uses of the app (`AppParts`)."""

    store: MemoryStore
    settings: Settings
    metrics: Metrics
    exits: Exits = field(default_factory=Exits)


def response(store: MemoryStore, config: Settings, **kwargs: Any) -> StreamResponse:
    return StreamResponse(Parts(store, config, Metrics(config.metrics)), "s", **kwargs)


async def test_sse_is_the_retry_then_each_stored_frame_then_the_end() -> None:
    config = settings()
    store = MemoryStore(config)
    await stored(store, ("token", {"text": "a"}), ("token", {"text": "b"}), ("done", {}))
    answer = await get(response(store, config))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.content == retry(1500) + b"".join(
        [
            frame("token", '{"text": "a"}', 1),
            frame("token", '{"text": "b"}', 2),
            frame("done", "{}", 3),
        ]
    )
    resumed = await get(response(store, config, after=2))
    assert resumed.content == retry(1500) + frame("done", "{}", 3)


async def test_text_is_only_the_tokens() -> None:
    config = settings()
    store = MemoryStore(config)
    await stored(store, ("token", {"text": "hé"}), ("token", {"text": "llo\n"}), ("done", {}))
    answer = await get(response(store, config, format="text", headers={"X-Stream-ID": "s"}))
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["x-stream-id"] == "s"
    assert answer.text == "héllo\n"


async def test_a_held_response_that_fails_at_once_is_an_http_error() -> None:
    config = settings()
    store = MemoryStore(config)
    await stored(store, ("error", json.loads(OverCapacity(retry_after=3).event_data())))
    answer = await get(response(store, config, format="text", hold=True))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "3"
    assert answer.json()["error"]["code"] == "over_capacity"


async def test_a_text_stream_that_fails_after_its_first_byte_is_left_incomplete() -> None:
    """A reader must see a network error, not a short answer that looks whole."""
    config = settings()
    store = MemoryStore(config)
    await stored(store, ("token", {"text": "part"}), ("error", {"code": "upstream_timeout"}))
    sent = await messages(response(store, config, format="text"))
    assert sent[0]["status"] == 200
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert b"".join(m.get("body", b"") for m in bodies) == b"part"
    assert all(m.get("more_body", False) for m in bodies)  # never the final message


async def test_the_terminal_event_ends_the_response_in_its_own_write() -> None:
    """Each write is a system call: the opening goes out with the events that are
    already there (a held response), and the terminal event's write is the last
    message, not followed by an empty one."""
    config = settings()
    store = MemoryStore(config)
    await stored(store, ("token", {"text": "a"}), ("done", {}))
    events = frame("token", '{"text": "a"}', 1) + frame("done", "{}", 2)
    end = {"type": "http.response.body", "body": events, "more_body": False}

    held = await messages(response(store, config, hold=True))
    assert [m["type"] for m in held] == ["http.response.start", "http.response.body"]
    assert held[1] == {**end, "body": retry(1500) + events}
    assert (await messages(response(store, config)))[1:] == [
        {"type": "http.response.body", "body": retry(1500), "more_body": True},
        end,
    ]
    text = await messages(response(store, config, format="text", after=1))
    assert text[1:] == [{"type": "http.response.body", "body": b"", "more_body": False}]


async def test_a_waiting_reader_gets_heartbeats_until_the_end() -> None:
    config = settings(heartbeat=0.05)
    store = MemoryStore(config)
    await stored(store)

    async def finish_later() -> None:
        await anyio.sleep(0.3)
        await store.append("s", "done", "{}")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(finish_later)
        answer = await get(response(store, config))
    assert answer.content.startswith(retry(1500) + HEARTBEAT)
    assert answer.content.endswith(HEARTBEAT + frame("done", "{}", 1))


async def test_a_long_backlog_is_written_in_bounded_pieces() -> None:
    config = settings()
    store = MemoryStore(config)
    text = "x" * 1000
    await stored(store, *[("token", {"text": text})] * 300, ("done", {}))
    sent = [m["body"] for m in await messages(response(store, config)) if "body" in m]
    assert 3 <= len([piece for piece in sent if piece]) < 300
    assert max(len(piece) for piece in sent) < 2 * 64 * 1024
    assert b"".join(sent).count(b"event: token") == 300


def test_error_response_is_the_json_body_with_its_status_and_headers() -> None:
    answer = error_response(OverCapacity(retry_after=2))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert json.loads(answer.body) == OverCapacity(retry_after=2).body()


async def test_sse_error_response_is_one_error_event() -> None:
    problem = UpstreamTimeout()
    answer = await get(sse_error_response(problem, settings()))
    assert answer.status_code == 200
    assert answer.content == retry(1500) + frame("error", problem.event_data())
