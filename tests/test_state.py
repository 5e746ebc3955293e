"""`AppState`: what the lifespan opened, reached the one way, `AppState.of(app)`."""

from __future__ import annotations

import anyio
from starlette.testclient import TestClient

from gateway import create_app
from gateway.state import AppState
from gateway.stores.memory import MemoryStore
from tests.helpers import ScriptedRouter, offline_settings


def test_the_state_is_what_the_lifespan_opened_and_outlives_it() -> None:
    settings = offline_settings()
    store, router = MemoryStore(settings), ScriptedRouter()
    app = create_app(settings, store=store, router=router)
    with TestClient(app) as client:
        state = AppState.of(app)
        assert state.settings is settings
        assert state.store is store
        assert state.router is router
        created = client.post("/v1/streams", json={"messages": [{"role": "user", "content": "a"}]})
        assert anyio.run(store.info, created.json()["id"]) is not None  # the handler's store
    assert AppState.of(app) is state  # kept after shutdown, for tests to look at
    assert state.generations.draining


def test_each_app_has_its_own_state() -> None:
    settings = offline_settings()
    first, second = (create_app(settings, router=ScriptedRouter()) for _ in range(2))
    with TestClient(first), TestClient(second):
        assert AppState.of(first) is not AppState.of(second)
        assert AppState.of(first).store is not AppState.of(second).store
