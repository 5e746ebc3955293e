"""The load test (loadtest/): short headless locust runs (its SSE decoder is
gateway/decoder.py, tested in tests/test_decoder.py).

The runs go through `loadtest/run.py`, what `make loadtest` runs: a real
`sse-gateway serve` process on the built-in simulator on a free 127.0.0.1
port, and locust in its own process (locust patches the standard library with
gevent on import, so it never runs inside pytest).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "loadtest" / "run.py"
FLOWS = ("/v1/streams", "/api/stream")


def run_locust(results: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(RUN), "--results", str(results), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=50, check=False)


def stats(results: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (results / "loadtest_stats.csv").open(newline="") as file:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(file)}


def failures(results: Path) -> list[dict[str, str]]:
    with (results / "loadtest_failures.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def count(row: dict[str, str]) -> int:
    return int(row["Request Count"])


def test_smoke_run_measures_every_answer(tmp_path: Path) -> None:
    options = ("--users", "20", "--spawn-rate", "20", "--run-time", "8s")
    shape = ("--output-tokens", "12", "--token-delay-ms", "10", "--think-time", "0.5")
    done = run_locust(tmp_path, *options, *shape)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 0

    rows = stats(tmp_path)
    assert failures(tmp_path) == []
    assert rows[("", "Aggregated")]["Failure Count"] == "0"
    assert not any(name == "/v1/chat/completions" for _, name in rows)  # off by default
    for flow in FLOWS:
        streams = count(rows[("STREAM", flow)])
        assert streams > 0
        assert count(rows[("TTFT", flow)]) == streams
        assert count(rows[("TPOT", flow)]) == streams
        assert count(rows[("ITL", flow)]) == streams * 11
        tokens = rows[("TOKENS", flow)]
        assert count(tokens) == streams
        assert (tokens["Min Response Time"], tokens["Max Response Time"]) == ("12", "12")
        assert float(rows[("TTFT", flow)]["Min Response Time"]) > 0
    assert count(rows[("POST", "/v1/streams")]) == count(rows[("STREAM", "/v1/streams")])
    assert count(rows[("GET", "/v1/streams/[id]/events")]) == count(rows[("STREAM", "/v1/streams")])
    assert count(rows[("POST", "/api/stream")]) == count(rows[("STREAM", "/api/stream")])
    # "Aggregated" holds the HTTP requests and the streams, not the measurements.
    counted = ("POST", "GET", "STREAM")
    assert count(rows[("", "Aggregated")]) == sum(
        count(row) for (kind, _), row in rows.items() if kind in counted
    )


@pytest.mark.parametrize("fault", ["fault=drop after=2", "status=400"])
def test_a_failed_stream_is_a_failure_named_by_its_code(tmp_path: Path, fault: str) -> None:
    prompt = f"hi [[sim tokens=4 {fault}]]"
    options = ("--users", "2", "--spawn-rate", "2", "--run-time", "2s", "--think-time", "0.2")
    done = run_locust(tmp_path, *options, "--no-sim-directive", "--prompt", prompt)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]

    rows = stats(tmp_path)
    seen = {(f["Method"], f["Name"], f["Error"]) for f in failures(tmp_path)}
    if fault.startswith("fault"):  # after tokens: an `error` event ends each stream
        assert seen == {("STREAM", flow, "upstream_error") for flow in FLOWS}
        for flow in FLOWS:
            assert (
                rows[("STREAM", flow)]["Failure Count"] == rows[("STREAM", flow)]["Request Count"]
            )
            assert ("TTFT", flow) not in rows
    else:  # before any token: /api/stream answers with an HTTP error, /v1/streams with an event
        assert seen == {
            ("STREAM", "/v1/streams", "upstream_bad_request"),
            ("POST", "/api/stream", "CatchResponseError('502 upstream_bad_request')"),
        }


def test_chat_completions_user_works_with_its_defaults(tmp_path: Path) -> None:
    """`--chat-completions` without `--model`: the user asks the gateway for its model."""
    options = ("--users", "2", "--spawn-rate", "2", "--run-time", "3s", "--think-time", "0.2")
    done = run_locust(tmp_path, *options, "--output-tokens", "4", "--chat-completions")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = stats(tmp_path)
    assert failures(tmp_path) == []
    assert count(rows[("POST", "/v1/chat/completions")]) > 0
    assert count(rows[("STREAM", "/v1/chat/completions")]) > 0
