"""Scenario E: what one stored token event costs in the memory store, in bytes,
against the bytes of its SSE frame (finished streams are kept `streams.retention`
for resume, so at many streams this is most of the memory).

Measured in-process with tracemalloc: one stream, `count` token events of the
shape the upstream mock sends, appended through `MemoryStore.append`.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc

from gateway.config import Settings
from gateway.stores.memory import MemoryStore


async def _fill(store: MemoryStore, count: int) -> int:
    frames = 0
    for index in range(count):
        stored = await store.append("s", "token", json.dumps({"text": f" w{index % 100}"}))
        frames += len(stored.frame)
    return frames


def measure(count: int = 10_000) -> dict[str, float]:
    settings = Settings.model_validate({"streams": {"max_events": max(count, 2)}})
    store = MemoryStore(settings)
    asyncio.run(store.create("s"))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        frames = asyncio.run(_fill(store, count))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {
        "events": count,
        "bytes_per_event": used / count,
        "frame_bytes": frames / count,
        "event_to_frame": used / frames,
    }


if __name__ == "__main__":
    print(json.dumps(measure()))
