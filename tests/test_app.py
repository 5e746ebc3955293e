"""The whole app in-process with a scripted upstream and store: faults in one stream
stay in that stream, admission holds under a burst, and drain always finishes.

Starlette's `TestClient` runs the lifespan and serves requests without sockets;
every response here is finite (a stream's body ends with its terminal event).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient

from gateway import create_app
from gateway.config import Settings
from gateway.errors import StoreUnavailable
from gateway.state import AppState
from gateway.stores import StoredEvent
from gateway.stores.memory import MemoryStore
from tests.helpers import ScriptedRouter, offline_settings, read_frames

EXIT_WATCHDOG = 10.0  # drain_timeout is 0.5 s: far less is expected


class FaultyStore(MemoryStore):
    """Fails the appends `fails(stream_id, event, data)` picks; `create` takes a turn
    of the event loop, as a networked store's would."""

    def __init__(self, settings: Settings, fails: Callable[[str, str, str], bool]) -> None:
        super().__init__(settings)
        self._fails = fails

    async def create(self, stream_id: str) -> None:
        await anyio.sleep(0.01)
        await super().create(stream_id)

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        if self._fails(stream_id, event, data):
            raise StoreUnavailable()
        return await super().append(stream_id, event, data)


@pytest.fixture
def serve() -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def start(
        fails: Callable[[str, str, str], bool] = lambda *_: False, **overrides: Any
    ) -> TestClient:
        config = offline_settings(**overrides)
        app = create_app(config, store=FaultyStore(config, fails), router=ScriptedRouter())  # type: ignore[arg-type]
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        started = time.monotonic()
        client.__exit__(None, None, None)  # the lifespan drains: it must end
        assert time.monotonic() - started < EXIT_WATCHDOG


def create(client: TestClient, text: str) -> str:
    response = client.post("/v1/streams", json={"messages": [{"role": "user", "content": text}]})
    assert response.status_code == 201, response.text
    return str(response.json()["events_url"])


def test_a_failed_coalescer_flush_ends_only_its_own_stream(
    serve: Callable[..., TestClient],
) -> None:
    """Before: the flush's exception escaped into the app's task group, cancelling every
    other generation and closing the store while the server kept serving."""
    words = " ".join(f"w{i}" for i in range(30))
    client = serve(
        fails=lambda _id, event, data: event == "token" and "doomed" in data,
        sse={"coalesce_ms": 5},
    )
    other = create(client, words)
    doomed = create(client, "first doomed " + words)
    assert read_frames(client, doomed)[-1][1:] == (
        "error",
        {
            "code": "store_unavailable",
            "message": "The stream store is unavailable; try again shortly.",
            "retryable": True,
        },
    )
    received = read_frames(client, other)
    assert received[-1][1] == "done"
    assert "".join(data["text"] for _, name, data in received if name == "token") == words + " "
    later = create(client, "still serving")
    assert read_frames(client, later)[-1][1] == "done"


def test_a_failed_terminal_event_still_frees_the_slot(serve: Callable[..., TestClient]) -> None:
    client = serve(
        fails=lambda _id, event, _data: event == "done",
        limits={"concurrent_streams_per_identity": 1},
    )
    body = {"messages": [{"role": "user", "content": "a b c"}]}
    assert client.post("/v1/streams", json=body).status_code == 201
    deadline = time.monotonic() + 5
    while (status := client.post("/v1/streams", json=body).status_code) == 429:
        assert time.monotonic() < deadline, "the slot never came back"
        time.sleep(0.01)
    assert status == 201


def test_admission_holds_under_a_burst(serve: Callable[..., TestClient]) -> None:
    """Before: the capacity check and the count were on either side of the store's
    `create`, and a burst was admitted far past `max_concurrent_streams`."""
    client = serve(limits={"max_concurrent_streams": 5})
    body = {"messages": [{"role": "user", "content": "slow slow slow"}]}
    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(lambda _: client.post("/v1/streams", json=body), range(40)))
    admitted = [r.json()["id"] for r in statuses if r.status_code == 201]
    assert len(admitted) == 5
    assert {r.status_code for r in statuses} == {201, 503}
    for stream_id in admitted:
        assert client.delete(f"/v1/streams/{stream_id}").status_code == 204


class FailingStartStore(FaultyStore):
    """Opens, then fails while the app is still starting (its counters cannot be had)."""

    closed = False

    def counters(self) -> Any:
        raise RuntimeError("no counters today")

    async def close(self) -> None:
        self.closed = True
        await super().close()


def test_a_failed_start_closes_what_it_had_opened() -> None:
    """Before: clients were opened outside the lifespan's `try`, so a failure while
    starting left them open."""
    config = offline_settings()
    store = FailingStartStore(config, lambda *_: False)
    app = create_app(config, store=store, router=ScriptedRouter())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no counters today"), TestClient(app):
        pass
    assert store.closed


class CrashingStore(FaultyStore):
    """Background work that fails once, as a bug in lease renewal would."""

    runs = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("renewal bug")
        await anyio.sleep_forever()


def test_failed_background_work_is_restarted() -> None:
    """Before: the Redis store's maintenance task ran outside any task group and a
    failure stopped lease renewal silently."""
    config = offline_settings()
    store = CrashingStore(config, lambda *_: False)
    app = create_app(config, store=store, router=ScriptedRouter())  # type: ignore[arg-type]
    with TestClient(app) as client:
        deadline = time.monotonic() + 5
        while store.runs < 2:
            assert time.monotonic() < deadline, "the background work was not restarted"
            time.sleep(0.02)
        assert read_frames(client, create(client, "still working"))[-1][1] == "done"


class CreateFailsStore(FaultyStore):
    async def create(self, stream_id: str) -> None:
        raise StoreUnavailable()


def test_a_store_that_cannot_create_is_a_503_and_frees_everything() -> None:
    config = offline_settings(limits={"concurrent_streams_per_identity": 1})
    store = CreateFailsStore(config, lambda *_: False)
    app = create_app(config, store=store, router=ScriptedRouter())  # type: ignore[arg-type]
    body = {"messages": [{"role": "user", "content": "a"}]}
    with TestClient(app) as client:
        for _ in range(2):  # the slot and the capacity count were given back
            response = client.post("/v1/streams", json=body)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "store_unavailable"
        assert AppState.of(client.app).generations.active == 0  # type: ignore[arg-type]


def test_a_store_failing_mid_stream_ends_it_with_an_id_and_then_204(
    serve: Callable[..., TestClient],
) -> None:
    client = serve(fails=lambda _id, event, data: event == "token" and "c" in data)
    url = create(client, "a b c d e")
    received = read_frames(client, url)
    assert [int(i) for i, _, _ in received] == list(range(1, len(received) + 1))
    assert [name for _, name, _ in received] == ["token", "token", "error"]
    assert received[-1][2]["code"] == "store_unavailable"
    assert client.get(url, headers={"Last-Event-ID": received[-1][0]}).status_code == 204
