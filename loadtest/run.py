"""`make loadtest`: a headless locust run against a gateway, bounded in users and time.

Without `--host`, starts `sse-gateway serve` (the built-in simulator, as
config.yaml says) on a free 127.0.0.1 port, and stops it afterwards. Writes
locust's HTML report and CSV files to `--results`. Arguments it does not know
go to locust, e.g. `--output-tokens 200 --token-delay-ms 0`. Exits with
locust's exit code (1 when any request or stream failed).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="", help="a running gateway (default: start one)")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--run-time", default="30s", help="locust's --run-time, e.g. 30s, 2m")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    args, locust_args = parser.parse_known_args()

    with _gateway(args.host, args.config) as host:
        args.results.mkdir(parents=True, exist_ok=True)
        command = [
            *(sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless"),
            *("--host", host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate)),
            *("--run-time", args.run_time, "--stop-timeout", "10", "--only-summary"),
            *("--html", str(args.results / "report.html")),
            *("--csv", str(args.results / "loadtest")),
            *locust_args,
        ]
        print(f"locust against {host}; results in {args.results}", flush=True)
        return subprocess.run(command, check=False).returncode


@contextmanager
def _gateway(host: str, config: Path) -> Iterator[str]:
    """`host`, or the URL of a gateway started for the run and stopped after it."""
    if host:
        yield host.rstrip("/")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(
                f"the gateway exited with code {server.returncode} before it was ready"
            )
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"the gateway at {url} was not ready within {timeout:g} s")


if __name__ == "__main__":
    sys.exit(main())
