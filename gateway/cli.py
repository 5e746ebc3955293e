"""`sse-gateway serve` and `sse-gateway simulate` (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from gateway import auth, logs
from gateway.app import create_app
from gateway.config import (
    CONFIG_ENV,
    ENV_PREFIX,
    ConfigError,
    LoggingSettings,
    SimulatorSettings,
    load_settings,
)
from gateway.simulator import Simulator

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sse-gateway", description=__doc__)
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
    try:
        auth.Authenticator(config)  # a JWT key file that cannot be used stops the start here
    except ConfigError as exc:
        print(f"sse-gateway: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(config) if args.workers == 1 else _worker_factory(args.config, server),
        factory=args.workers > 1,
        workers=args.workers,
        host=config.server.host,
        port=config.server.port,
        log_level=args.log_level,
        log_config=log_config,  # applied in worker processes too
        access_log=False,  # the gateway logs each request itself, with its request id
        proxy_headers=False,  # the app trusts X-Forwarded-For from server.trusted_proxies only
        # Drain (ends streams at drain_timeout), then time to send their last event.
        timeout_graceful_shutdown=math.ceil(config.server.drain_timeout) + 3,
    )
    return 0


def _worker_factory(config_file: str | None, server: dict[str, Any]) -> str:
    """Worker processes build their own app with `create_app()`, which loads the
    settings again: pass the file and the command line's overrides through the
    environment they inherit."""
    if config_file is not None:
        os.environ[CONFIG_ENV] = config_file
    for key, value in server.items():
        os.environ[f"{ENV_PREFIX}SERVER__{key.upper()}"] = str(value)
    return "gateway.app:create_app"
