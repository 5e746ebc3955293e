"""Logs: JSON lines from a real `sse-gateway serve`, request ids end to end, redaction."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from gateway.config import LoggingSettings
from gateway.logs import ConsoleFormatter, ContextFilter, JsonFormatter, redact, request_id
from tests.helpers import TIMEOUT, SimServer, free_port, marker, wait_until
from tests.helpers_deploy import terminate, wait_http

API_KEY = "sk-upstream-key-4f1c9e"


@contextmanager
def serve(simulator: SimServer, tmp_path: Path, fmt: str) -> Iterator[tuple[str, Path]]:
    """A real `sse-gateway serve` at debug level; yields its URL and its stderr file."""
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_CONFIG": os.devnull,
        "GATEWAY_UPSTREAM__BASE_URL": simulator.base_url,
        "GATEWAY_SIMULATOR__ENABLED": "false",
        "GATEWAY_WEB__ENABLED": "false",
        "GATEWAY_LOGGING__FORMAT": fmt,
        "OPENAI_API_KEY": API_KEY,
    }
    command = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "debug",
    ]
    log = tmp_path / "stderr.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=stderr)
    try:
        wait_http(f"{url}/healthz", process, "gateway")
        yield url, log
    finally:
        terminate(process)


def test_request_id_reaches_response_upstream_and_every_log_line(simulator, tmp_path):
    word = marker()
    prompt = f"{word} the secret plans for tuesday [[sim tokens=4]]"
    rid = "req-0123456789abcdef"
    with serve(simulator, tmp_path, "json") as (url, log), httpx.Client(timeout=TIMEOUT) as client:
        created = client.post(
            f"{url}/v1/streams",
            json={"messages": [{"role": "user", "content": prompt}]},
            headers={
                "X-Request-ID": rid,
                "Authorization": "Bearer client-bearer-77aa",
                "X-Auth": "xauth-value-99bb",
            },
        )
        assert created.status_code == 201
        assert created.headers["x-request-id"] == rid
        stream_id = created.json()["id"]
        events_url = f"{url}{created.json()['events_url']}?token=query-secret-55cc"
        with client.stream("GET", events_url) as response:
            assert response.status_code == 200
            body = response.read().decode()
            events_rid = response.headers["x-request-id"]
        assert "event: done" in body
        assert len(events_rid) == 32 and events_rid != rid  # generated, nginx-style hex
        bad = client.get(f"{url}/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
        assert bad.headers["x-request-id"] != "bad id\twith spaces"
        wait_until(
            lambda: (
                '"request finished"' in log.read_text()
                and events_rid in log.read_text()
                and '"stream finished"' in log.read_text()
            )
        )

    assert simulator.sim.find(word)[0].headers["x-request-id"] == rid
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "event"} <= set(line) for line in lines)
    of_stream = [line for line in lines if line.get("stream_id") == stream_id]
    by_event = {(line["logger"], line["event"]) for line in of_stream}
    assert {
        ("gateway.http", "request finished"),
        ("gateway.upstream", "upstream request finished"),
        ("gateway.generation", "stream finished"),
    } <= by_event
    for line in of_stream:
        expected = events_rid if line.get("path", "").endswith("token=[REDACTED]") else rid
        assert line["request_id"] == expected, line
    finished = next(line for line in of_stream if line["event"] == "stream finished")
    assert finished["outcome"] == "done" and finished["tokens"] == 4
    assert finished["duration"] > 0 and finished["ttft"] > 0
    # Spend is attributable: who asked, which model and upstream, what it cost.
    assert finished["caller"].startswith("address:") and finished.get("model") is None
    assert finished["upstream"] == simulator.url.removeprefix("http://")  # host:port
    assert finished["usage"]["completion"] == 4 and finished["usage"]["prompt"] > 0
    upstream = next(line for line in of_stream if line["event"] == "upstream request finished")
    assert upstream["status"] == "200" and upstream["outcome"] == "done"
    assert upstream["upstream_latency"] > 0
    create_line = next(line for line in of_stream if line.get("route") == "/v1/streams")
    assert create_line["status"] == 201 and create_line["method"] == "POST"
    events_line = next(line for line in of_stream if line["request_id"] == events_rid)
    assert events_line["route"] == "/v1/streams/{stream_id}/events"
    assert events_line["path"].endswith("?token=[REDACTED]")
    # No secret and no prompt text, even at debug level.
    for secret in (API_KEY, "client-bearer-77aa", "xauth-value-99bb", "query-secret-55cc"):
        assert secret not in text
    assert "secret plans" not in text
    assert word not in text


def test_console_format_is_readable_lines(simulator, tmp_path):
    with serve(simulator, tmp_path, "console") as (url, log), httpx.Client(timeout=TIMEOUT) as c:
        response = c.post(f"{url}/api/stream", json={"message": f"{marker()} [[sim tokens=2]]"})
        rid = response.headers["x-request-id"]
        wait_until(lambda: "stream finished" in log.read_text())
    line = next(line for line in log.read_text().splitlines() if "stream finished" in line)
    assert " INFO gateway.generation: stream finished " in line
    assert f"request_id={rid}" in line and "outcome=done" in line and "tokens=2" in line
    assert not line.startswith("{")


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("gateway.test", logging.INFO, __file__, 1, message, None, None)
    entry.__dict__.update(extra)
    return entry


def test_json_formatter_fields_and_context():
    token = request_id.set("abc")
    try:
        entry = record("hello %s", route="/x", status=200)
        entry.args = ("world",)
        ContextFilter().filter(entry)
    finally:
        request_id.reset(token)
    line = json.loads(JsonFormatter().format(entry))
    assert line["event"] == "hello world"
    assert line["level"] == "info" and line["logger"] == "gateway.test"
    assert line["request_id"] == "abc" and "stream_id" not in line
    assert line["route"] == "/x" and line["status"] == 200
    assert line["time"].endswith("Z")


def test_formatters_mask_the_upstream_key_wherever_it_appears():
    entry = record(f"calling with {API_KEY}")
    assert API_KEY not in JsonFormatter([API_KEY]).format(entry)
    assert API_KEY not in ConsoleFormatter([API_KEY]).format(entry)
    assert LoggingSettings().format == "console"


def test_a_console_line_stays_one_line_whatever_the_client_sent():
    """A path with `%0a` (uvicorn decodes it) cannot forge a second log line."""
    forged = "/x\n2025-01-01T00:00:00.000Z INFO gateway.http: request finished status=200"
    line = ConsoleFormatter().format(record("request finished\r\x1b[2J", path=forged))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "path=/x\\n2025-01-01T00:00:00.000Z INFO" in line
    assert line.endswith("status=200")


def test_redact():
    assert redact("Authorization: Bearer abc.def") == "Authorization: [REDACTED] [REDACTED]"
    assert redact("sent bearer xyz123 along") == "sent bearer [REDACTED] along"
    assert redact("x-auth=s3cr3t; next") == "x-auth=[REDACTED]; next"
    assert redact("/v1/s?last_event_id=4&token=t0k&api_key=k") == (
        "/v1/s?last_event_id=4&token=[REDACTED]&api_key=[REDACTED]"
    )
    assert redact("plain text stays") == "plain text stays"
