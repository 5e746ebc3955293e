"""`make bench`: direct, reference, naive, gateway (memory and Redis store) and,
optionally, LiteLLM's proxy side by side, in one run.

The upstream mock (bench/upstream.py) runs once; every scenario and target gets
a fresh server process in front of it, pinned to a core of its own, and the
load client (bench/client.py) runs as another process on the other core with
the mock. Server CPU comes from /proc/<pid>/stat, memory from /proc/<pid>/status;
the mock's own CPU share is recorded too, and a scenario where the direct row
(the client reading the mock itself) degrades is marked invalid by the report.

Results go to bench/results/performance.json and, rendered, to
performance-results.md beside it; `--output docs/performance.json`
(`make bench PUBLISH=1`) replaces the published ones. `--smoke` runs every
scenario and target at tiny sizes in seconds (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from bench import eventmem, systems
from bench.report import render


@dataclass(frozen=True)
class Scenario:
    streams: int
    #: Streams open at once (all of them when equal to `streams`: they arrive together).
    concurrency: int
    tokens: int
    #: Between the upstream's tokens.
    delay_ms: int
    #: The client's total timeout per stream, in seconds.
    timeout: float = 120


SCENARIOS: dict[str, Scenario] = {
    "D_fixed_cost": Scenario(2000, 10, 1, 0),
    "A_back_to_back": Scenario(50, 50, 200, 0),
    "B_spaced_100": Scenario(100, 100, 20, 20),
    "C_slow_1000": Scenario(1000, 1000, 30, 200),
    "C_slow_10000": Scenario(10_000, 10_000, 30, 200, timeout=180),
}
#: In-process, no servers: bytes per stored event (bench/eventmem.py).
EVENT_MEMORY = "E_event_memory"
#: Every target but LiteLLM's proxy, which `--litellm` adds (it lives in a venv of its own).
TARGETS = [name for name in systems.TARGETS if name != "litellm"]


def smoke(scenario: Scenario) -> Scenario:
    """The same scenario at a size that runs in a moment."""
    return replace(scenario, streams=3, concurrency=3, tokens=3, delay_ms=min(scenario.delay_ms, 5))


class Client:
    """The load client process (bench/client.py): one per target, on the others' core;
    each `run` is one scenario."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [systems.PYTHON, "-m", "bench.client"],
            cwd=systems.ROOT,
            env={**os.environ, "PYTHONPATH": str(systems.ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run(self, kind: str, url: str, scenario: Scenario) -> dict:
        streams, concurrency, tokens, delay_ms, timeout = astuple(scenario)
        request = {"kind": kind, "url": url, "streams": streams, "concurrency": concurrency}
        request |= {"tokens": tokens, "delay_ms": delay_ms, "timeout": timeout}
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request).encode() + b"\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()  # the client's own timeout bounds this
        if not line:
            raise RuntimeError("the load client exited")
        return json.loads(line)

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


@contextmanager
def sampled(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds of each process over the block, and the server's RSS growth (peak)."""
    server = pids.get("server")
    peak = [systems.rss_bytes(server)] if server else [0]
    cpu0 = {name: systems.cpu_seconds(pid) for name, pid in pids.items()}
    stop = threading.Event()

    def sample() -> None:
        while server and not stop.wait(0.1):
            peak.append(systems.rss_bytes(server))

    sampler = threading.Thread(target=sample)
    sampler.start()
    usage: dict[str, float] = {}
    try:
        yield usage
    finally:
        stop.set()
        sampler.join()
        for name, pid in pids.items():
            usage[f"{name}_cpu_s"] = systems.cpu_seconds(pid) - cpu0[name]
        usage["rss_growth"] = max(peak) - peak[0]


@contextmanager
def running(target: str, mock: tuple[str, int]) -> Iterator[tuple[str, dict[str, int], Client]]:
    """`target` started in front of the mock (with its Redis); yields its URL, the pids
    to measure and a load client."""
    mock_url, mock_pid = mock
    with ExitStack() as stack:
        pids = {"mock": mock_pid}
        redis_url = None
        if target == "gateway_redis":
            redis_url, pids["redis"] = stack.enter_context(systems.redis_server())
        url = mock_url
        if target != "direct":
            url, pids["server"] = stack.enter_context(
                systems.start(target, f"{mock_url}/v1", redis_url=redis_url)
            )
        client = Client()
        stack.callback(client.close)
        yield url, pids, client


def measure(
    client: Client, target: str, name: str, scenario: Scenario, url: str, pids: dict[str, int]
) -> dict:
    """One run of one scenario against a running target."""
    spec = systems.TARGETS[target]
    kind = "gateway2" if spec.two_step and name == "D_fixed_cost" else spec.kind
    url += spec.path if kind == "sse" else ""
    if target != "direct":  # warm up connections and code paths, then measure
        client.run(kind, url, Scenario(5, 5, 3, 0))
    with sampled(pids) as usage:
        report = client.run(kind, url, scenario)
    return summarize(report, usage)


def runs(
    args: argparse.Namespace, targets: list[str], mock: tuple[str, int]
) -> Iterator[tuple[str, str, dict]]:
    """(scenario, target, result) of every run; each gets a fresh server, except in
    a smoke run, where each target serves every scenario in turn."""
    scenarios = [n for n in args.scenarios if n in SCENARIOS]
    for repetition in range(args.repeat):
        if EVENT_MEMORY in args.scenarios:
            yield EVENT_MEMORY, "gateway", eventmem.measure(100 if args.smoke else 10_000)
        pairs = [(t, [n]) for n in scenarios for t in targets]
        if args.smoke:
            pairs = [(t, scenarios) for t in targets]
        for target, names in pairs:
            with running(target, mock) as (url, pids, client):
                for name in names:
                    scenario = smoke(SCENARIOS[name]) if args.smoke else SCENARIOS[name]
                    run = measure(client, target, name, scenario, url, pids)
                    print(f"[{repetition + 1}/{args.repeat}] {name:15} {target:13} {brief(run)}")
                    yield name, target, run


def summarize(report: dict, usage: dict[str, float]) -> dict:
    ttft = report.pop("ttft")
    streams, wall = report["streams"], report["wall"]
    report |= {
        "ttft_p50_ms": percentile(ttft, 0.5) * 1000,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1000,
        "tokens_per_s": report["tokens"] / wall,
        "client_cpu_share": report["client_cpu"] / wall,
        "mock_cpu_share": usage["mock_cpu_s"] / wall,
    }
    if "redis_cpu_s" in usage:
        report["redis_cpu_us_per_token"] = usage["redis_cpu_s"] / max(report["tokens"], 1) * 1e6
    if "server_cpu_s" in usage:
        server_cpu = usage["server_cpu_s"]
        report["server_cpu_s"] = server_cpu
        report["server_cpu_share"] = server_cpu / wall
        report["cpu_us_per_token"] = server_cpu / max(report["tokens"], 1) * 1e6
        report["cpu_us_per_stream"] = server_cpu / streams * 1e6
        report["rss_kib_per_stream"] = usage["rss_growth"] / 1024 / max(report["peak_open"], 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--scenarios", nargs="*", default=[*SCENARIOS, EVENT_MEMORY])
    parser.add_argument("--targets", nargs="*", default=TARGETS)
    parser.add_argument(
        "--litellm",
        nargs="?",
        const="",
        help="add LiteLLM's proxy: its `litellm` binary (default: the one on the PATH)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does every part run?")
    parser.add_argument(
        "--output",
        default=str(systems.ROOT / "bench" / "results" / "performance.json"),
        help="where results go (`make bench PUBLISH=1`: docs/performance.json, published)",
    )
    args = parser.parse_args()
    descriptors = systems.raise_descriptor_limit()
    os.sched_setaffinity(0, systems.OTHERS_CPU)  # the mock and the client inherit it
    if args.litellm:
        systems.LITELLM = args.litellm
    wanted = [*args.targets, *(["litellm"] if args.litellm is not None else [])]
    skipped = {t: why for t in wanted if (why := systems.unavailable(t))}
    targets = [t for t in wanted if t not in skipped]
    results: dict[str, dict[str, list[dict]]] = {}
    mock_port = systems.free_port()
    mock = [systems.PYTHON, "-m", "bench.upstream", "--port", str(mock_port)]
    document = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "pinning": f"server on core {sorted(systems.SERVER_CPU)}, mock, Redis and client "
        f"on {sorted(systems.OTHERS_CPU)}; open-file limit {descriptors}",
        "repeat": args.repeat,
        "smoke": args.smoke,
        "scenarios": {
            n: astuple(smoke(SCENARIOS[n]) if args.smoke else SCENARIOS[n])
            for n in args.scenarios
            if n in SCENARIOS
        },
        "skipped": skipped,
        "runs": results,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tables = output.with_name(output.stem + "-results.md")
    with systems.serve(mock, mock_port, {}, systems.OTHERS_CPU) as mock_pid:
        for name, target, run in runs(args, targets, (f"http://127.0.0.1:{mock_port}", mock_pid)):
            results.setdefault(name, {}).setdefault(target, []).append(run)
            output.write_text(json.dumps(document, indent=2))  # after each run: kept if cut
    tables.write_text(render(document))
    print(f"wrote {output} and {tables}")


def brief(run: dict) -> str:
    keys = ["completed", "failed", "peak_open", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms"]
    keys += ["cpu_us_per_token", "cpu_us_per_stream", "rss_kib_per_stream"]
    keys += ["client_cpu_share", "mock_cpu_share"]
    return " ".join(f"{k}={run[k]:.4g}" for k in keys if k in run)


if __name__ == "__main__":
    main()
