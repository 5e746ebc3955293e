"""The shipped deploy/nginx.conf, run by a real nginx in front of real gateways."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import httpx_sse
import openai
import pytest

from tests.helpers import (
    TIMEOUT,
    WITH_KEYS,
    GatewayServer,
    create,
    marker,
    own_simulator,
    read_events,
    text_of,
    wait_until,
)
from tests.helpers_deploy import Nginx, gateways

ACCESS_LOG = Path("/var/log/nginx/sse-gateway.access.log")


@pytest.fixture
def behind_nginx(
    gateway: Callable[..., GatewayServer], tmp_path: Path
) -> Iterator[Callable[..., Nginx]]:
    """`behind_nginx(read_timeout=None, instances=1, **gateway settings)`: gateways
    behind nginx."""
    with_nginx: list[Nginx] = []

    def start(read_timeout: str | None = None, instances: int = 1, **overrides: object) -> Nginx:
        servers = [gateway(**overrides) for _ in range(instances)]
        directory = tmp_path / f"nginx{len(with_nginx)}"
        directory.mkdir()
        addresses = [server.url.removeprefix("http://") for server in servers]
        nginx = Nginx(directory, addresses, read_timeout)
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

    async def read_all() -> tuple[set[str], list[list[float]]]:
        # One event loop drives every stream over the one connection (httpcore's
        # HTTP/2 state is not shared between threads).
        async with httpx.AsyncClient(http2=True, verify=False, timeout=TIMEOUT) as client:
            urls = []
            for _ in range(count):
                # 4 s each: far longer than creating them all takes, even on a busy machine.
                body = {
                    "messages": [
                        {"role": "user", "content": f"{marker()} [[sim tokens=10 delay_ms=400]]"}
                    ]
                }
                response = await client.post(f"{nginx.https_url}/v1/streams", json=body)
                assert response.status_code == 201, response.text
                urls.append(nginx.https_url + response.json()["events_url"])
            versions: set[str] = set()

            async def read(url: str) -> list[float]:
                async with httpx_sse.aconnect_sse(client, "GET", url) as source:
                    versions.add(source.response.http_version)
                    return [
                        time.monotonic() async for e in source.aiter_sse() if e.event == "token"
                    ]

            times = await asyncio.gather(*(read(url) for url in urls))
            return versions, list(times)

    versions, times = asyncio.run(read_all())
    assert versions == {"HTTP/2"}
    assert sorted(len(t) for t in times) == [10] * count
    # Every stream had its first token before any stream had its last one.
    assert max(t[0] for t in times) < min(t[-1] for t in times)


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


# -- what may be retried, silences, what is not routed --------------------------


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=20)


def test_a_non_streamed_completion_slower_than_the_read_timeout_succeeds_once(
    behind_nginx, simulator
):
    nginx = behind_nginx(read_timeout="1s", instances=2, sse={"heartbeat": 0.3})
    word = marker()
    with sdk(nginx.url) as client:
        answer = client.chat.completions.create(
            model="sim-1",
            messages=[{"role": "user", "content": f"{word} [[sim tokens=4 delay_ms=700]]"}],
        )
    assert answer.choices[0].finish_reason == "stop"
    assert len(answer.choices[0].message.content.split()) == 4
    assert [r.outcome for r in simulator.sim.find(word)] == ["completed"]


def test_a_streamed_completion_whose_first_token_is_slower_than_the_read_timeout_succeeds_once(
    behind_nginx, simulator
):
    nginx = behind_nginx(read_timeout="1s", instances=2, sse={"heartbeat": 0.3})
    word = marker()
    with sdk(nginx.url) as client:
        chunks = list(
            client.chat.completions.create(
                model="sim-1",
                messages=[{"role": "user", "content": f"{word} [[sim tokens=2 delay_ms=2500]]"}],
                stream=True,
            )
        )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert [r.outcome for r in simulator.sim.find(word)] == ["completed"]


def test_a_plain_text_answer_may_be_silent_longer_than_the_read_timeout(
    client, behind_nginx, simulator
):
    nginx = behind_nginx(read_timeout="1s", sse={"heartbeat": 0.3})
    word = marker()
    body = {"message": f"{word} [[sim tokens=2 delay_ms=1500 echo=1 chunk=100]]"}
    response = client.post(f"{nginx.url}/api/stream", json=body)
    assert response.status_code == 200
    assert response.text.startswith(word)
    assert [r.outcome for r in simulator.sim.find(word)] == ["completed"]


def active_streams(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    match = re.search(r"^gateway_active_streams (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_post_whose_instance_dies_is_not_replayed_to_another(simulator, tmp_path):
    settings = {
        "upstream": {"base_url": simulator.base_url},
        "web": {"enabled": False},
        "server": {"drain_timeout": 1},
    }
    word = marker()
    with (
        gateways(tmp_path, settings, 2) as instances,
        Nginx(tmp_path / "nginx", [g.url[7:] for g in instances]) as nginx,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        body = {
            "model": "sim-1",
            "messages": [{"role": "user", "content": f"{word} [[sim tokens=20 delay_ms=200]]"}],
        }
        outcome: list[httpx.Response] = []
        post = threading.Thread(
            target=lambda: outcome.append(
                client.post(f"{nginx.url}/v1/chat/completions", json=body)
            )
        )
        post.start()
        wait_until(lambda: any(active_streams(g.url) == 1 for g in instances))
        (serving,) = [g for g in instances if active_streams(g.url) == 1]
        serving.stop()  # SIGKILL mid-answer
        post.join(30)
    assert outcome[0].status_code == 502
    assert len(simulator.sim.find(word)) == 1


def test_metrics_are_not_routed_through_nginx(client, behind_nginx):
    nginx = behind_nginx()
    assert client.get(f"{nginx.url}/metrics").status_code == 404
    assert client.get(f"{nginx.url}/metrics?x=1").status_code == 404


def test_the_simulator_of_a_gateway_with_auth_is_closed_through_nginx(client, simulator, tmp_path):
    with (
        own_simulator(simulator, **WITH_KEYS) as (url, _),
        Nginx(tmp_path, [url.removeprefix("http://")]) as nginx,
    ):
        body = {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]}
        response = client.post(f"{nginx.url}/simulator/v1/chat/completions", json=body)
        assert response.status_code == 401
        assert client.get(f"{nginx.url}/simulator/v1/models").status_code == 401
