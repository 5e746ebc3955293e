"""`streams.store: redis` across real gateway processes sharing a real redis-server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import httpx_sse
import pytest
import redis

from gateway import create_app
from tests.helpers import (
    LEASE_TTL,
    TIMEOUT,
    RedisServer,
    create,
    echo,
    marker,
    read_events,
    redis_settings,
    run_server,
    running_redis,
    test_settings,
    text_of,
    wait_until,
)
from tests.helpers_deploy import GatewayProcess, Nginx, gateways


@pytest.fixture
def pair(simulator, redis_server, tmp_path) -> Iterator[list[GatewayProcess]]:
    """Two gateway processes, A and B, sharing one Redis."""
    with gateways(tmp_path, redis_settings(simulator, redis_server), 2) as started:
        yield started


def test_resume_on_another_instance_through_nginx_is_exact(client, pair, tmp_path):
    a, b = pair
    content, text = echo(60)  # 20 tokens, ~2 s
    events_url = create(client, a.url, content)
    path = events_url.removeprefix(a.url)
    with Nginx(tmp_path / "nginx", [a.url[7:], b.url[7:]]) as nginx:
        head = []
        with httpx_sse.connect_sse(client, "GET", nginx.url + path) as source:
            for event in source.iter_sse():
                if event.data:
                    head.append(event)
                if len(head) == 5:
                    break  # the client's connection is cut mid-stream
    tail = read_events(client, b.url + path, {"Last-Event-ID": head[-1].id})
    events = head + tail
    assert [e.id for e in events] == [str(i) for i in range(1, 22)]
    assert text_of(events) == text
    assert events[-1].event == "done"


def test_subscribers_on_two_instances_see_identical_sequences(client, pair):
    a, b = pair
    content, text = echo(30)
    path = create(client, a.url, content).removeprefix(a.url)
    with httpx.Client(timeout=TIMEOUT) as other:
        on_a, on_b = read_events(client, a.url + path), read_events(other, b.url + path)
    triples = [[(e.event, e.id, e.data) for e in got] for got in (on_a, on_b)]
    assert triples[0] == triples[1]
    assert text_of(on_a) == text


def test_delete_on_one_instance_cancels_the_generation_on_the_other(client, pair, simulator):
    a, b = pair
    m = marker()
    path = create(client, a.url, f"{m} [[sim tokens=100 delay_ms=100]]").removeprefix(a.url)
    wait_until(lambda: len(simulator.sim.find(m)) == 1)
    assert client.delete(b.url + path.removesuffix("/events")).status_code == 204
    events = read_events(client, b.url + path)
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["code"] == "cancelled"
    wait_until(lambda: simulator.sim.find(m)[0].outcome == "client_gone")


def test_a_killed_instance_is_reported_as_generation_lost(client, pair):
    a, b = pair
    path = create(client, a.url, f"{marker()} [[sim tokens=100 delay_ms=100]]")
    path = path.removeprefix(a.url)
    got = []
    with httpx_sse.connect_sse(client, "GET", b.url + path) as source:
        for event in source.iter_sse():
            if not event.data:
                continue
            got.append(event)
            if len(got) == 3:
                a.signal(signal.SIGKILL)
                killed = time.monotonic()
    lost_after = time.monotonic() - killed
    *tokens, last = got
    assert [e.event for e in tokens] == ["token"] * len(tokens)
    assert last.event == "error"
    data = json.loads(last.data)
    assert data["code"] == "generation_lost"
    assert data["retryable"] is True
    assert lost_after < LEASE_TTL + 3


def test_redis_down_gives_clear_errors_and_service_comes_back(client, simulator):
    body = {"messages": [{"role": "user", "content": f"{marker()} [[sim tokens=3]]"}]}
    with running_redis() as redis_server:
        settings = test_settings(
            simulator, streams={"store": "redis"}, redis={"url": redis_server.url}
        )
        with run_server(create_app(settings)) as url:
            assert client.get(f"{url}/readyz").status_code == 200
            redis_server.stop()
            response = client.post(f"{url}/v1/streams", json=body)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "store_unavailable"
            ready = client.get(f"{url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "not_ready"
            errors = [
                line
                for line in client.get(f"{url}/metrics").text.splitlines()
                if line.startswith("gateway_redis_errors_total ")
            ]
            assert errors and float(errors[0].split()[1]) >= 2  # the create and the readyz
            redis_server.start()
            wait_until(lambda: client.get(f"{url}/readyz").status_code == 200, timeout=10)
            events = read_events(client, create(client, url, body["messages"][0]["content"]))
            assert [e.event for e in events] == ["token"] * 3 + ["done"]


def test_finished_streams_expire_after_retention(client, gateway, redis_server):
    settings = {"streams": {"store": "redis", "retention": 0.3}, "redis": {"url": redis_server.url}}
    server = gateway(**settings)
    events_url = create(client, server.url, f"{marker()} [[sim tokens=2]]")
    assert [e.event for e in read_events(client, events_url)] == ["token", "token", "done"]
    stream_id = events_url.split("/")[-2]
    with redis.Redis.from_url(redis_server.url) as direct:
        assert direct.keys(f"sse:{{{stream_id}}}:*")
        wait_until(lambda: not direct.keys(f"sse:{{{stream_id}}}:*"), timeout=3)
    assert client.get(events_url).status_code == 404


def test_workers_share_streams_through_redis(client, simulator, redis_server, tmp_path):
    gateway = GatewayProcess(tmp_path, redis_settings(simulator, redis_server))
    gateway.extra_args = ["--workers", "2"]
    gateway.start()
    try:
        content, text = echo(30)
        events = read_events(client, create(client, gateway.url, content))
        assert text_of(events) == text
        assert events[-1].event == "done"
    finally:
        gateway.signal(signal.SIGTERM)  # the manager stops its workers (SIGKILL would orphan them)
        gateway.wait(15)


def test_workers_refuse_the_memory_store(simulator, tmp_path):
    settings = redis_settings(simulator, RedisServer(), streams={"store": "memory"})
    gateway = GatewayProcess(tmp_path, settings)
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(gateway.config)]
    done = subprocess.run([*command, "--workers", "2"], capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"--workers needs streams.store: redis" in done.stderr
