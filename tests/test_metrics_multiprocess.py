"""Metrics of several worker processes (gateway/metrics_multiprocess.py): the totals
add up whichever worker answers, and the setting and the variable must agree."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import ConfigError, create_app
from tests.helpers import TIMEOUT, free_port, marker, scrape, test_settings, value, wait_until
from tests.helpers_deploy import terminate, wait_http


def _per_process(directory: str) -> dict[int, float]:
    """Streams started as each worker's own file says."""
    counts = {}
    for path in glob.glob(os.path.join(directory, "counter_*.db")):
        pid = int(Path(path).stem.split("_")[1])
        for metric in MultiProcessCollector.merge([path], accumulate=False):
            for sample in metric.samples:
                if sample.name == "gateway_streams_started_total":
                    counts[pid] = sample.value
    return counts


def test_counts_add_up_across_worker_processes(simulator, redis_server, tmp_path):
    """`sse-gateway serve --workers 2` with `metrics.multiprocess_dir` only: the command
    sets PROMETHEUS_MULTIPROC_DIR for its workers."""
    port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {
        **os.environ,
        "GATEWAY_CONFIG": os.devnull,
        "GATEWAY_UPSTREAM__BASE_URL": simulator.base_url,
        "GATEWAY_SIMULATOR__ENABLED": "false",
        "GATEWAY_WEB__ENABLED": "false",
        "GATEWAY_STREAMS__STORE": "redis",  # what --workers needs
        "GATEWAY_REDIS__URL": redis_server.url,
        "GATEWAY_METRICS__MULTIPROCESS_DIR": str(directory),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "gateway", "serve", "--workers", "2",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", process, "gateway workers")
        with httpx.Client(timeout=TIMEOUT) as client:
            wait_until(lambda: len(glob.glob(str(directory / "counter_*.db"))) == 2, 20)

            def stream(_: int) -> str:
                body = {"message": f"{marker()} [[sim tokens=3 delay_ms=30]]"}
                with httpx.Client(timeout=TIMEOUT) as own:  # a connection each
                    response = own.post(f"{url}/api/stream", json=body)
                assert response.status_code == 200
                return response.text

            sent = 0
            with ThreadPoolExecutor(8) as pool:
                # Until both workers have served some (the kernel picks), at most 20 rounds.
                for _ in range(20):
                    assert all(pool.map(stream, range(8)))
                    sent += 8
                    per_process = _per_process(str(directory))
                    if len([n for n in per_process.values() if n]) == 2:
                        break
            per_process = _per_process(str(directory))
            assert len(per_process) == 2 and all(per_process.values()), per_process
            assert sum(per_process.values()) == sent
            for _ in range(4):  # whichever worker answers, the totals are the same
                samples = scrape(client, url)
                assert value(samples, "gateway_streams_started_total") == sent
                assert value(samples, "gateway_streams_finished_total", outcome="done") == sent
                assert value(samples, "gateway_tokens_total") == 3 * sent
                assert value(samples, "gateway_time_to_first_token_seconds_count") == sent
                assert value(samples, "gateway_active_streams") == 0
                assert (
                    value(samples, "gateway_http_requests_total", route="/api/stream",
                          method="POST", status="200") == sent
                )  # fmt: skip
    finally:
        terminate(process)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_multiprocess_dir_must_exist(simulator, tmp_path):
    settings = test_settings(simulator, metrics={"multiprocess_dir": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"metrics\.multiprocess_dir"):
        create_app(settings)


def test_multiprocess_dir_needs_a_process_started_with_the_variable(simulator, tmp_path):
    """prometheus-client is not switched to multiprocess mode after its import."""
    settings = test_settings(simulator, metrics={"multiprocess_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
        create_app(settings)


def test_the_variable_without_multiprocess_dir_is_refused(simulator, tmp_path, monkeypatch):
    """Else /metrics would show one worker's numbers as if they were all."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"metrics\.multiprocess_dir is not set"):
        create_app(test_settings(simulator))
