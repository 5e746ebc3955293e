"""Plain helpers the test modules share: servers on loopback ports, settings, clients.

Fixtures live in tests/conftest.py (built from these); test modules import from
here and never from conftest.py or from one another. Real processes (`sse-gateway
serve`, nginx) are in tests/helpers_deploy.py.

Each in-process server runs in its own thread with its own event loop, like a
separate process would, so a test can never starve it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import httpx_sse
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.types import ASGIApp

from gateway import Settings, create_app, load_settings
from gateway.auth import hash_key
from gateway.deltas import Delta, OnDelta
from gateway.payloads import ChatRequest
from gateway.simulator import Simulator
from gateway.state import AppState
from gateway.upstream import Finish, OnChunk

TIMEOUT = httpx.Timeout(10.0)


# -- servers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


@dataclass
class GatewayServer:
    url: str
    app: Starlette

    @property
    def state(self) -> AppState:
        """The running gateway's settings, store, generations...: tests look here."""
        return AppState.of(self.app)


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


# -- settings -------------------------------------------------------------------


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, section by section."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
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
    return load_settings(os.devnull, environ=env, overrides=merge(base, overrides))


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test

#: The lease of the Redis deployment tests: short, so a lost generation shows soon.
LEASE_TTL = 1.0


def redis_settings(simulator: SimServer, redis_server: RedisServer, **extra: Any) -> dict[str, Any]:
    """A whole config file's settings for gateway processes sharing `redis_server`."""
    settings: dict[str, Any] = {
        "upstream": {"base_url": simulator.base_url, "timeouts": {"total": 30}},
        "simulator": {"enabled": False},
        "web": {"enabled": False},
        "streams": {"store": "redis"},
        "redis": {"url": redis_server.url, "lease_ttl": LEASE_TTL},
        "sse": {"heartbeat": 0.5},
        "server": {"drain_timeout": 1},
    }
    settings.update(extra)
    return settings


KEY = "a-client-key"
WITH_KEYS = {"auth": {"mode": "api_key", "api_keys": [hash_key(KEY)]}}


@contextmanager
def own_simulator(sim_server: SimServer, /, **overrides: Any) -> Iterator[tuple[str, Starlette]]:
    """A gateway whose upstream is its own /simulator (`upstream.base_url: null`)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = {
        "upstream": {"base_url": None},
        "server": {"port": sock.getsockname()[1]},
        "simulator": {"enabled": None},  # served because the upstream uses it
    }
    app = create_app(test_settings(sim_server, **{**settings, **overrides}))
    with run_server(app, sock) as url:
        yield url, app


# -- in-process gateways (Starlette's TestClient, no sockets) ----------------------


def offline_settings(**overrides: Any) -> Settings:
    """Settings for a gateway whose upstream is scripted (`ScriptedRouter`)."""
    base: dict[str, Any] = {
        "upstream": {"base_url": "http://127.0.0.1:9/v1"},  # never called: the router is scripted
        "server": {"drain_timeout": 0.5},
    }
    return load_settings(os.devnull, environ={}, overrides={**base, **overrides})


class ScriptedRouter:
    """An upstream whose answer is the prompt's words; `slow` in the prompt spaces them
    a second apart (a stream that is still running when the test acts)."""

    def check(self, model: str | None) -> None:
        pass

    def models(self) -> list[str]:
        return ["scripted"]

    async def stream_deltas(self, chat: ChatRequest, on_delta: OnDelta) -> Finish:
        words = str(chat.messages[-1].content).split()
        for word in words:
            await on_delta(Delta("token", word + " "))
            await anyio.sleep(1 if "slow" in words else 0.002)
        return Finish("stop", None)

    async def stream_chunks(
        self, model: str, arguments: dict[str, Any], on_chunk: OnChunk
    ) -> Finish:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


# -- requests -------------------------------------------------------------------


def marker() -> str:
    """A unique word to find this test's requests in the simulator's record."""
    return f"m{uuid.uuid4().hex[:12]}"


def echo(length: int) -> tuple[str, str]:
    """(content, the text the simulator will answer): 3-character tokens, 100 ms apart."""
    text = (marker() + " the quick brown fox jumps over the lazy dog " * 4)[:length]
    return f"[[sim echo=1 chunk=3 delay_ms=100]]{text}", text


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


def read_frames(client: httpx.Client, events_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of every event of a finite SSE response, read whole (a
    `TestClient` is an `httpx.Client` too)."""
    body = client.get(events_url).text
    found = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            found.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
    return found


def text_of(events: list[httpx_sse.ServerSentEvent]) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if e.event == "token")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# -- metrics --------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client, url: str) -> Samples:
    """Every sample of `url`/metrics, by name and labels."""
    response = client.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the labelled child was never touched."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def labelled(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The nonzero samples of `name`, by their labels."""
    return {labels: v for (n, labels), v in samples.items() if n == name and v}


@contextmanager
def root_handler(handler: logging.Handler, level: int) -> Iterator[None]:
    """`handler` on the root logger at `level` for as long as the context is open."""
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)
        root.removeHandler(handler)
