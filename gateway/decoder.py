"""An incremental Server-Sent Events decoder: bytes in, events out, no I/O.

The one SSE parser of the project, used wherever it reads SSE (the upstream,
the load test). It follows the WHATWG "interpreting an event stream"
algorithm, as httpx-sse's `_decoders.py` does:

- lines end at CRLF, LF or CR, and nowhere else: U+2028, U+2029 and U+0085
  are ordinary characters (`str.splitlines()` would cut a line at each);
- a CR at the end of a chunk may be the first half of a CRLF split between
  two chunks, so a LF at the start of the next one is skipped;
- a UTF-8 BOM at the very start is dropped; lines starting with `:` are
  comments; `data` lines are joined with LF; an `id` containing NUL is
  ignored; `retry` is kept when it is all digits; a block without `data`
  dispatches nothing;
- each line is decoded as UTF-8 once it is complete, so a character whose
  bytes are split between chunks is never cut (invalid bytes become U+FFFD).

Events come out of `feed` as soon as their blank line arrives, whatever the
chunking. A last block without its blank line is never dispatched.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "SSEDecoder"]


@dataclass(frozen=True, slots=True)
class Event:
    event: str
    data: str
    #: The last event id seen so far (it carries over to later events); None before any.
    id: str | None = None


class SSEDecoder:
    def __init__(self) -> None:
        self._pending = bytearray()  # the start of a line whose end has not arrived
        self._skip_lf = False  # the last chunk ended in CR: a leading LF belongs to it
        self._first_line = True
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        #: The last valid `retry:` value, in milliseconds.
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by `chunk`, in order."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._pending += chunk
            return []
        lines = chunk.split(b"\n")
        if self._pending:
            self._pending += lines[0]
            lines[0] = bytes(self._pending)
        self._pending = bytearray(lines.pop())
        events = []
        for line in lines:
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> Event | None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event(event or "message", "\n".join(data), self._id)
