"""The AI SDK's own client (npm `ai`, pinned in tests/node/package-lock.json) against
real gateways: the Node suite tests/node/*.test.mjs, and through nginx over two
instances on Redis. Skipped only where Node.js is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import GatewayServer, marker, redis_settings, wait_until
from tests.helpers_deploy import Nginx, gateways

pytestmark = pytest.mark.stores("memory", "redis")

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node() -> str:
    """The `node` binary, with the pinned packages installed (`npm ci`, as `make test` does)."""
    binary, npm = shutil.which("node"), shutil.which("npm")
    if binary is None or npm is None:
        pytest.skip("Node.js (node and npm) is not installed: the AI SDK client tests need it")
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600
        )
    return binary


def run_node(node: str, *files: str, **env: str) -> None:
    """`node --test FILES` in tests/node; fails with its report when a test fails."""
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", *files],
        cwd=NODE_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sdk_chat_reads_sends_resumes_and_stops(
    node: str, gateway: Callable[..., GatewayServer], simulator, store_name: str
):
    run = marker()
    server = gateway(web={"enabled": False})
    run_node(node, "ai-sdk.test.mjs", GATEWAY_URL=server.url, SIM_MARKER=run)
    # The stop endpoint closed the upstream request of the stopped generation.
    (stopped,) = simulator.sim.find(f"{run}-stop")
    wait_until(lambda: stopped.outcome == "client_gone")


def test_resume_on_the_other_instance_behind_nginx_completes_the_message(
    node: str, simulator, redis_server, tmp_path: Path
):
    settings = redis_settings(simulator, redis_server)
    with gateways(tmp_path, settings, 2) as (a, b):
        upstreams = [a.url.removeprefix("http://"), b.url.removeprefix("http://")]
        with Nginx(tmp_path / "nginx", upstreams) as nginx:
            run_node(
                node,
                "nginx-resume.mjs",
                NGINX_URL=nginx.url,
                GATEWAY_A=a.url,
                GATEWAY_B=b.url,
            )
