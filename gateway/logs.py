"""Logging: readable lines for a terminal, or one JSON object a line for machines.

Every record carries the `request_id` and `stream_id` of the work it belongs
to, from context variables: the HTTP middleware sets them for a request, and
the relay sets them again in each generation, which runs in the app's task
group rather than in the request that started it.

Nothing logs prompts or answers. As a second line of defence the formatters
mask bearer tokens, `Authorization`/`X-Auth` values, secret-looking query
parameters and the upstream key, and the SDK loggers that would print request
bodies are kept at WARNING.

A console line is one line whatever a client sent: control characters in the
message and fields (a path with `%0a`) are written as escapes, so nobody can
forge a log line.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from gateway.config import LoggingSettings

__all__ = [
    "ConsoleFormatter",
    "ContextFilter",
    "JsonFormatter",
    "configure",
    "log_config",
    "redact",
    "request_id",
    "stream_id",
]

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
stream_id: ContextVar[str | None] = ContextVar("stream_id", default=None)

REDACTED = "[REDACTED]"

#: The upstream client's loggers, which print requests and headers at DEBUG.
_QUIET_LOGGERS = ("aiohttp",)

_SECRETS = [
    re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"),
    re.compile(r"(?i)\b(authorization|x-auth[\w-]*|api[-_]?key)(\"?'?\s*[:=]\s*\"?'?)[^\s\"',;&]+"),
    re.compile(
        r"(?i)([?&](?:access_token|token|api_key|apikey|key|auth|password|secret|signature)=)"
        r"[^&\s\"']+"
    ),
]

#: Control characters as Python escapes (`\n`, `\x1b`) in console lines.
_ESCAPES = {code: repr(chr(code))[1:-1] for code in (*range(0x20), 0x7F)}

#: Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI twin of the message
}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with credentials masked."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _SECRETS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRETS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _SECRETS[2].sub(lambda m: f"{m.group(1)}{REDACTED}", text)


class ContextFilter(logging.Filter):
    """Adds the current `request_id` and `stream_id` unless the call passed its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "stream_id", None) is None:
            record.stream_id = stream_id.get()
        return True


class _Formatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's context and `extra=` fields, without the empty ones."""
        return {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD and value is not None
        }

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)


class JsonFormatter(_Formatter):
    """`{"time", "level", "logger", "event", "request_id", "stream_id", ...extra}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **self.fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(entry, default=str))


class ConsoleFormatter(_Formatter):
    """`2025-01-01T12:00:00.000Z INFO gateway.generation: stream finished request_id=ab12 ...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: "
        line += record.getMessage().translate(_ESCAPES)
        for key, value in self.fields(record).items():
            line += f" {key}={str(value).translate(_ESCAPES)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.redact(line)


def log_config(
    settings: LoggingSettings, level: str, secrets: Iterable[str] = ()
) -> dict[str, Any]:
    """A `logging.config.dictConfig` that sends every record (uvicorn's too) to stderr
    in the configured format. Give it to uvicorn as `log_config`, so worker processes
    apply it as well; `secrets` (the upstream key) are masked wherever they appear."""
    formatter = JsonFormatter if settings.format == "json" else ConsoleFormatter
    propagate = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"gateway": {"()": formatter, "secrets": list(secrets)}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "gateway",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            **{name: propagate for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
            **{name: {"level": "WARNING"} for name in _QUIET_LOGGERS},
        },
    }


def configure(settings: LoggingSettings, level: str, secrets: Iterable[str] = ()) -> None:
    """Apply `log_config` to this process."""
    logging.config.dictConfig(log_config(settings, level, secrets))


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
