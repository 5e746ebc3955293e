"""`make bench`: direct, reference, naive and gateway side by side, in one run.

Every target is a separate server process in front of the same simulator
process; the load client is a third process. Server CPU comes from
/proc/<pid>/stat, memory from /proc/<pid>/status. Results go to
bench/results/performance.json and, as tables, performance-results.md beside
it; `--output docs/performance.json` (`make bench PUBLISH=1`) replaces the
published ones. docs/performance.md is the written analysis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.report import render

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = ["direct", "reference", "naive", "gateway"]

# name: (streams, concurrency, tokens, delay_ms, ramp per second)
SCENARIOS: dict[str, tuple[int, int, int, int, float]] = {
    "A_saturation": (50, 50, 200, 0, 0),
    "B_ttft_1": (20, 1, 20, 20, 0),
    "B_ttft_100": (200, 100, 20, 20, 0),
    "C_slow_1000": (1000, 1000, 30, 200, 1000),
    "C_slow_5000": (5000, 5000, 30, 200, 2000),
    "D_fixed_cost": (300, 10, 1, 0, 0),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def answers(port: int, probe: str | None) -> bool:
    """Whether the server on `port` takes connections (and answers GET `probe`)."""
    try:
        if probe is None:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        else:
            httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=1)
    except (OSError, httpx.TransportError):
        return False
    return True


@contextmanager
def serve(command: list[str], port: int, env: dict[str, str], probe: str | None) -> Iterator[int]:
    """Start a server process and wait until it answers; yields its pid."""
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not answers(port, probe):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not start")
            time.sleep(0.1)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def target_command(target: str, port: int, upstream: str) -> tuple[list[str], dict[str, str]]:
    uvicorn = [PYTHON, "-m", "uvicorn", "--port", str(port), "--log-level", "warning"]
    uvicorn += ["--backlog", "8192", "--timeout-keep-alive", "30"]
    if target in ("reference", "naive"):
        return [*uvicorn, f"bench.{target}:app"], {"BENCH_UPSTREAM": upstream}
    env = {
        "GATEWAY_UPSTREAM__BASE_URL": upstream,
        "GATEWAY_SIMULATOR__ENABLED": "false",
        "GATEWAY_LIMITS__MAX_CONCURRENT_STREAMS": "20000",
    }
    command = [PYTHON, "-m", "gateway", "serve", "--port", str(port), "--log-level", "warning"]
    return command, env


def run_client(kind: str, url: str, scenario: tuple[int, int, int, int, float]) -> dict:
    streams, concurrency, tokens, delay_ms, ramp = scenario
    command = [PYTHON, str(ROOT / "bench" / "client.py"), "--kind", kind, "--url", url]
    command += ["--streams", str(streams), "--concurrency", str(concurrency)]
    command += ["--tokens", str(tokens), "--delay-ms", str(delay_ms), "--ramp", str(ramp)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(output.stdout)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(target: str, scenario: tuple, sim_url: str) -> dict:
    """One run of one scenario against one target."""
    if target == "direct":
        return summarize(run_client("openai", sim_url, scenario), None, None)
    port = free_port()
    command, env = target_command(target, port, f"{sim_url}/v1")
    probe = "/healthz" if target == "gateway" else None
    with serve(command, port, env, probe) as pid:
        kind, url = ("sse", f"http://127.0.0.1:{port}/stream")
        if target == "gateway":
            kind, url = ("sse", f"http://127.0.0.1:{port}/api/stream")
            if scenario is SCENARIOS["D_fixed_cost"]:
                kind, url = ("gateway2", f"http://127.0.0.1:{port}")
        # Warm up connections and code paths, then measure.
        run_client(kind, url, (10, 10, 5, 0, 0))
        peak = [rss_bytes(pid)]
        rss0, cpu0 = peak[0], cpu_seconds(pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                peak.append(rss_bytes(pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            report = run_client(kind, url, scenario)
        finally:
            stop.set()
            sampler.join()
        return summarize(report, cpu_seconds(pid) - cpu0, max(peak) - rss0)


def summarize(report: dict, server_cpu: float | None, rss_growth: int | None) -> dict:
    ttft = report.pop("ttft")
    streams = report["streams"]
    report |= {
        "ttft_p50_ms": percentile(ttft, 0.5) * 1000,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1000,
        "tokens_per_s": report["tokens"] / report["wall"],
        "client_cpu_share": report["client_cpu"] / report["wall"],
    }
    if server_cpu is not None:
        report["server_cpu_s"] = server_cpu
        report["cpu_us_per_token"] = server_cpu / max(report["tokens"], 1) * 1e6
        report["cpu_us_per_stream"] = server_cpu / streams * 1e6
    if rss_growth is not None:
        report["rss_kib_per_stream"] = rss_growth / 1024 / streams
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--targets", nargs="*", default=TARGETS)
    parser.add_argument(
        "--output",
        default=str(ROOT / "bench" / "results" / "performance.json"),
        help="where results go (`make bench PUBLISH=1`: docs/performance.json, published)",
    )
    args = parser.parse_args()
    sim_port = free_port()
    sim = [PYTHON, "-m", "gateway", "simulate", "--port", str(sim_port), "--log-level", "warning"]
    results: dict[str, dict[str, list[dict]]] = {}
    with serve(sim, sim_port, {}, "/v1/models"):
        for repetition in range(args.repeat):
            for name in args.scenarios:
                for target in args.targets:
                    run = measure(target, SCENARIOS[name], f"http://127.0.0.1:{sim_port}")
                    results.setdefault(name, {}).setdefault(target, []).append(run)
                    print(f"[{repetition + 1}/{args.repeat}] {name:13} {target:9} {brief(run)}")
    document = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "repeat": args.repeat,
        "scenarios": {name: SCENARIOS[name] for name in args.scenarios},
        "runs": results,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2))
    tables = output.with_name(output.stem + "-results.md")
    tables.write_text(render(document))
    print(f"wrote {output} and {tables}")


def brief(run: dict) -> str:
    keys = ["completed", "failed", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms"]
    keys += ["cpu_us_per_token", "cpu_us_per_stream", "rss_kib_per_stream", "client_cpu_share"]
    return " ".join(f"{k}={run[k]:.4g}" for k in keys if k in run)


if __name__ == "__main__":
    main()
