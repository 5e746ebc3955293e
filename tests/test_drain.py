"""SIGTERM: a gateway process drains instead of dropping its streams."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time

import httpx
import httpx_sse
import uvicorn

from gateway import create_app
from gateway.server import GatewayConfig, uvicorn_options
from tests.helpers import (
    TIMEOUT,
    create,
    echo,
    marker,
    redis_settings,
    test_settings,
    wait_until,
)
from tests.helpers_deploy import GatewayProcess, Nginx, gateways


def memory_settings(simulator) -> dict:
    return {
        "upstream": {"base_url": simulator.base_url},
        "simulator": {"enabled": False},
        "web": {"enabled": False},
        "server": {"drain_timeout": 1},
    }


def never_ready(url: str, seconds: float) -> None:
    """`/readyz` never says ready again: refused, or 503."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            assert httpx.get(f"{url}/readyz", timeout=1).status_code == 503


def test_memory_store_finishes_what_it_can_then_ends_with_shutdown(client, simulator, tmp_path):
    gateway = GatewayProcess(tmp_path, memory_settings(simulator)).start()
    try:
        short, long = (
            client.post(
                f"{gateway.url}/v1/streams",
                json={"messages": [{"role": "user", "content": f"{marker()} {directive}"}]},
            ).json()["events_url"]
            for directive in ("[[sim tokens=5 delay_ms=100]]", "[[sim tokens=100 delay_ms=100]]")
        )
        results: dict[str, list[httpx_sse.ServerSentEvent]] = {}
        reading = threading.Semaphore(0)

        def read(name: str, path: str) -> None:
            with (
                httpx.Client(timeout=TIMEOUT) as own,
                httpx_sse.connect_sse(own, "GET", gateway.url + path) as source,
            ):
                results[name] = []
                for event in source.iter_sse():
                    if event.data:
                        results[name].append(event)
                        if len(results[name]) == 1:
                            reading.release()

        readers = [
            threading.Thread(target=read, args=item) for item in (("short", short), ("long", long))
        ]
        for reader in readers:
            reader.start()
        for _ in readers:  # both responses have started
            assert reading.acquire(timeout=10)
        gateway.signal(signal.SIGTERM)
        never_ready(gateway.url, 0.5)
        for reader in readers:
            reader.join(15)
        assert gateway.wait(10) == -signal.SIGTERM  # uvicorn re-raises it once done
    finally:
        gateway.stop()
    assert [e.event for e in results["short"]] == ["token"] * 5 + ["done"]
    *tokens, last = results["long"]
    assert 0 < len(tokens) < 100
    assert [e.id for e in results["long"]] == [str(i) for i in range(1, len(tokens) + 2)]
    assert last.event == "error"
    assert json.loads(last.data) | {"message": ""} == {
        "code": "shutdown",
        "message": "",
        "retryable": True,
    }


def test_redis_store_clients_resume_on_another_instance(simulator, redis_server, tmp_path):
    settings = redis_settings(
        simulator,
        redis_server,
        server={"drain_timeout": 5},
        sse={"heartbeat": 0.5, "retry_ms": 200},
    )
    with (
        gateways(tmp_path, settings, 2) as (a, b),
        Nginx(tmp_path / "nginx", [a.url[7:], b.url[7:]]) as nginx,
    ):
        if True:
            streams = []
            with httpx.Client(timeout=TIMEOUT) as client:
                for _ in range(4):
                    content, text = echo(60)  # 20 tokens, ~2 s
                    body = {"messages": [{"role": "user", "content": content}]}
                    path = client.post(f"{a.url}/v1/streams", json=body).json()["events_url"]
                    streams.append((path, text))
            results: dict[str, tuple[list[httpx_sse.ServerSentEvent], int]] = {}
            started = threading.Barrier(len(streams) + 1)

            def follow(path: str) -> None:
                """An EventSource: reconnect with Last-Event-ID until a terminal event."""
                got: list[httpx_sse.ServerSentEvent] = []
                connections = 0
                with httpx.Client(timeout=TIMEOUT) as own:
                    while not got or got[-1].event not in ("done", "error"):
                        if connections:  # as an EventSource does: wait the stream's `retry:`
                            time.sleep(0.2)
                        connections += 1
                        headers = {"Last-Event-ID": got[-1].id} if got else {}
                        try:
                            # First on A (where nginx might have sent it), then via nginx.
                            base = a.url if connections == 1 else nginx.url
                            with httpx_sse.connect_sse(
                                own, "GET", base + path, headers=headers
                            ) as source:
                                for event in source.iter_sse():
                                    if event.data:
                                        got.append(event)
                                        if len(got) == 3 and connections == 1:
                                            started.wait(10)
                        except httpx.TransportError:
                            pass
                        assert connections < 10
                results[path] = (got, connections)

            followers = [threading.Thread(target=follow, args=(p,)) for p, _ in streams]
            for follower in followers:
                follower.start()
            started.wait(10)
            a.signal(signal.SIGTERM)
            never_ready(a.url, 0.5)
            for follower in followers:
                follower.join(20)
            assert a.wait(10) == -signal.SIGTERM
    for path, text in streams:
        events, _ = results[path]
        assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
        if events[-1].event == "done":
            assert "".join(json.loads(e.data)["text"] for e in events[:-1]) == text
        else:
            assert json.loads(events[-1].data)["retryable"] is True
    # Every client was cut from A and resumed elsewhere, and the streams generated
    # on A were finished there while clients read them on B.
    assert all(connections > 1 for _, connections in results.values())
    # The streams generated on A were finished there while clients read them elsewhere.
    assert [results[p][0][-1].event for p, _ in streams] == ["done"] * len(streams)


def test_a_worker_process_drains_when_uvicorn_finishes_its_connections(simulator, gc_restored):
    """Under `--workers` each worker runs uvicorn's own server, which tells the app
    nothing: the gateway's protocol hears of the exit when the server asks each open
    connection to finish, and the app drains while its streams are still served."""
    settings = test_settings(simulator, server={"drain_timeout": 0.5})
    config = GatewayConfig(
        create_app(settings),
        limits=settings.server,
        log_level="warning",
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)  # what uvicorn's process manager runs in a worker
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10)
        with httpx.Client(timeout=TIMEOUT) as client:
            events_url = create(client, url, f"{marker()} [[sim tokens=200 delay_ms=20]]")
            events = []
            with httpx_sse.connect_sse(client, "GET", events_url) as source:
                for event in source.iter_sse():
                    if not event.data:
                        continue  # the retry field, heartbeats
                    events.append(event)
                    if len(events) == 1:
                        server.should_exit = True  # what a worker's SIGTERM handler does
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    *tokens, last = events
    assert 0 < len(tokens) < 200 and {e.event for e in tokens} == {"token"}
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert (last.event, json.loads(last.data)["code"]) == ("error", "shutdown")
