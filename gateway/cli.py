"""`sse-gateway serve` and `sse-gateway simulate` (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.config import ConfigError, SimulatorSettings, load_settings
from gateway.simulator import Simulator

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sse-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML file (default: $GATEWAY_CONFIG or ./config.yaml)")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")

    simulate = commands.add_parser("simulate", help="run the OpenAI-compatible simulator alone")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8001)
    simulate.add_argument("--tokens", type=int, default=SimulatorSettings().tokens)
    simulate.add_argument("--delay-ms", type=float, default=SimulatorSettings().token_delay * 1000)

    for command in (serve, simulate):
        command.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per upstream call
    if args.command == "simulate":
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
    uvicorn.run(
        create_app(config),
        host=config.server.host,
        port=config.server.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(config.server.drain_timeout) + 1,
    )
    return 0
