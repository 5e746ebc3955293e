"""gateway/metrics_server.py: `/metrics` alone on its own port, for as long as the
context is open (tests/test_metrics.py runs it inside whole gateways)."""

from __future__ import annotations

import anyio
import httpx
import pytest

from gateway.config import MetricsSettings
from gateway.metrics import Metrics
from gateway.metrics_server import serve_metrics
from tests.helpers import TIMEOUT, free_port

pytestmark = pytest.mark.anyio


async def answered(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """The first answer from `url`: the server starts listening in its thread."""
    with anyio.fail_after(5):
        while True:
            try:
                return await client.get(url)
            except httpx.ConnectError:
                await anyio.sleep(0.02)


async def test_serves_only_metrics_while_open_and_shares_its_port() -> None:
    metrics, port = Metrics(MetricsSettings()), free_port()
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        async with serve_metrics(metrics, "127.0.0.1", port):
            response = await answered(client, f"{url}/metrics")
            assert response.status_code == 200
            assert "gateway_streams_started_total" in response.text
            assert (await client.get(f"{url}/v1/streams")).status_code == 404
            # Another worker binds the same port while this one listens (SO_REUSEPORT).
            async with serve_metrics(Metrics(MetricsSettings()), "127.0.0.1", port):
                assert (await answered(client, f"{url}/metrics")).status_code == 200
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{url}/metrics")


async def test_an_address_it_cannot_bind_fails_at_once() -> None:
    with pytest.raises(OSError):
        async with serve_metrics(Metrics(MetricsSettings()), "192.0.2.1", free_port()):
            pass
