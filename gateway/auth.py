"""Who is calling: an identity per request, and who may read or cancel a stream.

`auth.mode` picks how a caller is known (docs/security.md):

- `none`: by its address (the connection's peer, or `X-Forwarded-For` when the
  peer is one of `server.trusted_proxies`; the app's proxy middleware settles
  that before a request gets here). Used only for limits; streams are open.
- `api_key`: `Authorization: Bearer <key>` or `X-Auth: <key>`, whose SHA-256
  must be one of `auth.api_keys` (compared in constant time, all of them).
- `jwt`: the same headers carry a JWT, verified with the configured secret or
  public key; its `sub` is the caller.

Every failure is the same `401` with `WWW-Authenticate` (the log says why,
the client never does), or `403` for a stream that is someone else's. With
auth on, stream ids are bound to their creator and events URLs carry a
stream token (`gateway.tokens`), since an `EventSource` cannot send headers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.datastructures import Address, Headers

from gateway.config import ConfigError, Settings
from gateway.errors import Forbidden, Unauthorized
from gateway.tokens import StreamTokens

__all__ = ["Authenticator", "Identity", "hash_key", "startup_warnings"]

logger = logging.getLogger("gateway.auth")


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: `address:<ip>`, `key:<digest prefix>` or `jwt:<sub>`. Limits count per
    identity; with auth on, a stream belongs to the identity that created it."""

    name: str


def hash_key(key: str) -> str:
    """The digest `auth.api_keys` holds for an API key."""
    return hashlib.sha256(key.encode("latin-1", "replace")).hexdigest()


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        """Loads the JWT keys; `ConfigError` when a key file cannot be used."""
        auth = settings.auth
        self.mode = auth.mode
        self._digests = [digest.encode() for digest in auth.api_keys]
        secret = auth.token_secret
        key = secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
        self.tokens = StreamTokens(key, auth.stream_token_ttl)
        self._jwt = auth.jwt
        self._jwt_keys: dict[str | None, Any] = _jwt_keys(settings) if auth.mode == "jwt" else {}

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def identify(self, headers: Headers, client: Address | None) -> Identity:
        """The caller of a request with these `headers` from `client` (the address the
        proxy middleware settled); `Unauthorized` when its credentials are missing or bad.

        Call it first in every endpoint that starts generations (see `gateway.limits`)."""
        if self.mode == "none":
            return Identity(f"address:{client.host if client else 'unknown'}")
        return self._credentialed(headers)

    def new_stream_id(self, identity: Identity) -> str | None:
        """A stream id bound to `identity` when auth is on (else the relay picks one)."""
        return self.tokens.new_stream_id(identity.name) if self.enabled else None

    def events_url(self, stream_id: str) -> str:
        url = f"/v1/streams/{stream_id}/events"
        return f"{url}?token={self.tokens.issue(stream_id)}" if self.enabled else url

    def check_owner(self, stream_id: str, headers: Headers) -> None:
        """Only the stream's creator may touch it (`DELETE`); open when auth is off."""
        if self.enabled and not self.tokens.owns(stream_id, self._credentialed(headers).name):
            raise Forbidden("That stream belongs to another caller.")

    def check_reader(self, stream_id: str, headers: Headers, token: str | None) -> None:
        """Reading takes the events URL's `token`, or the creator's own credentials."""
        if not self.enabled:
            return
        if token is None:
            self.check_owner(stream_id, headers)
        elif not self.tokens.valid(stream_id, token):
            logger.info("refused: stream token invalid or expired")
            raise Unauthorized(invalid=True)

    def _credentialed(self, headers: Headers) -> Identity:
        """The caller the credentials in `headers` name (auth is on)."""
        credential = _credential(headers)
        if credential is None:
            raise Unauthorized()
        if self.mode == "api_key":
            return self._api_key(credential)
        return self._token(credential)

    def _api_key(self, credential: str) -> Identity:
        digest = hash_key(credential).encode()
        found = False
        for known in self._digests:  # no early exit: the time does not depend on which
            found |= hmac.compare_digest(digest, known)
        if not found:
            logger.info("refused: unknown API key")
            raise Unauthorized(invalid=True)
        return Identity(f"key:{digest[:16].decode()}")

    def _token(self, credential: str) -> Identity:
        settings = self._jwt
        try:
            header = jwt.get_unverified_header(credential)
            algorithm = header.get("alg")
            # One key family is configured; a token naming another algorithm (`none`,
            # or HS256 "signed" with our RSA public key) is refused before any check.
            if algorithm not in settings.algorithms:
                raise jwt.InvalidAlgorithmError(f"algorithm {algorithm!r} not allowed")
            key = self._jwt_keys.get(header.get("kid") if len(self._jwt_keys) > 1 else None)
            if key is None:
                raise jwt.InvalidKeyError("no key for that kid")
            required = ["exp", "sub"] + ["aud"] * bool(settings.audience)
            claims = jwt.decode(
                credential,
                key,
                algorithms=[algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": required + ["iss"] * bool(settings.issuer)},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            logger.info("refused: %s", type(exc).__name__)
            raise Unauthorized(invalid=True) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            logger.info("refused: JWT without a subject")
            raise Unauthorized(invalid=True)
        return Identity(f"jwt:{subject}")


def _credential(headers: Headers) -> str | None:
    header = headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized(invalid=True)
        return value.strip()
    return headers.get("x-auth") or None


def _jwt_keys(settings: Settings) -> dict[str | None, Any]:
    """Verification keys by `kid` (`None`: the only key)."""
    config = settings.auth.jwt
    if config.hmac:
        assert config.secret is not None  # the settings' validator made sure
        return {None: config.secret.get_secret_value().encode()}
    keys: dict[str | None, Any] = {}
    try:
        if config.public_key_file:
            keys[None] = load_pem_public_key(Path(config.public_key_file).read_bytes())
        if config.jwks_file:
            jwks = jwt.PyJWKSet.from_json(Path(config.jwks_file).read_text(encoding="utf-8"))
            keys.update({key.key_id: key.key for key in jwks.keys})
    except (OSError, ValueError, TypeError, jwt.PyJWTError, json.JSONDecodeError) as exc:
        raise ConfigError(f"auth.jwt: cannot load the verification key: {exc}") from None
    if len(keys) == 1:
        keys = {None: next(iter(keys.values()))}
    return keys


def startup_warnings(settings: Settings) -> list[str]:
    """What an operator must hear about before the gateway faces a network."""
    warnings = []
    host = settings.server.host
    if settings.auth.mode == "none" and not _loopback(host):
        warnings.append(
            f"SECURITY: auth.mode is none and the gateway listens on {host}: anyone who "
            "can reach it can spend your upstream quota. Set auth.mode (docs/security.md)."
        )
    if (
        settings.auth.mode != "none"
        and settings.streams.store == "redis"
        and settings.auth.token_secret is None
    ):
        warnings.append(
            f"auth: ${settings.auth.token_secret_env} is not set, so each instance signs "
            "events URLs with its own random key and the others refuse them."
        )
    return warnings


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
