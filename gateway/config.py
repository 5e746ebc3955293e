"""Settings: one typed object, loaded once at start (`gateway.config_loader`).

This module is declarative: the sections, each field with its default, its
bounds and a docstring that is its line in the README's configuration
reference (`gateway.config_reference` renders that table), and the few
validators that refuse combinations that cannot work.

Secrets follow one rule: a field `x` beside a field `x_env` (`upstream.api_key`,
`auth.token_secret`, `auth.jwt.secret`, a route's `api_key`) is read from the
environment variable that `x_env` names, and never from the file. Every section
reads them here, from the environment the loader passes in the validation
context; the loader refuses them in a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    model_validator,
)

__all__ = ["ConfigError", "Settings", "secret_fields"]

Seconds = float


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _with_sections_and_secrets(cls, data: Any, info: ValidationInfo) -> Any:
        """Sub-sections left out or empty (every key commented out) are validated as `{}`,
        so that they too read their secrets: from the variable each `<name>_env` names,
        when `load_settings` passes the environment in the validation context."""
        if not isinstance(data, Mapping):
            return data  # validation names the key
        data = dict(data)  # never fill the caller's overrides
        for name, field in cls.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, _Section):
                data[name] = {} if data.get(name) is None else data[name]
        context = info.context if isinstance(info.context, Mapping) else {}
        environ: Mapping[str, str] = context.get("environ", {})
        for name in secret_fields(cls):
            variable = str(data.get(f"{name}_env", cls.model_fields[f"{name}_env"].default))
            if data.get(name) is None and environ.get(variable):
                data[name] = environ[variable]
        return data


def secret_fields(model: type[BaseModel]) -> list[str]:
    """The fields of `model` read from the environment: `x` where there is an `x_env`."""
    return [name for name in model.model_fields if f"{name}_env" in model.model_fields]


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    """address to listen on"""
    port: int = Field(default=8000, ge=0, le=65535)
    """port to listen on"""
    drain_timeout: Seconds = Field(default=10.0, ge=0)
    """on SIGTERM, how long running generations may finish before they end with
    `error: shutdown` (docs/deploy.md)"""
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    """peers (addresses or networks) whose `X-Forwarded-For` / `X-Forwarded-Proto` are
    believed; the client address of anyone else is the connection's own. The default
    trusts a proxy on this machine (nginx), and the start-up line says so; `[]` trusts
    none (docs/security.md)"""
    header_timeout: Seconds = Field(default=10.0, gt=0)
    """a connection must send a request's head within this long of opening (or of its
    previous response): else 408 and closed"""
    body_timeout: Seconds = Field(default=30.0, gt=0)
    """a request's body must arrive within this long of its head: else 408 and closed"""
    max_header_bytes: int = Field(default=32_768, ge=1024)
    """largest request head, request line and headers (431 above)"""
    max_connections: int | None = Field(default=4096, gt=0)
    """open connections (and requests in progress) beyond this get 503 (uvicorn's
    `limit_concurrency`); `null` = no limit"""
    fd_reserve: int = Field(default=64, ge=0)
    """new streams get 503, and `/readyz` fails, while fewer file descriptors than this
    are free; a stream holds two or three (docs/deploy.md)"""


class UpstreamTimeouts(_Section):
    connect: Seconds = Field(default=5.0, gt=0)
    """TCP connect to the upstream"""
    first_token: Seconds = Field(default=60.0, gt=0)
    """from the request to the first content token (models may think first)"""
    idle: Seconds = Field(default=30.0, gt=0)
    """largest silence between chunks once tokens flow"""
    total: Seconds = Field(default=600.0, gt=0)
    """all of one upstream's attempts at an answer, the waits between its retries
    included; the next upstream of a route starts a `total` of its own"""


class UpstreamSettings(_Section):
    base_url: str | None = None
    """OpenAI-compatible base URL; `null` = the built-in simulator at `/simulator/v1` of
    this process"""
    api_key_env: str = "OPENAI_API_KEY"
    """the environment variable holding the upstream's API key (never read from a file)"""
    api_key: SecretStr | None = Field(default=None, exclude=True)
    model: str = "sim-1"
    """model used when a request names none"""
    retries: int = Field(default=2, ge=0, le=10)
    """retries of a retryable failure, only before the first token is relayed"""
    max_retry_wait: Seconds = Field(default=10.0, ge=0)
    """longest wait before a retry; a longer upstream `Retry-After` is not retried"""
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    name: str | None = Field(default=None, min_length=1, max_length=64)
    """the upstream's label in logs and metrics; `null` = the host of `base_url`
    (`simulator` when that is null)"""


class RouteUpstream(UpstreamSettings):
    """One upstream of a route in `routes`: `model` is the name the upstream knows."""

    retries: int = Field(default=0, ge=0, le=10)
    """in a route a failure moves on to the next upstream rather than retrying the same"""


class SSESettings(_Section):
    heartbeat: Seconds = Field(default=15.0, gt=0)
    """a `: ping` comment after this much silence"""
    retry_ms: int = Field(default=2000, ge=0)
    """reconnection delay advertised to EventSource clients"""
    send_timeout: Seconds = Field(default=10.0, gt=0)
    """a client that does not take a write within this long is dropped"""
    coalesce_ms: int = Field(default=0, ge=0, le=1000)
    """token deltas arriving within this many milliseconds go out as one `token` event
    (0 = off; the first token is never delayed)"""


class StreamSettings(_Section):
    store: Literal["memory", "redis"] = "memory"
    """where stream events live: `memory` (one process) or `redis` (several instances
    share streams; docs/deploy.md)"""
    disconnect_grace: Seconds = Field(default=30.0, ge=0)
    """how long a generation runs on with nobody reading before it is cancelled"""
    retention: Seconds = Field(default=300.0, ge=0)
    """how long a finished stream can still be replayed"""
    max_events: int = Field(default=10_000, ge=2)
    """events kept per stream; older ones are dropped and cannot be replayed"""
    store_outage: Seconds = Field(default=30.0, gt=0)
    """how long generations and readers wait for an unreachable store to come back
    before they give up with `store_unavailable`"""


class RedisSettings(_Section):
    """Used when `streams.store` is `redis`."""

    url: str = "redis://127.0.0.1:6379/0"
    """the Redis of `streams.store: redis`"""
    lease_ttl: Seconds = Field(default=5.0, gt=0)
    """an instance that generates a stream renews its lease every third of this; readers
    elsewhere report `generation_lost` once it has expired"""


class LimitSettings(_Section):
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    """request body limit (413 above)"""
    max_messages: int = Field(default=256, gt=0)
    """messages per request (422 above)"""
    max_message_chars: int = Field(default=200_000, gt=0)
    """characters in one message's `content` (422 above)"""
    max_concurrent_streams: int = Field(default=1000, gt=0)
    """running generations (503 above)"""
    requests_per_minute: int | None = Field(default=None, gt=0)
    """write requests per caller (see `auth`) per minute (429 above); `null` = no limit"""
    concurrent_streams_per_identity: int | None = Field(default=None, gt=0)
    """running streams per caller (429 above); `null` = no limit"""
    max_tokens: int | None = Field(default=None, gt=0)
    """a request's `max_tokens` above this is refused (422), not clamped; `null` = no
    limit"""
    allowed_models: list[str] | None = None
    """models a request may name (400 `model_not_allowed` otherwise; the default
    `upstream.model` always works); `null` = any"""


JWTAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip
KeyDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]


class JWTSettings(_Section):
    """Used when `auth.mode` is `jwt`."""

    secret_env: str = "SSE_GATEWAY_JWT_SECRET"
    """the environment variable holding the HS256/384/512 secret (at least 32 bytes)"""
    secret: SecretStr | None = Field(default=None, exclude=True)
    algorithms: list[JWTAlgorithm] = Field(default=["HS256"], min_length=1)
    """accepted algorithms: HMAC (`HS*`) ones or public-key ones, not both, so a key is
    never tried with an algorithm of the other family"""
    public_key_file: str | None = None
    """PEM public key for RS/PS/ES/EdDSA algorithms"""
    jwks_file: str | None = None
    """a JWKS file instead (keys chosen by `kid`)"""
    audience: str | None = None
    """required `aud` (tokens with an `aud` are refused while this is null)"""
    issuer: str | None = None
    """required `iss`"""
    leeway: Seconds = Field(default=10.0, ge=0, le=300)
    """clock skew allowed on `exp` and `nbf`"""

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
    mode: Literal["none", "api_key", "jwt"] = "none"
    """`none` (callers known by address; open), `api_key` or `jwt` (docs/security.md)"""
    api_keys: list[KeyDigest] = []
    """SHA-256 hex digests of the accepted keys (`sse-gateway hash-key KEY`)"""
    jwt: JWTSettings = JWTSettings()
    stream_token_ttl: Seconds = Field(default=600.0, gt=0)
    """life of the token in an `events_url` (EventSource reconnects must come within
    it)"""
    token_secret_env: str = "SSE_GATEWAY_TOKEN_SECRET"
    """the environment variable holding the key that signs events URL tokens; every
    instance behind one load balancer needs the same (unset = random per process)"""
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
    allowed_origins: list[str] = []
    """origins (`https://app.example`) whose pages may call the gateway (`*` for any);
    empty = same origin only"""
    allow_credentials: bool = False
    """let those pages send cookies or HTTP auth (never with `*`)"""

    @model_validator(mode="after")
    def _no_wildcard_credentials(self) -> CORSSettings:
        if self.allow_credentials and "*" in self.allowed_origins:
            raise ValueError("allow_credentials cannot be used with the origin '*'")
        return self


class SimulatorSettings(_Section):
    enabled: bool | None = None
    """serve the simulator at `/simulator` in the gateway's own process; `null` = only
    while an upstream uses it (`base_url: null`); with `auth.mode` other than `none` it
    answers only the gateway itself (docs/simulator.md)"""
    tokens: int = Field(default=48, ge=0)
    """answer length when a request does not choose"""
    token_delay: Seconds = Field(default=0.04, ge=0)
    """pause before each token when a request does not choose"""
    max_tokens: int = Field(default=100_000, gt=0)
    """most tokens one request's directive may ask for (400 above): these caps keep any
    request from holding the event loop or the memory"""
    max_size: int = Field(default=100_000, gt=0)
    """most characters per token (`size=`)"""
    max_answer_chars: int = Field(default=16_000_000, gt=0)
    """most characters in one answer (tokens times size)"""
    max_token_delay: Seconds = Field(default=60.0, ge=0)
    """longest pause before each token (`delay_ms=`)"""


class WebSettings(_Section):
    enabled: bool = True
    """serve the browser frontend at `/`"""
    directory: str | None = None
    """its folder; `null` = the `web/` that ships with the gateway"""


class MetricsSettings(_Section):
    enabled: bool = True
    """serve Prometheus metrics at `/metrics` (docs/observability.md)"""
    port: int | None = Field(default=None, ge=0, le=65535)
    """serve `/metrics` on this port only, not on the gateway's; `null` = the gateway's
    port"""
    host: str | None = None
    """address of `metrics.port`; `null` = `server.host`"""
    multiprocess_dir: str | None = None
    """with `sse-gateway serve --workers N`: an empty directory all workers write their
    metrics to, so `/metrics` adds them up (other process managers must set
    `PROMETHEUS_MULTIPROC_DIR` to the same); empty it before each start"""


class LoggingSettings(_Section):
    format: Literal["console", "json"] = "console"
    """`console` (readable lines) or `json` (one JSON object per line)"""
    content: bool = False
    """log each stream's prompt and completion (in its `stream finished` line)"""


class Settings(_Section):
    """The whole configuration. `Settings(...)` is what it is given; `load_settings`
    reads the file and the environment."""

    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    routes: dict[str, list[RouteUpstream]] = {}
    """model name → list of upstreams (each with the keys of `upstream`; `retries`
    defaults to 0), tried in order before the first token; `upstream` stays the route
    of `upstream.model` and of requests that name no model (docs/openai.md)"""
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
