"""Shared fixtures: real uvicorn servers on ephemeral loopback ports.

Each server runs in its own thread with its own event loop, like a separate
process would, so a test can never starve it. The simulator is shared by the
whole session; each test gets gateways built with the settings it needs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import httpx_sse
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from gateway import Settings, create_app, load_settings
from gateway.config import SimulatorSettings
from gateway.simulator import Simulator
from gateway.state import AppState

TIMEOUT = httpx.Timeout(10.0)


@contextmanager
def run_server(app: ASGIApp, sock: socket.socket | None = None) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (an ephemeral port unless `sock` is given); yields its URL."""
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # As `sse-gateway serve` does: the app reads X-Forwarded-For (server.trusted_proxies).
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", proxy_headers=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@dataclass
class SimServer:
    url: str
    sim: Simulator

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimServer]:
    """The OpenAI-compatible simulator; answers are instant unless a request asks."""
    sim = Simulator(SimulatorSettings(tokens=8, token_delay=0))
    with run_server(sim.app) as url:
        yield SimServer(url, sim)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_settings(sim_server: SimServer, /, **overrides: Any) -> Settings:
    """Settings for a gateway in front of the shared simulator, tightened for tests."""
    base: dict[str, Any] = {
        "upstream": {
            "base_url": sim_server.base_url,
            "max_retry_wait": 2,
            "timeouts": {"connect": 2, "first_token": 5, "idle": 5, "total": 30},
        },
        "simulator": {"enabled": False},
        "server": {"drain_timeout": 1},
    }
    env = {"OPENAI_API_KEY": "sk-test-secret-key"}
    return load_settings(os.devnull, environ=env, overrides=_merge(base, overrides))


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A real redis-server on a loopback port, without persistence; can be stopped
    and started again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@dataclass
class GatewayServer:
    url: str
    app: Starlette

    @property
    def state(self) -> AppState:
        """The running gateway's settings, store, generations...: tests look here."""
        return AppState.of(self.app)


@pytest.fixture
def gateway(
    simulator: SimServer, store_settings: dict[str, Any]
) -> Iterator[Callable[..., GatewayServer]]:
    """Start gateways with settings overrides, e.g. `gateway(sse={"heartbeat": 0.2})`."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> GatewayServer:
            app = create_app(test_settings(simulator, **_merge(store_settings, overrides)))
            return GatewayServer(stack.enter_context(run_server(app)), app)

        yield start


@pytest.fixture
def url(gateway: Callable[..., GatewayServer]) -> str:
    """A gateway with the default test settings."""
    return gateway().url


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as client:
        yield client


def marker() -> str:
    """A unique word to find this test's requests in the simulator's record."""
    return f"m{uuid.uuid4().hex[:12]}"


def create(client: httpx.Client, url: str, content: str, **fields: Any) -> str:
    """POST /v1/streams with one user message; returns the events URL."""
    body = {"messages": [{"role": "user", "content": content}], **fields}
    response = client.post(f"{url}/v1/streams", json=body)
    assert response.status_code == 201, response.text
    return f"{url}{response.json()['events_url']}"


def read_events(
    client: httpx.Client, events_url: str, headers: Mapping[str, str] | None = None
) -> list[httpx_sse.ServerSentEvent]:
    """Every event of one response, read with an independent SSE parser (httpx-sse).

    Blocks without data (our leading `retry:`) are left out: the WHATWG
    algorithm dispatches no event for them, though httpx-sse reports them.
    """
    with httpx_sse.connect_sse(client, "GET", events_url, headers=dict(headers or {})) as source:
        assert source.response.status_code == 200, source.response.read()
        return [event for event in source.iter_sse() if event.data]


def text_of(events: list[httpx_sse.ServerSentEvent]) -> str:
    import json

    return "".join(json.loads(e.data)["text"] for e in events if e.event == "token")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
