"""File descriptors left to this process, checked before a new stream starts.

A stream holds two or three sockets (the client's, the upstream's, and with
the built-in simulator its side too). A process that runs out fails in ways
that say nothing about the cause: `accept()` stops, `/healthz` times out,
upstream connects fail as `upstream_unavailable`. Refusing new streams while
fewer than `server.fd_reserve` descriptors are free keeps the running ones
and the health checks working, and says why, in the log and in `/readyz`.
"""

from __future__ import annotations

import logging
import os
import resource

from gateway.errors import OverCapacity

__all__ = ["Descriptors", "limit"]

logger = logging.getLogger("gateway.descriptors")

_OPEN = "/proc/self/fd"  # Linux; elsewhere the check is off


def limit() -> int:
    """The soft limit on open file descriptors (`ulimit -n`, systemd's `LimitNOFILE`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


class Descriptors:
    """Counts open descriptors against the limit; logs when it starts and stops refusing."""

    def __init__(self) -> None:
        self._short = False

    def free(self) -> int | None:
        """Descriptors that can still be opened; None where they cannot be counted."""
        try:
            with os.scandir(_OPEN) as entries:
                in_use = sum(1 for _ in entries)
        except OSError:
            return None
        return limit() - in_use

    def short(self, reserve: int) -> bool:
        """Whether fewer than `reserve` are free (logged once each way)."""
        free = self.free()
        short = free is not None and free < reserve
        if short and not self._short:
            logger.warning(
                "refusing new streams: %d of %d file descriptors free, fewer than "
                "server.fd_reserve (%d); raise the limit (LimitNOFILE, ulimit -n) or lower "
                "limits.max_concurrent_streams",
                free,
                limit(),
                reserve,
            )
        elif self._short and not short:
            logger.warning("accepting new streams again: %s file descriptors free", free)
        self._short = short
        return short

    def check(self, reserve: int) -> None:
        """Raise `OverCapacity` (503) while fewer than `reserve` are free."""
        if self.short(reserve):
            message = "The gateway is short of file descriptors; try again shortly."
            raise OverCapacity(message, retry_after=1)
