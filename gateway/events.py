"""SSE framing and `Last-Event-ID` parsing: pure functions, no I/O.

Frames end lines with a bare `\\n` (the WHATWG spec allows CR, LF or CRLF, and
some non-browser parsers only split on LF). Data containing line breaks is
split into several `data:` lines, which a parser joins back with `\\n`.
"""

from __future__ import annotations

import re

__all__ = ["HEARTBEAT", "frame", "parse_last_event_id", "retry"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MAX_ID_DIGITS = 18

#: A comment line without the blank line that would end an event: parsers that
#: turn every blank line into an event (httpx-sse, the openai SDK) see nothing.
HEARTBEAT = b": ping\n"


def frame(event: str, data: str, id: int | None = None) -> bytes:
    """One complete event: `id:`, `event:` and `data:` lines and a blank line."""
    if _LINE_BREAK.search(event):
        raise ValueError("an event name cannot contain a line break")
    if "\n" not in data and "\r" not in data:  # the common case, and the hot path
        head = "" if id is None else f"id: {id}\n"
        return f"{head}event: {event}\ndata: {data}\n\n".encode()
    lines = [] if id is None else [f"id: {id}"]
    lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def retry(milliseconds: int) -> bytes:
    """The reconnection delay an EventSource should use."""
    return f"retry: {milliseconds}\n\n".encode()


def parse_last_event_id(value: str | None) -> int | None:
    """The event id a client resumes after; `None` when it sent none.

    Raises `ValueError` for anything that is not a small non-negative integer,
    including ids with CR, LF or NUL and ids too long to be ours.
    """
    if value is None or value == "":
        return None
    if len(value) > _MAX_ID_DIGITS or not value.isascii() or not value.isdigit():
        raise ValueError("malformed Last-Event-ID")
    return int(value)
