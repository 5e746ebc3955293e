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
import time

from gateway.errors import OverCapacity

__all__ = ["Descriptors", "limit"]

logger = logging.getLogger("gateway.descriptors")

_OPEN = "/proc/self/fd"  # Linux; elsewhere the check is off


def limit() -> int:
    """The soft limit on open file descriptors (`ulimit -n`, systemd's `LimitNOFILE`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


#: Descriptors one new stream may open (client, upstream, simulator), for the estimate.
_PER_STREAM = 3
#: The estimate is counted again at least this often (seconds).
_RECOUNT = 1.0


class Descriptors:
    """Counts open descriptors against the limit; logs when it starts and stops refusing.

    Counting lists `/proc/self/fd`, which costs in proportion to the open streams:
    done for every new stream, a burst of n streams costs O(n²). So while far from
    the limit, `short` estimates instead (each check since the last count may have
    opened `_PER_STREAM`), and counts again when the estimate comes within twice the
    reserve, or a second has passed.
    """

    def __init__(self) -> None:
        self._short = False
        self._counted: int | None = None  # free descriptors at the last count
        self._counted_at = 0.0
        self._checks = 0  # checks since the last count

    def free(self) -> int | None:
        """Descriptors that can still be opened; None where they cannot be counted."""
        try:
            with os.scandir(_OPEN) as entries:
                in_use = sum(1 for _ in entries)
        except OSError:
            return None
        return limit() - in_use

    def _free(self, reserve: int) -> int | None:
        """`free`, or an estimate that is surely above `reserve` while that holds."""
        now = time.monotonic()
        if self._counted is not None and now - self._counted_at < _RECOUNT:
            self._checks += 1
            estimate = self._counted - _PER_STREAM * self._checks
            if estimate > 2 * reserve:
                return estimate
        self._counted, self._counted_at, self._checks = self.free(), now, 0
        return self._counted

    def short(self, reserve: int) -> bool:
        """Whether fewer than `reserve` are free (logged once each way)."""
        free = self._free(reserve)
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
