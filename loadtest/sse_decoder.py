"""An incremental Server-Sent Events decoder, fed bytes as they arrive.

The load test times every token, so events must come out the moment their
blank line arrives, whatever the chunking. This follows the WHATWG
"interpreting an event stream" algorithm: lines end in CRLF, LF or CR (a CR
at the end of a chunk may be the first half of a CRLF), comment lines and
`retry:` are skipped, and a block without `data` dispatches nothing. Pure
code without I/O or locust, so the suite can test it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "SSEDecoder"]


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    def __init__(self) -> None:
        self._pending = b""  # an unfinished line
        self._skip_lf = False  # the last chunk ended in CR: a leading LF belongs to it
        self._first_line = True
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by `chunk`, in order."""
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = chunk.endswith(b"\r")
        lines = (self._pending + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = lines.pop()
        events = []
        for line in lines:
            event = self._line(line.decode("utf-8", errors="replace"))
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
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event(event or "message", "\n".join(data), self._id)
