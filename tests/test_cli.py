"""The commands a user runs: `sse-gateway serve` / `simulate` as real processes."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from gateway import __version__, create_app
from gateway.cli import main
from tests.helpers import create, free_port, read_events, run_server, test_settings, text_of
from tests.helpers_deploy import terminate, wait_http

pytestmark = pytest.mark.usefixtures("restore_logging")  # `main` configures logging

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def process(*args: str) -> Iterator[str]:
    """Run `python -m gateway ARGS` from the repository root; yields its URL once it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    command = [sys.executable, "-m", "gateway", *args, "--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/v1/models" if "simulate" in args else f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        yield url
    finally:
        terminate(proc)
        if proc.stderr:
            proc.stderr.close()


def test_serve_with_default_config_streams_from_the_built_in_simulator():
    """What `make run` does: config.yaml, built-in simulator, tokens then done."""
    with process("serve") as url, httpx.Client(timeout=10) as client:
        events = read_events(client, create(client, url, "hello [[sim tokens=4 delay_ms=10]]"))
        assert [e.event for e in events] == ["token"] * 4 + ["done"]
        assert len(text_of(events).split()) == 4


def test_simulate_serves_the_openai_wire_format():
    with process("simulate") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)
        with client:
            chunks = list(
                client.chat.completions.create(
                    model="sim-1",
                    messages=[{"role": "user", "content": "hi [[sim tokens=3 delay_ms=0]]"}],
                    stream=True,
                )
            )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"


def test_built_in_simulator_is_mounted_in_the_gateway(simulator):
    """`upstream.base_url: null` calls this process's own /simulator over HTTP."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = test_settings(
        simulator,
        upstream={"base_url": None},
        simulator={"enabled": True, "token_delay": 0},
        server={"port": port},
    )
    app = create_app(settings)
    with run_server(app, sock) as url, httpx.Client(timeout=10) as client:
        events = read_events(client, create(client, url, "built-in [[sim tokens=3]]"))
    assert [e.event for e in events] == ["token"] * 3 + ["done"]
    assert app.state.simulator.find("built-in")[0].outcome == "completed"
    assert not simulator.sim.find("built-in")


def test_version():
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=20
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"sse-gateway {__version__}")


def test_start_up_says_what_it_serves_without_credentials_and_warns_of_a_missing_key(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.pop("OPENAI_API_KEY", None)
    env["GATEWAY_UPSTREAM__BASE_URL"] = "https://user:secret@api.example.com/v1?key=k"
    env["GATEWAY_UPSTREAM__MODEL"] = "gpt-x"
    log = tmp_path / "stderr.log"
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    with log.open("wb") as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=stderr)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, "gateway")
    finally:
        terminate(proc)
    text = log.read_text()
    (line,) = [line for line in text.splitlines() if f"sse-gateway {__version__} on" in line]
    assert f"http://127.0.0.1:{port}" in line and "config config.yaml" in line
    assert "upstream https://api.example.com/v1," in line and "model gpt-x" in line
    assert "store memory" in line and "X-Forwarded-For trusted from 127.0.0.1, ::1" in line
    assert "secret" not in text and "key=k" not in text
    assert "$OPENAI_API_KEY is not set" in text


def test_a_missing_redis_extra_is_one_clear_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    monkeypatch.setenv("GATEWAY_STREAMS__STORE", "redis")
    assert main(["serve", "--config", os.devnull]) == 2
    error = capsys.readouterr().err
    assert error == "sse-gateway: streams.store: redis needs the redis extra: " + (
        "pip install 'sse-gateway[redis]'\n"
    )


def test_metrics_multiprocess_dir_and_the_variable_must_agree(monkeypatch, capsys, tmp_path):
    """`serve` sets PROMETHEUS_MULTIPROC_DIR for its workers from metrics.multiprocess_dir.
    Serving alone it cannot use the directory (prometheus-client is imported already),
    and a variable naming another directory is refused; both before anything starts."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("GATEWAY_METRICS__MULTIPROCESS_DIR", str(tmp_path))
    assert main(["serve", "--config", os.devnull]) == 2
    assert "PROMETHEUS_MULTIPROC_DIR is not set" in capsys.readouterr().err
    monkeypatch.setenv("GATEWAY_STREAMS__STORE", "redis")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "other"))
    assert main(["serve", "--config", os.devnull, "--workers", "2"]) == 2
    error = capsys.readouterr().err
    assert f"metrics.multiprocess_dir is {tmp_path} but PROMETHEUS_MULTIPROC_DIR is " in error
