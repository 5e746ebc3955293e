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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    model_validator,
)

__all__ = ["ConfigError", "Settings", "config_file", "load_settings"]

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
    #: Peers (addresses or networks) whose `X-Forwarded-For` / `X-Forwarded-Proto` are
    #: believed; the client address of anyone else is the connection's own. The default
    #: trusts a proxy on this machine (nginx); `[]` trusts none.
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    #: A connection must send a request's head within this long of opening (or of its
    #: previous response), and its body within `body_timeout` of the head: else 408.
    header_timeout: Seconds = Field(default=10.0, gt=0)
    body_timeout: Seconds = Field(default=30.0, gt=0)
    #: Largest request head (request line and headers); 431 above.
    max_header_bytes: int = Field(default=32_768, ge=1024)
    #: Open connections (and requests in progress) beyond this get 503; null: no limit.
    max_connections: int | None = Field(default=4096, gt=0)
    #: New streams get 503, and `/readyz` fails, while fewer file descriptors than this
    #: are free (a stream holds two or three).
    fd_reserve: int = Field(default=64, ge=0)


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
    #: Its label in logs and metrics; null: the host of `base_url` (`simulator` for null).
    name: str | None = Field(default=None, min_length=1, max_length=64)


class RouteUpstream(UpstreamSettings):
    """One upstream of a route in `routes`: `model` is the name the upstream knows."""

    #: In a route a failure moves on to the next upstream rather than retrying the same.
    retries: int = Field(default=0, ge=0, le=10)


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
    #: How long generations and readers wait for an unreachable store to come back
    #: before they give up with `store_unavailable`.
    store_outage: Seconds = Field(default=30.0, gt=0)


class RedisSettings(_Section):
    """Used when `streams.store` is `redis`."""

    url: str = "redis://127.0.0.1:6379/0"
    #: An instance that generates a stream renews its lease this often (a third
    #: of it); readers elsewhere report `generation_lost` once it has expired.
    lease_ttl: Seconds = Field(default=5.0, gt=0)


class LimitSettings(_Section):
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_messages: int = Field(default=256, gt=0)
    #: Characters in one message's `content`.
    max_message_chars: int = Field(default=200_000, gt=0)
    max_concurrent_streams: int = Field(default=1000, gt=0)
    #: Per caller (see `auth`); null: no limit.
    requests_per_minute: int | None = Field(default=None, gt=0)
    concurrent_streams_per_identity: int | None = Field(default=None, gt=0)
    #: A larger `max_tokens` in a request is refused (422), not clamped; null: no limit.
    max_tokens: int | None = Field(default=None, gt=0)
    #: Models a request may name (the default `upstream.model` always works); null: any.
    allowed_models: list[str] | None = None


JWTAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip
KeyDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]


class JWTSettings(_Section):
    """Used when `auth.mode` is `jwt`."""

    #: The environment variable holding the HS256/384/512 secret.
    secret_env: str = "SSE_GATEWAY_JWT_SECRET"
    #: Filled from `secret_env` by `load_settings`.
    secret: SecretStr | None = Field(default=None, exclude=True)
    #: Either HMAC (`HS*`) or public-key algorithms, not both: a key is never tried
    #: with an algorithm of the other family.
    algorithms: list[JWTAlgorithm] = Field(default=["HS256"], min_length=1)
    #: PEM public key for RS/PS/ES/EdDSA; or a JWKS file (keys picked by `kid`).
    public_key_file: str | None = None
    jwks_file: str | None = None
    audience: str | None = None
    issuer: str | None = None
    #: Clock skew allowed on `exp` and `nbf`.
    leeway: Seconds = Field(default=10.0, ge=0, le=300)

    @property
    def hmac(self) -> bool:
        return self.algorithms[0].startswith("HS")

    @model_validator(mode="after")
    def _one_family(self) -> JWTSettings:
        if len({alg.startswith("HS") for alg in self.algorithms}) > 1:
            raise ValueError("algorithms: list HMAC (HS*) or public-key algorithms, not both")
        if self.secret is not None and len(self.secret.get_secret_value().encode()) < 32:
            raise ValueError("jwt.secret: at least 32 bytes, or it can be guessed")
        return self


class AuthSettings(_Section):
    #: `none` (the caller is its address), `api_key` or `jwt`; see docs/security.md.
    mode: Literal["none", "api_key", "jwt"] = "none"
    #: SHA-256 hex digests of the accepted keys (`sse-gateway hash-key KEY`).
    api_keys: list[KeyDigest] = []
    jwt: JWTSettings = JWTSettings()
    #: Life of the token in an `events_url` (reconnects must happen within it).
    stream_token_ttl: Seconds = Field(default=600.0, gt=0)
    #: The environment variable holding the key that signs events URL tokens; every
    #: instance behind one load balancer needs the same. Unset: a random key per process.
    token_secret_env: str = "SSE_GATEWAY_TOKEN_SECRET"
    token_secret: SecretStr | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _usable(self) -> AuthSettings:
        if self.mode == "api_key" and not self.api_keys:
            raise ValueError("api_keys: mode api_key needs at least one key digest")
        if self.mode == "jwt" and self.jwt.hmac and self.jwt.secret is None:
            raise ValueError(f"jwt: HS algorithms need the secret in ${self.jwt.secret_env}")
        keys = self.jwt.public_key_file or self.jwt.jwks_file
        if self.mode == "jwt" and not self.jwt.hmac and not keys:
            raise ValueError("jwt: public-key algorithms need public_key_file or jwks_file")
        return self


class CORSSettings(_Section):
    #: Origins (`https://app.example`) whose pages may call the gateway; `*` for any.
    #: Empty: same-origin only.
    allowed_origins: list[str] = []
    #: Let those pages send cookies or HTTP auth (never with `*`).
    allow_credentials: bool = False

    @model_validator(mode="after")
    def _no_wildcard_credentials(self) -> CORSSettings:
        if self.allow_credentials and "*" in self.allowed_origins:
            raise ValueError("allow_credentials cannot be used with the origin '*'")
        return self


class SimulatorSettings(_Section):
    #: Serve the simulator at /simulator in the gateway's own process; null: only when an
    #: upstream uses it (`base_url: null`). With `auth.mode` other than `none` only the
    #: gateway itself can call it.
    enabled: bool | None = None
    #: Tokens per answer and delay per token when a request does not choose.
    tokens: int = Field(default=48, ge=0)
    token_delay: Seconds = Field(default=0.04, ge=0)
    #: Hard caps on what one request's directive may ask for (400 above), so that no
    #: request can hold the event loop or the memory: tokens, characters per token
    #: (`size`), characters in the whole answer, and the pause before each token.
    max_tokens: int = Field(default=100_000, gt=0)
    max_size: int = Field(default=100_000, gt=0)
    max_answer_chars: int = Field(default=16_000_000, gt=0)
    max_token_delay: Seconds = Field(default=60.0, ge=0)


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
    #: Log each stream's prompt and completion (in its `stream finished` line).
    content: bool = False


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    sse: SSESettings = SSESettings()
    streams: StreamSettings = StreamSettings()
    redis: RedisSettings = RedisSettings()
    limits: LimitSettings = LimitSettings()
    auth: AuthSettings = AuthSettings()
    cors: CORSSettings = CORSSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    web: WebSettings = WebSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    #: Model name clients ask for -> the upstreams that serve it, tried in order.
    routes: dict[str, list[RouteUpstream]] = {}

    @model_validator(mode="after")
    def _simulator_served(self) -> Settings:
        if self.simulator.enabled is False and self.uses_simulator:
            raise ValueError(
                "simulator.enabled: false, but an upstream with base_url: null "
                "calls the built-in simulator; set its base_url"
            )
        return self

    @property
    def uses_simulator(self) -> bool:
        """Whether an upstream (`upstream` or a route's) is this process's simulator."""
        targets = [self.upstream, *(t for route in self.routes.values() for t in route)]
        return any(target.base_url is None for target in targets)

    @property
    def serves_simulator(self) -> bool:
        """Whether `/simulator` is mounted: when used, or when `simulator.enabled` says so."""
        enabled = self.simulator.enabled
        return self.uses_simulator if enabled is None else enabled

    def with_simulator_key(self, key: str) -> Settings:
        """These settings with `key` as the API key of every upstream that is the simulator."""
        secret = SecretStr(key)

        def keyed(target: UpstreamSettings) -> Any:
            return target if target.base_url else target.model_copy(update={"api_key": secret})

        routes = {name: [keyed(t) for t in targets] for name, targets in self.routes.items()}
        return self.model_copy(update={"upstream": keyed(self.upstream), "routes": routes})

    @property
    def upstream_base_url(self) -> str:
        """The upstream to call: the configured one, or this process's simulator."""
        return self.base_url_of(self.upstream)

    def base_url_of(self, upstream: UpstreamSettings) -> str:
        """`upstream.base_url`, or this process's simulator when it is null."""
        if upstream.base_url:
            return upstream.base_url
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
    for secret in _AUTH_SECRETS:
        if _get(data, secret) is not None:
            where = ".".join(secret)
            raise ConfigError(
                f"{where}: secrets are not read from files; "
                f"put it in the environment variable named by {where}_env"
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
    _fill_api_key(upstream, env)
    routes: dict[str, Any] = data["routes"] if isinstance(data.get("routes"), dict) else {}
    for name, targets in list(routes.items()):
        if not isinstance(targets, list):
            continue  # validation names the problem
        copies = [dict(target) if isinstance(target, dict) else target for target in targets]
        routes[name] = copies  # never fill keys into the caller's overrides
        for target in copies:
            if isinstance(target, dict):
                if "api_key" in target:
                    raise ConfigError(
                        f"routes.{name}: secrets are not read from files; "
                        "name the environment variable with api_key_env"
                    )
                _fill_api_key(target, env)
    _fill_auth_secrets(data, env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None


def config_file(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The file `load_settings(path)` reads: `path`, else `$GATEWAY_CONFIG`, else
    `./config.yaml` when it exists; None when only defaults and environment apply."""
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get(CONFIG_ENV)
    if chosen:
        return Path(chosen)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def _fill_api_key(upstream: dict[str, Any], env: Mapping[str, str]) -> None:
    """The key from the environment variable that `api_key_env` names."""
    key_env = str(upstream.get("api_key_env", UpstreamSettings().api_key_env))
    if upstream.get("api_key") is None and env.get(key_env):
        upstream["api_key"] = env[key_env]


#: Auth secrets, each read from the environment variable its `<key>_env` names.
_AUTH_SECRETS: dict[tuple[str, ...], str] = {
    ("auth", "token_secret"): AuthSettings().token_secret_env,
    ("auth", "jwt", "secret"): JWTSettings().secret_env,
}


def _fill_auth_secrets(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for path, default_env in _AUTH_SECRETS.items():
        section: Any = data
        for name in path[:-1]:
            if isinstance(section, dict):  # copies: never fill the caller's overrides
                child = section.get(name, {})
                section[name] = dict(child) if isinstance(child, Mapping) else child
                section = section[name]
        if isinstance(section, dict):  # else validation names the key
            key = path[-1]
            variable = str(section.get(f"{key}_env", default_env))
            if section.get(key) is None and env.get(variable):
                section[key] = env[variable]


def _get(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


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
