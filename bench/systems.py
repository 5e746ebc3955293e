"""The systems under test and the processes around them: how each one is started,
pinned to a core, and measured (CPU and RSS from /proc).

The server under test gets core 0 to itself (`SERVER_CPU`); the bench, the
upstream mock, Redis and the load client share the other one, so the server's
own time is what a run measures. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
#: Descriptors a process may need at 10,000 streams: a client and an upstream socket each.
DESCRIPTORS = 65_536


def cores() -> tuple[set[int], set[int]]:
    """(the server's core, everyone else's); on one core, both share it."""
    available = sorted(os.sched_getaffinity(0))
    return {available[0]}, set(available[1:] or available)


SERVER_CPU, OTHERS_CPU = cores()


def raise_descriptor_limit() -> int:
    """Raise this process's (and so its children's) open-file limit as far as allowed."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < DESCRIPTORS:
        try:  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))
            return DESCRIPTORS
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


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


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def serve(
    command: list[str], port: int, env: dict[str, str], cpus: set[int], *, startup: float = 60
) -> Iterator[int]:
    """Start a server process on `cpus` and wait until it takes connections; yields its pid."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL,
    )
    try:
        os.sched_setaffinity(process.pid, cpus)
        deadline = time.monotonic() + startup
        while not answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not start")
            time.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Target:
    """One system the load client reads: how to start it and how to talk to it."""

    name: str
    #: The client's protocol: `openai` (chat completions), `sse` (POST, events back).
    kind: str
    #: The path the client posts to (`sse`), or the base of /v1/chat/completions.
    path: str
    #: The gateway's two-step protocol is measured for the fixed cost.
    two_step: bool = False


TARGETS = {
    "direct": Target("direct", "openai", ""),
    "reference": Target("reference", "sse", "/stream"),
    "naive": Target("naive", "sse", "/stream"),
    "gateway": Target("gateway", "sse", "/api/stream", two_step=True),
    "gateway_redis": Target("gateway_redis", "sse", "/api/stream", two_step=True),
    "litellm": Target("litellm", "openai", ""),
}


#: LiteLLM's proxy binary, from a venv of its own (`--litellm PATH`), else the PATH.
LITELLM = shutil.which("litellm")


def litellm_binary() -> str | None:
    return LITELLM if LITELLM and Path(LITELLM).is_file() else None


def unavailable(target: str) -> str | None:
    """Why `target` cannot run on this machine, or None."""
    if target == "gateway_redis" and not redis_binary():
        return "redis-server not found"
    if target == "litellm" and not litellm_binary():
        return "LiteLLM's proxy not found (`make bench LITELLM=path/to/venv/bin/litellm`)"
    return None


def redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A throwaway redis-server on a loopback port (no persistence); yields (url, pid)."""
    binary = redis_binary()
    assert binary is not None
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--maxclients", "50000"]
    with serve(command, port, {}, OTHERS_CPU) as pid:
        yield f"redis://127.0.0.1:{port}/0", pid


@contextmanager
def start(target: str, upstream: str, *, redis_url: str | None = None) -> Iterator[tuple[str, int]]:
    """Start `target` in front of `upstream` (a /v1 base URL); yields (its URL, its pid)."""
    port = free_port()
    uvicorn = [PYTHON, "-m", "uvicorn", "--port", str(port), "--log-level", "warning"]
    uvicorn += ["--backlog", "16384", "--timeout-keep-alive", "30"]
    with tempfile.TemporaryDirectory() as scratch:
        env: dict[str, str] = {}
        if target in ("reference", "naive"):
            command = [*uvicorn, f"bench.{target}:app"]
            env = {"BENCH_UPSTREAM": upstream}
        elif target == "litellm":
            config = Path(scratch) / "litellm.yaml"
            config.write_text(
                "model_list:\n  - model_name: sim-1\n    litellm_params:\n"
                f"      model: openai/sim-1\n      api_base: {upstream}\n      api_key: unused\n"
            )
            command = [str(litellm_binary()), "--config", str(config), "--host", "127.0.0.1"]
            command += ["--port", str(port)]
            command += ["--num_workers", "1"]
            # Its bundled model cost map and no other requests of its own (the bench is
            # offline); no master key, as for the other targets (on loopback only).
            env = {
                "LITELLM_OFFLINE_MODE": "true",
                "LITELLM_LOCAL_MODEL_COST_MAP": "true",
                "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            }
        else:
            command = [PYTHON, "-m", "gateway", "serve", "--port", str(port)]
            command += ["--log-level", "warning"]
            env = {
                "GATEWAY_UPSTREAM__BASE_URL": upstream,
                "GATEWAY_SIMULATOR__ENABLED": "false",
                "GATEWAY_LIMITS__MAX_CONCURRENT_STREAMS": "20000",
                "GATEWAY_SERVER__MAX_CONNECTIONS": "40000",
            }
            if redis_url is not None:
                env |= {"GATEWAY_STREAMS__STORE": "redis", "GATEWAY_REDIS__URL": redis_url}
        with serve(command, port, env, SERVER_CPU, startup=120) as pid:
            yield f"http://127.0.0.1:{port}", pid
