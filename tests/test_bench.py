# ruff: noqa: RUF001  (the report uses the multiplication sign on purpose)

"""`make bench` cannot rot: a smoke run of every scenario and system at tiny sizes.

Nothing here asserts a timing; the numbers of a smoke run mean nothing. What is
checked is that every system produced its row and the report renders them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.run import EVENT_MEMORY, SCENARIOS, TARGETS
from bench.systems import unavailable

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_smoke_run_produces_every_row_and_the_report(tmp_path):
    output = tmp_path / "performance.json"
    command = [sys.executable, "-m", "bench.run", "--smoke", "--repeat", "1", "--litellm"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*command, "--output", str(output)], cwd=ROOT, env=env, check=True, timeout=220)
    document = json.loads(output.read_text())
    expected = [target for target in TARGETS if not unavailable(target)]
    for name in SCENARIOS:
        runs = document["runs"][name]
        assert sorted(runs) == sorted(expected), name
        for target in expected:
            (run,) = runs[target]
            assert run["completed"] == run["streams"] == 3, (name, target)
            assert run["failed"] == 0
            if target != "direct":
                assert "cpu_us_per_token" in run and "rss_kib_per_stream" in run
    (memory,) = document["runs"][EVENT_MEMORY]["gateway"]
    assert memory["bytes_per_event"] > memory["frame_bytes"] > 0
    if unavailable("litellm"):
        assert "litellm" in document["skipped"]
    rendered = (tmp_path / "performance-results.md").read_text()
    assert rendered == report.render(document)
    for name in SCENARIOS:
        assert report.TITLES[name] in rendered
    for title, *_ in report.GOALS:
        assert title in rendered
    for target in expected:
        assert f"\n| {target} |" in rendered


def _document(direct_p99: float, mock_share: float = 0.1) -> dict:
    run = {"streams": 10, "completed": 10, "ttft_p50_ms": 5.0, "mock_cpu_share": mock_share}
    reference = run | {"ttft_p99_ms": 30.0, "cpu_us_per_token": 10.0}
    gateway = run | {"ttft_p99_ms": 60.0, "cpu_us_per_token": 15.0}
    return {
        "machine": "test",
        "scenarios": {"B_spaced_100": [10, 10, 20, 20, 120]},
        "runs": {
            "B_spaced_100": {
                "direct": [run | {"ttft_p99_ms": direct_p99}],
                "reference": [reference],
                "gateway": [gateway],
            }
        },
    }


def test_a_scenario_where_direct_degrades_is_invalid():
    valid = report.render(_document(direct_p99=25.0))
    assert "Invalid" not in valid
    assert (
        "| CPU per token, 20 ms apart ≤ 2× reference | gateway 15.0, reference 10.0 | 1.50× | met |"
        in valid
    )

    degraded = report.render(_document(direct_p99=500.0))
    assert "**Invalid**: direct TTFT p99 500 ms > 270 ms" in degraded
    assert "1.50× | invalid (direct TTFT p99 500 ms > 270 ms) |" in degraded


def test_a_scenario_where_the_mock_is_busy_is_invalid():
    assert "the mock used 95% of its core" in report.render(_document(25.0, mock_share=0.95))
