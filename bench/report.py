"""Render the tables of docs/performance-results.md from docs/performance.json."""

# ruff: noqa: RUF001  (the tables use the multiplication sign and en dashes on purpose)

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["direct", "reference", "naive", "gateway"]

# scenario: [(metric key, column title, digits)]
COLUMNS: dict[str, list[tuple[str, str, int]]] = {
    "A_saturation": [("tokens_per_s", "tokens/s", 0), ("cpu_us_per_token", "CPU µs/token", 1)],
    "B_ttft_1": [("ttft_p50_ms", "TTFT p50 ms", 1), ("ttft_p99_ms", "TTFT p99 ms", 1)],
    "B_ttft_100": [("ttft_p50_ms", "TTFT p50 ms", 1), ("ttft_p99_ms", "TTFT p99 ms", 1)],
    "C_slow_1000": [
        ("completed", "completed", 0),
        ("ttft_p99_ms", "TTFT p99 ms", 1),
        ("rss_kib_per_stream", "RSS KiB/stream", 1),
    ],
    "C_slow_5000": [
        ("completed", "completed", 0),
        ("ttft_p99_ms", "TTFT p99 ms", 1),
        ("rss_kib_per_stream", "RSS KiB/stream", 1),
    ],
    "D_fixed_cost": [("cpu_us_per_stream", "CPU µs/stream", 0)],
}
TITLES = {
    "A_saturation": "A. Saturation: 50 streams × 200 tokens, no delay",
    "B_ttft_1": "B. Time to first token, 1 stream at a time, 20 ms between tokens",
    "B_ttft_100": "B. Time to first token, 100 concurrent streams, 20 ms between tokens",
    "C_slow_1000": "C. 1,000 concurrent slow streams (30 tokens, 200 ms apart)",
    "C_slow_5000": "C. 5,000 concurrent slow streams (30 tokens, 200 ms apart)",
    "D_fixed_cost": "D. Fixed cost per stream: 300 one-token streams, 10 at a time",
}


def median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if key in run]
    return statistics.median(values) if values else None


def cell(runs: list[dict], key: str, digits: int) -> str:
    values = [run[key] for run in runs if key in run]
    if not values:
        return "–"
    mid, low, high = statistics.median(values), min(values), max(values)
    if len(values) == 1 or low == high:
        return f"{mid:,.{digits}f}"
    return f"{mid:,.{digits}f} ({low:,.{digits}f}–{high:,.{digits}f})"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def render(document: dict) -> str:
    runs = document["runs"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/run.py, rendered by bench/report.py); the",
        "analysis is in [performance.md](performance.md). Every",
        "target is its own server process in front of the same simulator process; the",
        "load client (bench/client.py, aiohttp on uvloop) is a third process. Server CPU",
        "is the target process's user+system time from /proc; cells are the median of",
        "the repetitions with (min–max).",
        "",
        "- **direct**: the client talks to the simulator itself (the floor).",
        "- **reference**: bench/reference.py, a ~50-line relay (aiohttp client, raw ASGI",
        "  writer, no features): the ceiling of this stack.",
        "- **naive**: bench/naive.py, the blog post's relay (openai SDK stream +",
        "  sse-starlette, one route).",
        "- **gateway**: this project, default features on, via `POST /api/stream` with",
        "  `Accept: text/event-stream` (one round trip, like the others); scenario D uses",
        "  the two-step protocol (create, subscribe, finish).",
        "",
        f"Machine: {document['machine']}. Repetitions: {document.get('repeat', '?')}.",
        "",
    ]
    for name, columns in COLUMNS.items():
        if name not in runs:
            continue
        lines += [f"## {TITLES[name]}", ""]
        header = ["target", *(title for _, title, _ in columns)]
        ratio_key = columns[-1][0] if name != "A_saturation" else "cpu_us_per_token"
        if name.startswith("B_"):
            header += ["TTFT added p50 / p99 ms"]
        header += ["vs reference", "vs naive", "client CPU share"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        reference = median(runs[name].get("reference", []), ratio_key)
        naive = median(runs[name].get("naive", []), ratio_key)
        direct = runs[name].get("direct", [])
        for target in TARGETS:
            target_runs = runs[name].get(target)
            if not target_runs:
                continue
            row = [target, *(cell(target_runs, key, digits) for key, _, digits in columns)]
            if name.startswith("B_"):
                added = [
                    (median(target_runs, k) or 0) - (median(direct, k) or 0)
                    for k in ("ttft_p50_ms", "ttft_p99_ms")
                ]
                row.append(f"{added[0]:.1f} / {added[1]:.1f}")
            value = median(target_runs, ratio_key)
            comparable = target not in ("direct",) and ratio_key in target_runs[0]
            row.append(ratio(value, reference) if comparable else "–")
            row.append(ratio(value, naive) if comparable else "–")
            row.append(f"{median(target_runs, 'client_cpu_share') or 0:.0%}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "performance.json"
    print(render(json.loads(source.read_text())))
