"""Where the Redis store keeps a stream: five keys with one hash tag (one cluster slot).

`sse:{id}:events` (a Redis Stream whose entry ids are `<sse id>-0`), `meta`,
`lease`, `readers` and `cancel`; their roles are in `gateway.stores.redis`.
"""

from __future__ import annotations

__all__ = ["SIGNALS", "latest_stream_key", "sse_id", "stream_key", "stream_keys"]

#: The one channel of the signals to generating instances (`cancel <id>`, `readers <id>`).
SIGNALS = "sse:signals"


def stream_key(stream_id: str, part: str) -> str:
    return f"sse:{{{stream_id}}}:{part}"


def stream_keys(stream_id: str) -> list[str]:
    """Every key of the stream, in the order the scripts take them (`KEYS[1..5]`)."""
    return [
        stream_key(stream_id, part) for part in ("events", "meta", "lease", "readers", "cancel")
    ]


def latest_stream_key(chat_key: str) -> str:
    """Where a chat's latest stream id is kept (the AI SDK endpoint, `gateway.ui_chat`)."""
    return f"sse:chat:{{{chat_key}}}"


def sse_id(entry_id: str) -> int:
    """The event id of a Redis Stream entry id."""
    return int(entry_id.partition("-")[0])
