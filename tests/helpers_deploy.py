"""Helpers that run real processes for the deployment tests: gateway instances
(`sse-gateway serve`) and nginx running the shipped deploy/nginx.conf, all on loopback ports."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def wait_http(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    """Wait (up to 15 s) until `url` answers without a 5xx; fail early if `process` died."""
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(url, timeout=1, verify=False).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def terminate(process: subprocess.Popen[Any]) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if the process is still there after 15 s."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class GatewayProcess:
    """`python -m gateway serve` in its own process, configured by a YAML file."""

    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / f"gateway-{self.port}.yaml"
        self.config.write_text(json.dumps(settings))  # JSON is YAML
        self.log = directory / f"gateway-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []
        #: Run in the child before it starts, e.g. to lower its file descriptor limit.
        self.preexec: Callable[[], None] | None = None

    def start(self) -> GatewayProcess:
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        command += ["--port", str(self.port), "--log-level", "warning", *self.extra_args]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.preexec
            )
        wait_http(f"{self.url}/healthz", self.process, "gateway")
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def gateways(
    directory: Path, settings: dict[str, Any], count: int
) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    try:
        for _ in range(count):
            started.append(GatewayProcess(directory, settings).start())
        yield started
    finally:
        for gateway in started:
            gateway.stop()


class Nginx:
    """nginx with the shipped deploy/nginx.conf, included from a minimal main config.

    Only the two per-machine include files are written here, from the shipped
    examples with the ports (and, when asked, the read timeout) replaced.
    """

    def __init__(
        self, directory: Path, upstreams: Sequence[str], read_timeout: str | None = None
    ) -> None:
        self.directory = directory
        self.http_port, self.https_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.https_url = f"https://127.0.0.1:{self.https_port}"
        local = directory / "sse-gateway"
        (local / "tls").mkdir(parents=True)
        servers = "".join(
            f"server {address} max_fails=1 fail_timeout=5s;\n" for address in upstreams
        )
        (local / "upstreams.conf").write_text(servers)
        server = (DEPLOY / "sse-gateway" / "server.conf").read_text()
        server = re.sub(r"listen 80;", f"listen 127.0.0.1:{self.http_port};", server)
        server = re.sub(r"listen 443 ", f"listen 127.0.0.1:{self.https_port} ", server)
        if read_timeout is not None:
            server = re.sub(
                r"proxy_read_timeout \S+;", f"proxy_read_timeout {read_timeout};", server
            )
        (local / "server.conf").write_text(server)
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=localhost", "-keyout", str(local / "tls" / "privkey.pem")),
                *("-out", str(local / "tls" / "fullchain.pem")),
            ],
            check=True,
            capture_output=True,
        )
        for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / temp).mkdir()
        (directory / "nginx.conf").write_text(
            f"""daemon off;
user root;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {DEPLOY / "nginx.conf"};
}}
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        command = [binary, "-p", str(self.directory), "-c", str(self.directory / "nginx.conf")]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE)
        wait_http(f"{self.url}/healthz", self.process, "nginx")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)
        assert self.process.stderr is not None
        self.process.stderr.close()
