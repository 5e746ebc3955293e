"""`sse-gateway serve` and `sse-gateway simulate` (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from gateway import __version__, auth, descriptors, logs
from gateway.app import create_app
from gateway.config import (
    ConfigError,
    LoggingSettings,
    MetricsSettings,
    Settings,
    SimulatorSettings,
)
from gateway.config_loader import CONFIG_ENV, ENV_PREFIX, config_file, load_settings
from gateway.metrics_multiprocess import MULTIPROC_ENV, check_multiprocess_dir
from gateway.server import GatewayConfig, run, uvicorn_options
from gateway.simulator import Simulator

__all__ = ["main"]

logger = logging.getLogger("gateway.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sse-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML file (default: $GATEWAY_CONFIG or ./config.yaml)")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (more than one needs redis)"
    )

    simulate = commands.add_parser("simulate", help="run the OpenAI-compatible simulator alone")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8001)
    simulate.add_argument("--tokens", type=int, default=SimulatorSettings().tokens)
    simulate.add_argument("--delay-ms", type=float, default=SimulatorSettings().token_delay * 1000)

    hash_key = commands.add_parser(
        "hash-key", help="print the digest of an API key, for auth.api_keys"
    )
    hash_key.add_argument("key", nargs="?", help="the key (default: one line from stdin)")

    for command in (serve, simulate):
        command.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    args = parser.parse_args(argv)
    if args.command == "hash-key":
        key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
        if not key:
            print("sse-gateway: give a key, or one line on stdin", file=sys.stderr)
            return 2
        print(auth.hash_key(key))
        return 0
    if args.command == "simulate":
        logs.configure(LoggingSettings(), args.log_level)
        settings = SimulatorSettings(tokens=args.tokens, token_delay=args.delay_ms / 1000)
        uvicorn.run(Simulator(settings).app, host=args.host, port=args.port, log_level="warning")
        return 0

    server: dict[str, Any] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    try:
        config = load_settings(args.config, overrides={"server": server})
    except ConfigError as exc:
        print(f"sse-gateway: {exc}", file=sys.stderr)
        return 2
    api_key = config.upstream.api_key
    secrets = [api_key.get_secret_value()] if api_key else []
    log_config = logs.log_config(config.logging, args.log_level, secrets)
    logs.configure(config.logging, args.log_level, secrets)
    if args.workers > 1 and config.streams.store == "memory":
        print("sse-gateway: --workers needs streams.store: redis", file=sys.stderr)
        return 2
    if config.streams.store == "redis" and importlib.util.find_spec("redis") is None:
        print(
            "sse-gateway: streams.store: redis needs the redis extra: "
            "pip install 'sse-gateway[redis]'",
            file=sys.stderr,
        )
        return 2
    try:
        auth.Authenticator(config)  # a JWT key file that cannot be used stops the start here
        _share_metrics(config.metrics, args.workers)
        app = create_app(config) if args.workers == 1 else _worker_factory(args.config, server)
    except ConfigError as exc:
        print(f"sse-gateway: {exc}", file=sys.stderr)
        return 2
    logger.info(_summary(config, args.config))
    for warning in _warnings(config):
        logger.warning(warning)
    started = run(
        GatewayConfig(
            app,
            limits=config.server,
            factory=args.workers > 1,
            workers=args.workers,
            log_level=args.log_level,
            log_config=log_config,  # applied in worker processes too
            **uvicorn_options(config),
        )
    )
    return 0 if started else 3  # uvicorn's own exit status for a failed start


def _summary(config: Settings, config_path: str | None) -> str:
    """The start-up line: what this gateway is about to serve, without credentials."""
    loaded = config_file(config_path)
    upstream = _without_credentials(config.upstream_base_url)
    if config.upstream.base_url is None:
        upstream = f"built-in simulator {upstream}"
    server = config.server
    proxies = ", ".join(server.trusted_proxies) or "none"
    return (
        f"sse-gateway {__version__} on http://{server.host}:{server.port}: "
        f"config {loaded or 'none (defaults)'}, upstream {upstream}, "
        f"model {config.upstream.model}, store {config.streams.store}, "
        f"auth {config.auth.mode}, X-Forwarded-For trusted from {proxies}"
    )


def _warnings(config: Settings) -> list[str]:
    """What is likely to go wrong with this configuration, said before it does."""
    warnings = []
    targets = [config.upstream, *(t for route in config.routes.values() for t in route)]
    for target in targets:
        if target.base_url and target.api_key is None and not _local(target.base_url):
            warnings.append(
                f"${target.api_key_env} is not set: {_without_credentials(target.base_url)} "
                "will most likely refuse every request (upstream_auth)"
            )
    needed = 3 * config.limits.max_concurrent_streams + config.server.fd_reserve
    if descriptors.limit() < needed:
        warnings.append(
            f"the file descriptor limit ({descriptors.limit()}) is below what "
            f"limits.max_concurrent_streams ({config.limits.max_concurrent_streams}, up to "
            f"3 each) needs: about {needed}; raise LimitNOFILE or ulimit -n"
        )
    return warnings


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _local(url: str) -> bool:
    """Whether `url` is on this machine (a local model needs no key)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _share_metrics(metrics: MetricsSettings, workers: int) -> None:
    """Workers write their metrics to `metrics.multiprocess_dir`: prometheus-client
    learns the directory from PROMETHEUS_MULTIPROC_DIR when it is imported, which the
    worker processes (started afresh, not forked) do after this sets it. This
    process imported it long ago, so serving alone it cannot switch over."""
    directory = metrics.multiprocess_dir
    if workers > 1 and directory is not None and MULTIPROC_ENV not in os.environ:
        os.environ[MULTIPROC_ENV] = directory
    check_multiprocess_dir(directory)


def _worker_factory(config_file: str | None, server: dict[str, Any]) -> str:
    """Worker processes build their own app with `create_app()`, which loads the
    settings again: pass the file and the command line's overrides through the
    environment they inherit."""
    if config_file is not None:
        os.environ[CONFIG_ENV] = config_file
    for key, value in server.items():
        os.environ[f"{ENV_PREFIX}SERVER__{key.upper()}"] = str(value)
    return "gateway.app:create_app"
