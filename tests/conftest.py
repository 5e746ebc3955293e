"""Fixtures: real uvicorn servers on ephemeral loopback ports (built from tests/helpers.py).

The simulator is shared by the whole session; each test gets gateways built
with the settings it needs.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from gateway import create_app
from gateway.config import SimulatorSettings
from gateway.simulator import Simulator
from tests.helpers import (
    TIMEOUT,
    GatewayServer,
    RedisServer,
    SimServer,
    merge,
    run_server,
    running_redis,
    test_settings,
)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Tests marked `anyio` run on asyncio, as uvicorn serves the gateway."""
    return "asyncio"


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimServer]:
    """The OpenAI-compatible simulator; answers are instant unless a request asks."""
    sim = Simulator(SimulatorSettings(tokens=8, token_delay=0))
    with run_server(sim.app) as url:
        yield SimServer(url, sim)


# -- stream stores -------------------------------------------------------------
#
# A module marked `pytestmark = pytest.mark.stores("memory", "redis")` runs each
# of its tests that starts a gateway once per store; other gateways use memory.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stores(*names): run the gateway tests over these stores")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("stores")
    if marker is not None and "store_name" in metafunc.fixturenames:
        metafunc.parametrize("store_name", marker.args, indirect=True)


@pytest.fixture(scope="session")
def store_name(request: pytest.FixtureRequest) -> str:
    name: str = getattr(request, "param", "memory")
    return name


@pytest.fixture(scope="session")
def store_settings(request: pytest.FixtureRequest, store_name: str) -> dict[str, Any]:
    """Settings overrides that select the store (starting redis-server when needed)."""
    if store_name == "memory":
        return {}
    redis = request.getfixturevalue("redis_server")
    return {"streams": {"store": "redis"}, "redis": {"url": redis.url, "lease_ttl": 2}}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def gateway(
    simulator: SimServer, store_settings: dict[str, Any]
) -> Iterator[Callable[..., GatewayServer]]:
    """Start gateways with settings overrides, e.g. `gateway(sse={"heartbeat": 0.2})`."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> GatewayServer:
            app = create_app(test_settings(simulator, **merge(store_settings, overrides)))
            return GatewayServer(stack.enter_context(run_server(app)), app)

        yield start


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo the logging set-up of a command run in-process (`main(["serve", ...])`), whose
    handlers would otherwise write to this test's captured, then closed, stderr."""
    loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    yield
    for lg, handlers, level, propagate, disabled in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


@pytest.fixture
def url(gateway: Callable[..., GatewayServer]) -> str:
    """A gateway with the default test settings."""
    return gateway().url


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def gc_restored() -> Iterator[None]:
    """For a test that loads the app as `sse-gateway serve` does (which freezes the
    process's objects and raises the collection threshold): this process's collector
    as it was afterwards, unfrozen, and unfrozen before too."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
