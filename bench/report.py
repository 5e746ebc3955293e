"""Render performance-results.md from a bench run's JSON: the goals of issue 16 with
their measured ratios, then one table per scenario.

A scenario whose direct row degrades (a stream failed, or its time to first
token is far above the mock's own delay) or whose mock was near a full core
measured the machine, not the systems: it is marked invalid, and so are the
goals that rest on it.
"""

# ruff: noqa: RUF001  (the tables use the multiplication sign and en dashes on purpose)

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["direct", "reference", "naive", "gateway", "gateway_redis", "litellm"]
#: The direct row degrades past this much time to first token beyond the mock's delay.
DIRECT_SLACK_MS = 250
#: The mock is a bottleneck above this share of its core.
MOCK_LIMIT = 0.9
#: Reference latencies below this are timer noise; ratios use at least this.
NOISE_MS = 10.0

TITLES = {
    "A_back_to_back": "A. 50 streams × 200 tokens, back to back",
    "B_spaced_100": "B. 100 streams arriving at once, 20 tokens 20 ms apart",
    "C_slow_1000": "C. 1,000 slow streams at once (30 tokens, 200 ms apart)",
    "C_slow_10000": "C. 10,000 slow streams at once (30 tokens, 200 ms apart)",
    "D_fixed_cost": "D. Fixed cost per stream: 2,000 one-token streams, 10 at a time",
}
# scenario: [(metric key, column title, digits)]
LATENCY = [("ttft_p50_ms", "TTFT p50 ms", 1), ("ttft_p99_ms", "TTFT p99 ms", 1)]
LOAD = [
    ("server_cpu_share", "server CPU", -1),
    ("mock_cpu_share", "mock CPU", -1),
    ("client_cpu_share", "client CPU", -1),
]
SLOW = [
    ("completed", "done", 0),
    ("peak_open", "open at once", 0),
    *LATENCY,
    ("rss_kib_per_stream", "RSS KiB/open stream", 1),
    ("cpu_us_per_token", "CPU µs/token", 1),
]
COLUMNS: dict[str, list[tuple[str, str, int]]] = {
    "A_back_to_back": [("tokens_per_s", "tokens/s", 0), ("cpu_us_per_token", "CPU µs/token", 1)],
    "B_spaced_100": [("cpu_us_per_token", "CPU µs/token", 1), *LATENCY],
    "C_slow_1000": SLOW,
    "C_slow_10000": SLOW,
    "D_fixed_cost": [("cpu_us_per_stream", "CPU µs/stream", 0), *LATENCY],
}


def median(runs: list[dict] | None, key: str) -> float | None:
    values = [run[key] for run in runs or [] if key in run]
    return statistics.median(values) if values else None


def cell(runs: list[dict], key: str, digits: int) -> str:
    values = [run[key] for run in runs if key in run]
    if not values:
        return "–"
    show = (lambda v: f"{v:.0%}") if digits < 0 else (lambda v: f"{v:,.{digits}f}")
    mid, low, high = statistics.median(values), min(values), max(values)
    if len(values) == 1 or low == high:
        return show(mid)
    return f"{show(mid)} ({show(low)}–{show(high)})"


def invalid(document: dict, name: str) -> str | None:
    """Why scenario `name` measured the machine rather than the systems, or None."""
    runs = document["runs"].get(name, {})
    direct = runs.get("direct", [])
    if not direct:
        return "no direct row"
    streams, _, _, delay_ms, *_ = document["scenarios"][name]
    if any(run["completed"] < streams for run in direct):
        return "direct did not complete every stream"
    p99 = max(run["ttft_p99_ms"] for run in direct)
    if p99 > delay_ms + DIRECT_SLACK_MS:
        return f"direct TTFT p99 {p99:,.0f} ms > {delay_ms + DIRECT_SLACK_MS} ms"
    mock = max(run["mock_cpu_share"] for target in runs.values() for run in target)
    if mock > MOCK_LIMIT:
        return f"the mock used {mock:.0%} of its core"
    return None


def added(runs: dict[str, list[dict]], target: str, key: str) -> float | None:
    """Time to first token added over direct."""
    value, direct = median(runs.get(target), key), median(runs.get("direct"), key)
    return None if value is None or direct is None else value - direct


Goal = tuple[str, str, Callable[[dict], tuple[float, float, str] | None], float]


def _ratio(name: str, key: str, target: str = "gateway", base: str = "reference"):
    def measure(runs: dict) -> tuple[float, float, str] | None:
        value, reference = median(runs[name].get(target), key), median(runs[name].get(base), key)
        if value is None or not reference:
            return None
        return value, reference, f"{target} {value:,.1f}, {base} {reference:,.1f}"

    return measure


def _added_p99(name: str, floor: float):
    """TTFT added over direct, p99: the gateway's against the reference's (at least `floor`)."""

    def measure(runs: dict) -> tuple[float, float, str] | None:
        gateway = added(runs[name], "gateway", "ttft_p99_ms")
        reference = added(runs[name], "reference", "ttft_p99_ms")
        if gateway is None or reference is None:
            return None
        text = f"gateway {gateway:+,.0f} ms, reference {reference:+,.0f} ms"
        return gateway, max(reference, floor), text

    return measure


def _per_open_stream(runs: dict) -> tuple[float, float, str] | None:
    gateway = runs["C_slow_10000"].get("gateway")
    per_event = median(runs.get("E_event_memory", {}).get("gateway"), "bytes_per_event")
    if not gateway or per_event is None:
        return None
    streams = max(run["streams"] for run in gateway)
    done = min(run["completed"] for run in gateway)
    rss = median(gateway, "rss_kib_per_stream") or 0
    tokens = (median(gateway, "tokens") or 0) / streams
    beyond = rss - tokens * per_event / 1024
    if done < streams:
        return float("inf"), 30, f"{done:,} of {streams:,} done; {beyond:.1f} KiB/stream"
    return beyond, 30, f"all {streams:,} done; {rss:.1f} KiB/stream, {beyond:.1f} beyond events"


def _event_bytes(runs: dict) -> tuple[float, float, str] | None:
    gateway = runs["E_event_memory"].get("gateway")
    if not gateway:
        return None
    per_event, frame = median(gateway, "bytes_per_event"), median(gateway, "frame_bytes")
    assert per_event is not None and frame is not None
    return per_event / frame, 1, f"{per_event:.0f} bytes per event, frame {frame:.0f}"


GOALS: list[Goal] = [
    (
        "Fixed CPU per stream ≤ 2× reference",
        "D_fixed_cost",
        _ratio("D_fixed_cost", "cpu_us_per_stream"),
        2,
    ),
    (
        "CPU per token, back to back ≤ 2× reference",
        "A_back_to_back",
        _ratio("A_back_to_back", "cpu_us_per_token"),
        2,
    ),
    (
        "CPU per token, 20 ms apart ≤ 2× reference",
        "B_spaced_100",
        _ratio("B_spaced_100", "cpu_us_per_token"),
        2,
    ),
    (
        "100 streams at once: TTFT added p99 ≤ 2× reference",
        "B_spaced_100",
        _added_p99("B_spaced_100", NOISE_MS),
        2,
    ),
    (
        "1,000 streams at once: TTFT added p99 ≤ 2× reference or ≤ 100 ms",
        "C_slow_1000",
        _added_p99("C_slow_1000", 100 / 2),
        2,
    ),
    (
        "10,000 streams at once: all done, ≤ 30 KiB per open stream beyond events",
        "C_slow_10000",
        _per_open_stream,
        1,
    ),
    ("Stored event ≤ 2× its frame's bytes", "E_event_memory", _event_bytes, 2),
    (
        "Redis store: CPU per token ≤ 3× memory store",
        "A_back_to_back",
        _ratio("A_back_to_back", "cpu_us_per_token", "gateway_redis", "gateway"),
        3,
    ),
]


def goals(document: dict) -> list[str]:
    lines = ["## Goals", "", "| goal | measured | ratio | verdict |", "|---|---|---|---|"]
    for title, scenario, measure, limit in GOALS:
        if scenario not in document["runs"]:
            lines.append(f"| {title} | not run | – | – |")
            continue
        measured = measure(document["runs"])
        if measured is None:
            lines.append(f"| {title} | not measured | – | – |")
            continue
        value, base, text = measured
        ratio = value / base
        verdict = "met" if ratio <= limit else "**missed**"
        if scenario != "E_event_memory" and (why := invalid(document, scenario)):
            verdict = f"invalid ({why})"
        shown = "–" if ratio == float("inf") else f"{ratio:.2f}×" if limit > 1 else f"{value:.1f}"
        lines.append(f"| {title} | {text} | {shown} | {verdict} |")
    return [*lines, ""]


def scenario_table(document: dict, name: str) -> list[str]:
    runs = document["runs"][name]
    columns = COLUMNS[name]
    why = invalid(document, name)
    lines = [f"## {TITLES[name]}", ""]
    if why:
        lines += [f"**Invalid**: {why}; the rows below measured the machine.", ""]
    header = ["target", *(title for _, title, _ in columns)]
    latency = name in ("B_spaced_100", "C_slow_1000", "C_slow_10000")
    if latency:
        header.append("TTFT added p50 / p99 ms")
    header += [title for _, title, _ in LOAD]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for target in TARGETS:
        target_runs = runs.get(target)
        if not target_runs:
            continue
        row = [target, *(cell(target_runs, key, digits) for key, _, digits in columns)]
        if latency:
            p50, p99 = (added(runs, target, k) for k in ("ttft_p50_ms", "ttft_p99_ms"))
            row.append(f"{p50:+,.0f} / {p99:+,.0f}" if p50 is not None and p99 is not None else "–")
        row += [cell(target_runs, key, digits) for key, _, digits in LOAD]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def render(document: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/run.py, rendered by bench/report.py); the analysis",
        "is in [performance.md](performance.md). Each target is its own server process,",
        "pinned to a core of its own, in front of the same upstream mock",
        "(bench/upstream.py); the load client (bench/client.py) and the mock share the",
        "other core. CPU is each process's user+system time from /proc over the measured",
        "run; cells are medians of the repetitions with (min–max).",
        "",
        f"Machine: {document['machine']}; {document.get('pinning', '')}. "
        f"Repetitions: {document.get('repeat', '?')}.",
        "",
    ]
    if document.get("smoke"):
        lines += ["**Smoke run** (tiny sizes): these numbers mean nothing.", ""]
    for target, why in document.get("skipped", {}).items():
        lines += [f"- {target}: skipped, {why}."]
    if document.get("skipped"):
        lines.append("")
    lines += goals(document)
    for name in TITLES:
        if name in document["runs"]:
            lines += scenario_table(document, name)
    if memory := document["runs"].get("E_event_memory", {}).get("gateway"):
        lines += [
            "## E. Memory per stored token event (memory store, tracemalloc)",
            "",
            f"{cell(memory, 'bytes_per_event', 0)} bytes per event, whose frame is "
            f"{cell(memory, 'frame_bytes', 0)} bytes: {cell(memory, 'event_to_frame', 2)}×.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "performance.json"
    print(render(json.loads(source.read_text())))
