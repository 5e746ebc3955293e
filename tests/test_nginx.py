"""The shipped deploy/nginx.conf, run by a real nginx in front of real gateways."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import httpx_sse
import pytest

from tests.conftest import TIMEOUT, GatewayServer, create, marker, read_events, text_of, wait_until
from tests.deploy import Nginx

ACCESS_LOG = Path("/var/log/nginx/sse-gateway.access.log")


@pytest.fixture
def behind_nginx(
    gateway: Callable[..., GatewayServer], tmp_path: Path
) -> Iterator[Callable[..., Nginx]]:
    """`behind_nginx(read_timeout=None, **gateway settings)`: one gateway behind nginx."""
    with_nginx: list[Nginx] = []

    def start(read_timeout: str | None = None, **overrides: object) -> Nginx:
        server = gateway(**overrides)
        directory = tmp_path / f"nginx{len(with_nginx)}"
        directory.mkdir()
        nginx = Nginx(directory, [server.url.removeprefix("http://")], read_timeout)
        with_nginx.append(nginx.__enter__())
        return nginx

    try:
        yield start
    finally:
        for nginx in with_nginx:
            nginx.__exit__(None, None, None)


def timed_events(client: httpx.Client, url: str) -> list[tuple[float, httpx_sse.ServerSentEvent]]:
    with httpx_sse.connect_sse(client, "GET", url) as source:
        assert source.response.status_code == 200
        assert "content-encoding" not in source.response.headers  # no gzip
        return [(time.monotonic(), e) for e in source.iter_sse() if e.data]


def test_tokens_arrive_as_they_are_generated_not_in_one_burst(client, behind_nginx):
    nginx = behind_nginx()
    events_url = create(client, nginx.url, f"{marker()} [[sim tokens=8 delay_ms=250]]")
    with httpx.Client(timeout=TIMEOUT, headers={"Accept-Encoding": "gzip"}) as gzip_client:
        timed = timed_events(gzip_client, events_url)
    assert [e.event for _, e in timed] == ["token"] * 8 + ["done"]
    first, last = timed[0][0], timed[-2][0]
    assert last - first >= 1.0  # 7 gaps of 250 ms; a buffered answer arrives at once


def test_seven_streams_over_one_http2_connection_progress_together(behind_nginx):
    nginx = behind_nginx()
    count = 8
    with httpx.Client(http2=True, verify=False, timeout=TIMEOUT) as client:
        urls = [
            # 4 s each: far longer than creating them all takes, even on a busy machine.
            create(client, nginx.https_url, f"{marker()} [[sim tokens=10 delay_ms=400]]")
            for _ in range(count)
        ]
        times: dict[int, list[float]] = {}
        versions: set[str] = set()

        def read(index: int) -> None:
            with httpx_sse.connect_sse(client, "GET", urls[index]) as source:
                versions.add(source.response.http_version)
                times[index] = [time.monotonic() for e in source.iter_sse() if e.event == "token"]

        threads = [threading.Thread(target=read, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert versions == {"HTTP/2"}
    assert sorted(len(t) for t in times.values()) == [10] * count
    # Every stream had its first token before any stream had its last one.
    assert max(t[0] for t in times.values()) < min(t[-1] for t in times.values())


def test_heartbeats_keep_a_silent_stream_open_past_the_read_timeout(client, behind_nginx):
    nginx = behind_nginx(read_timeout="1s", sse={"heartbeat": 0.3})
    events_url = create(client, nginx.url, f"{marker()} [[sim tokens=2 delay_ms=2500]]")
    events = read_events(client, events_url)  # 2.5 s silences, nginx gives up after 1 s
    assert [e.event for e in events] == ["token", "token", "done"]


def test_request_id_passes_through_and_the_log_has_no_query_string(client, behind_nginx):
    nginx = behind_nginx()
    request_id = uuid.uuid4().hex
    content = f"[[sim echo=1 chunk=4]]{marker()} hello"
    events_url = create(client, nginx.url, content)
    stream_id = events_url.split("/")[-2]
    secret = f"tok{uuid.uuid4().hex}"
    headers = {"X-Request-ID": request_id}
    with httpx_sse.connect_sse(
        client, "GET", f"{events_url}?last_event_id=0&token={secret}", headers=headers
    ) as source:
        assert source.response.headers["x-request-id"] == request_id
        events = [e for e in source.iter_sse() if e.data]
    assert text_of(events).endswith(" hello")
    assert json.loads(events[-1].data)["finish_reason"] == "stop"

    def logged() -> list[str]:
        lines = ACCESS_LOG.read_text(errors="replace").splitlines()
        return [line for line in lines if stream_id in line]

    wait_until(lambda: bool(logged()))
    (line,) = logged()
    assert f"GET /v1/streams/{stream_id}/events HTTP/1.1" in line
    assert secret not in line and "?" not in line
    assert f"rid={request_id}" in line
