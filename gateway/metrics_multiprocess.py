"""Metrics of several worker processes: prometheus-client's multiprocess mode.

Every process writes its values to files in one directory and `/metrics`,
whichever worker answers, adds them all up (gauges count live workers only).
prometheus-client takes that directory from `PROMETHEUS_MULTIPROC_DIR` when it
is first imported, so the variable must be set before the process starts:
`sse-gateway serve --workers N` sets it to `metrics.multiprocess_dir` for its
workers. The setting and the variable must name the same directory, or
neither be set, or the app refuses to start: the variable alone would make
`/metrics` show one worker's numbers, the setting alone could not be obeyed.
"""

from __future__ import annotations

import glob
import os
import re

from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values

from gateway.config import ConfigError

__all__ = ["MULTIPROC_ENV", "check_multiprocess_dir", "check_shared_values", "exposition"]

#: prometheus-client's multiprocess directory, read when it is imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db$")


def check_multiprocess_dir(directory: str | None) -> None:
    """`metrics.multiprocess_dir` (`directory`) and PROMETHEUS_MULTIPROC_DIR name the
    same directory, or neither is set; raises `ConfigError` otherwise."""
    exported = os.environ.get(MULTIPROC_ENV)
    if directory is not None and not os.path.isdir(directory):
        raise ConfigError(f"metrics.multiprocess_dir: {directory} is not a directory")
    if exported != directory:
        raise ConfigError(
            f"metrics.multiprocess_dir is {directory or 'not set'} but {MULTIPROC_ENV} is "
            f"{exported or 'not set'}: they must name the same directory (`sse-gateway serve "
            "--workers N` sets the variable for its workers; one process needs neither)"
        )


def check_shared_values(directory: str | None) -> None:
    """In a process that records metrics: as `check_multiprocess_dir`, and with a
    directory, prometheus-client was imported in multiprocess mode."""
    check_multiprocess_dir(directory)
    if directory and values.ValueClass is values.MutexValue:
        raise ConfigError(
            f"metrics.multiprocess_dir: {MULTIPROC_ENV} was set after prometheus_client "
            "was imported; it must be set before the process starts"
        )


def exposition(directory: str) -> bytes:
    """The text Prometheus scrapes: every worker's values in `directory`, added up."""
    _forget_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _forget_dead_workers(directory: str) -> None:
    """Drop the gauges of workers that died without saying so (uvicorn has no hook):
    their streams are gone. Their counters stay, so totals never go backwards."""
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.search(path)
        if match:
            pids.add(int(match.group(1)))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, under another user
