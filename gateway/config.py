"""Settings: one typed object, loaded once at start.

Precedence, lowest first: defaults below, the YAML file (`--config`, else
`$GATEWAY_CONFIG`, else `./config.yaml`), then environment variables named
`GATEWAY_<SECTION>__<KEY>` (nested keys joined by `__`; lists and objects
written as JSON). The upstream API key is read from the variable that
`upstream.api_key_env` names and is never accepted from a file.

Nothing else in the gateway reads the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

__all__ = ["ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "GATEWAY_"
CONFIG_ENV = "GATEWAY_CONFIG"
DEFAULT_CONFIG_FILE = "config.yaml"

Seconds = float


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: On shutdown, how long running streams may finish before they are cut.
    drain_timeout: Seconds = Field(default=10.0, ge=0)


class UpstreamTimeouts(_Section):
    #: TCP connect to the upstream.
    connect: Seconds = Field(default=5.0, gt=0)
    #: From the request to the first content token (models may think first).
    first_token: Seconds = Field(default=60.0, gt=0)
    #: Largest silence between chunks once tokens flow.
    idle: Seconds = Field(default=30.0, gt=0)
    #: Whole generation, retries included.
    total: Seconds = Field(default=600.0, gt=0)


class UpstreamSettings(_Section):
    #: OpenAI-compatible base URL; null means the built-in simulator of this process.
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    #: Filled from the environment variable `api_key_env` by `load_settings`.
    api_key: SecretStr | None = Field(default=None, exclude=True)
    model: str = "sim-1"
    #: Attempts after the first, only before the first token is relayed.
    retries: int = Field(default=2, ge=0, le=10)
    #: Longest wait before a retry; a larger upstream Retry-After is not retried.
    max_retry_wait: Seconds = Field(default=10.0, ge=0)
    timeouts: UpstreamTimeouts = UpstreamTimeouts()


class SSESettings(_Section):
    #: Comment sent when nothing else was sent for this long.
    heartbeat: Seconds = Field(default=15.0, gt=0)
    #: Reconnection delay advertised to EventSource clients.
    retry_ms: int = Field(default=2000, ge=0)
    #: A client that does not take a write within this time is dropped.
    send_timeout: Seconds = Field(default=10.0, gt=0)
    #: Deltas arriving within this many milliseconds go out as one `token` event
    #: (0: off). The first token is never delayed.
    coalesce_ms: int = Field(default=0, ge=0, le=1000)


class StreamSettings(_Section):
    #: `memory` (one process) or `redis` (several instances share streams; see `redis`).
    store: Literal["memory", "redis"] = "memory"
    #: How long a generation runs on with nobody reading before it is cancelled.
    disconnect_grace: Seconds = Field(default=30.0, ge=0)
    #: How long a finished stream stays available for replay.
    retention: Seconds = Field(default=300.0, ge=0)
    #: Events kept per stream; older ones are dropped (and cannot be replayed).
    max_events: int = Field(default=10_000, ge=2)


class RedisSettings(_Section):
    """Used when `streams.store` is `redis`."""

    url: str = "redis://127.0.0.1:6379/0"
    #: An instance that generates a stream renews its lease this often (a third
    #: of it); readers elsewhere report `generation_lost` once it has expired.
    lease_ttl: Seconds = Field(default=5.0, gt=0)


class LimitSettings(_Section):
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_messages: int = Field(default=256, gt=0)
    max_concurrent_streams: int = Field(default=1000, gt=0)


class SimulatorSettings(_Section):
    #: Mount the simulator at /simulator in the gateway's own process.
    enabled: bool = True
    #: Tokens per answer and delay per token when a request does not choose.
    tokens: int = Field(default=48, ge=0)
    token_delay: Seconds = Field(default=0.04, ge=0)


class WebSettings(_Section):
    #: Serve the browser frontend at `/`.
    enabled: bool = True
    #: Its directory; null means the `web/` folder that ships with the gateway.
    directory: str | None = None


class MetricsSettings(_Section):
    #: Serve Prometheus metrics at `/metrics`.
    enabled: bool = True
    #: Serve `/metrics` on this port only, not on the gateway's; null: the gateway's port.
    port: int | None = Field(default=None, ge=0, le=65535)
    #: Address of that port; null: `server.host`.
    host: str | None = None
    #: For `uvicorn --workers N`: an empty directory all workers write their metrics to,
    #: so `/metrics` adds them up. Empty it before each start.
    multiprocess_dir: str | None = None


class LoggingSettings(_Section):
    #: `console`: readable lines; `json`: one JSON object per line.
    format: Literal["console", "json"] = "console"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    sse: SSESettings = SSESettings()
    streams: StreamSettings = StreamSettings()
    redis: RedisSettings = RedisSettings()
    limits: LimitSettings = LimitSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    web: WebSettings = WebSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()

    @property
    def upstream_base_url(self) -> str:
        """The upstream to call: the configured one, or this process's simulator."""
        if self.upstream.base_url:
            return self.upstream.base_url
        host = self.server.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.server.port}/simulator/v1"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from file, environment and `overrides` (CLI flags, tests).

    `overrides` is a nested mapping applied last, e.g. `{"server": {"port": 0}}`.
    """
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get(CONFIG_ENV)
    data = _read_file(Path(chosen) if chosen else Path(DEFAULT_CONFIG_FILE), required=bool(chosen))
    for section, value in data.items():
        if value is None:
            data[section] = {}  # every key of the section commented out
        elif not isinstance(value, dict):
            raise ConfigError(f"{section}: must be a mapping of keys")
    if "api_key" in data.get("upstream", {}):
        raise ConfigError(
            "upstream.api_key: secrets are not read from files; "
            "put the key in the environment variable named by upstream.api_key_env"
        )
    sources: dict[tuple[str, ...], str] = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name != CONFIG_ENV:
            keys = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
            _set(data, keys, _env_value(value), name)
            sources[keys] = name
    _merge(data, overrides or {})
    upstream = data.setdefault("upstream", {})
    if not isinstance(upstream, dict):
        raise ConfigError("upstream: must be a mapping of keys")
    key_env = str(upstream.get("api_key_env", UpstreamSettings().api_key_env))
    if upstream.get("api_key") is None and env.get(key_env):
        upstream["api_key"] = env[key_env]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None


def _read_file(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"config file not found: {path}")
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def _env_value(value: str) -> Any:
    """Lists and objects come as JSON; scalars stay strings for pydantic to coerce."""
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _set(data: dict[str, Any], keys: tuple[str, ...], value: Any, source: str) -> None:
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            dotted = ".".join(keys[: depth + 1])
            raise ConfigError(f"{dotted}: is not a section, so {source} cannot set a key in it")
        node = child
    node[keys[-1]] = value


def _merge(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = dict(value) if isinstance(value, Mapping) else value


def _describe(exc: ValidationError, sources: Mapping[tuple[str, ...], str]) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        source = next(
            (sources[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in sources), None
        )
        where = f" (from {source})" if source else ""
        lines.append(f"  {'.'.join(loc)}: {error['msg']}{where}")
    return "\n".join(lines)
