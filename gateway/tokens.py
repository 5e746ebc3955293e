"""Stream ids bound to their creator, and the short-lived tokens of events URLs.

Both are HMAC-SHA256 under one key (`auth.token_secret_env`, the same on every
instance), so any instance checks them without storing anything:

- a stream id is 24 random bytes and a 12-byte tag of those bytes and the
  creator's identity, `<32 chars><16 chars>` in base64url: `owns` recomputes the
  tag, so only the creator's credentials can read or cancel the stream;
- an events token is `<expiry>.<tag of the stream id and the expiry>`. It opens
  that one stream (an `EventSource` cannot send headers) until the expiry,
  reconnects included, and nothing else; it never carries the caller's key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

__all__ = ["StreamTokens"]

_RANDOM_CHARS = 32  # 24 bytes
_TAG_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class StreamTokens:
    def __init__(self, key: bytes, ttl: float) -> None:
        self._key = key
        self._ttl = ttl

    def _tag(self, *parts: str) -> bytes:
        message = "\0".join(parts).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def new_stream_id(self, owner: str) -> str:
        random = secrets.token_urlsafe(24)
        return random + _b64(self._tag("owner", random, owner)[:_TAG_BYTES])

    def owns(self, stream_id: str, owner: str) -> bool:
        random, tag = stream_id[:_RANDOM_CHARS], stream_id[_RANDOM_CHARS:]
        expected = _b64(self._tag("owner", random, owner)[:_TAG_BYTES])
        return hmac.compare_digest(tag.encode(), expected.encode())

    def issue(self, stream_id: str, now: float | None = None) -> str:
        expiry = str(int((time.time() if now is None else now) + self._ttl))
        return f"{expiry}.{_b64(self._tag('events', stream_id, expiry))}"

    def valid(self, stream_id: str, token: str, now: float | None = None) -> bool:
        expiry, _, tag = token.partition(".")
        if not expiry.isascii() or not expiry.isdigit() or len(expiry) > 12:
            return False
        expected = _b64(self._tag("events", stream_id, expiry))
        if not hmac.compare_digest(tag.encode(), expected.encode()):
            return False
        return int(expiry) > (time.time() if now is None else now)
