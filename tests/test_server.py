"""Connection limits of `sse-gateway serve` (gateway/server.py, gateway/descriptors.py),
against a real process: slow heads and bodies, idle sockets, huge heads, a client
that leaves mid-body, and a process short of file descriptors."""

from __future__ import annotations

import gc
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from gateway.config import ServerSettings
from gateway.server import GatewayConfig
from tests.helpers import TIMEOUT, marker, wait_until
from tests.helpers_deploy import GatewayProcess

LIMITS = {"header_timeout": 1, "body_timeout": 1, "max_header_bytes": 8192}


@pytest.fixture
def served(simulator, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway process with one-second read timeouts and an 8 KiB head limit."""
    settings = {
        "upstream": {"base_url": simulator.base_url},
        "server": {**LIMITS, "drain_timeout": 1},
        "web": {"enabled": False},
    }
    gateway = GatewayProcess(tmp_path, settings).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def connect(gateway: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.settimeout(0.2)
    return sock


def trickle_until_closed(sock: socket.socket, pieces: Iterator[bytes], limit: float) -> bytes:
    """Send a piece every 0.2 s until the server closes; what it answered. Fails after `limit` s."""
    answer = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            sock.sendall(next(pieces))
        except OSError:  # reset: closed
            return answer
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return answer
        if not data:
            return answer
        answer += data
    raise AssertionError(f"still open after {limit} s")


def endless(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


def test_a_head_trickled_a_header_at_a_time_gets_408_and_is_closed(served):
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        started = time.monotonic()
        answer = trickle_until_closed(sock, endless(b"X-Slow: 1\r\n"), limit=5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3


def test_a_body_trickled_a_byte_at_a_time_gets_408_and_is_closed(served):
    head = (
        b"POST /v1/streams HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    with connect(served) as sock:
        sock.sendall(head)
        started = time.monotonic()
        answer = trickle_until_closed(sock, endless(b" "), limit=5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3
    assert httpx.get(f"{served.url}/healthz", timeout=TIMEOUT).status_code == 200


def test_a_socket_that_sends_nothing_is_closed(served):
    with connect(served) as sock:
        started = time.monotonic()
        answer = trickle_until_closed(sock, endless(b""), limit=5)
    assert answer == b""
    assert time.monotonic() - started < 3


def test_a_one_megabyte_header_gets_431_and_the_gateway_stays_healthy(served):
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Big: ")
        answer = trickle_until_closed(sock, iter([b"a" * 65536] * 16), limit=5)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert httpx.get(f"{served.url}/healthz", timeout=TIMEOUT).status_code == 200


def http_requests(gateway: GatewayProcess, status: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=TIMEOUT).text
    pattern = rf'gateway_http_requests_total{{[^}}]*status="{status}"[^}}]*}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def test_a_client_that_leaves_mid_body_is_a_499_not_a_500(served):
    head = (
        b"POST /v1/streams HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    with connect(served) as sock:
        sock.sendall(head)
        time.sleep(0.2)  # the handler is now waiting for the rest of the body
    wait_until(lambda: http_requests(served, "499") == 1)
    assert http_requests(served, "500") == 0
    assert "Traceback" not in served.log.read_text()


# -- file descriptors ----------------------------------------------------------


def test_short_of_file_descriptors_new_streams_get_503_and_it_recovers(tmp_path, client):
    """`ulimit -n 256` and the built-in simulator (three sockets a stream)."""
    settings = {"simulator": {"enabled": True}, "web": {"enabled": False}}
    gateway = GatewayProcess(tmp_path, settings)
    gateway.preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    gateway.extra_args = ["--log-level", "info"]
    gateway.start()
    body = {"messages": [{"role": "user", "content": f"{marker()} [[sim tokens=3 delay_ms=1000]]"}]}
    try:
        statuses = []
        for _ in range(150):
            response = client.post(f"{gateway.url}/v1/streams", json=body)
            statuses.append(response.status_code)
            if response.status_code != 201:
                break
        assert statuses[-1] == 503, statuses
        assert response.json()["error"]["code"] == "over_capacity"
        assert 20 < len(statuses) < 150
        assert client.get(f"{gateway.url}/healthz").status_code == 200
        ready = client.get(f"{gateway.url}/readyz")
        assert ready.status_code == 503
        assert "file descriptors" in ready.json()["error"]["message"]
        assert "refusing new streams" in gateway.log.read_text()
        # The streams end after 3 s: descriptors come back, and so do new streams.
        wait_until(lambda: client.get(f"{gateway.url}/readyz").status_code == 200, timeout=15)
        assert client.post(f"{gateway.url}/v1/streams", json=body).status_code == 201
    finally:
        gateway.stop()


def test_loading_the_app_freezes_it_out_of_garbage_collections(gc_restored):
    """What is loaded lives as long as the server, so collections skip it, and they
    run far less often than CPython's default (every 700 allocations)."""
    assert gc.get_freeze_count() == 0
    GatewayConfig(Starlette(), limits=ServerSettings()).load()
    assert gc.get_freeze_count() > 1000  # the modules, classes and functions loaded
    assert gc.get_threshold()[0] >= 10 * 700
