"""The load client: opens streams against one target and reports what it saw, as JSON.

It runs in its own process so its CPU is not counted as the server's. Events
come from the gateway's own SSE decoder; token events are recognised without
parsing their JSON, to keep the client cheap.
"""

import argparse
import asyncio
import json
import re
import sys
import time

import aiohttp
import uvloop

from gateway.decoder import SSEDecoder

#: A chunk with content (json.dumps writes `": "`, pydantic, in LiteLLM, `":"`).
OPENAI_TOKEN = re.compile(r'"content":\s?"(?!")')


class Open:
    """How many responses are open right now, and the most at once."""

    now = 0
    peak = 0


async def one(session: aiohttp.ClientSession, args: argparse.Namespace) -> dict[str, float]:
    prompt = f"bench [[sim tokens={args.tokens} delay_ms={args.delay_ms}]]"
    messages = [{"role": "user", "content": prompt}]
    started = time.perf_counter()
    if args.kind == "openai":
        body = {"model": "sim-1", "messages": messages, "stream": True}
        response = await session.post(f"{args.url}/v1/chat/completions", json=body)
    elif args.kind == "gateway2":
        created = await session.post(f"{args.url}/v1/streams", json={"messages": messages})
        events_url = (await created.json())["events_url"]
        response = await session.get(f"{args.url}{events_url}")
    else:
        headers = {"Accept": "text/event-stream"}
        response = await session.post(args.url, json={"messages": messages}, headers=headers)
    decoder = SSEDecoder()
    Open.now += 1
    Open.peak = max(Open.peak, Open.now)
    try:
        return await read(response, decoder, started, args)
    finally:
        Open.now -= 1


async def read(
    response: aiohttp.ClientResponse, decoder: SSEDecoder, started: float, args: argparse.Namespace
) -> dict[str, float]:
    first = None
    tokens = 0
    done = False
    async with response:
        async for data in response.content.iter_any():
            for event in decoder.feed(data):
                if args.kind == "openai":
                    is_token = OPENAI_TOKEN.search(event.data) is not None
                    done = done or event.data.startswith("[DONE]")
                else:
                    is_token = event.event == "token"
                    done = done or event.event == "done"
                if is_token:
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
    return {"ttft": (first or time.perf_counter()) - started, "tokens": tokens, "ok": done}


async def load(args: argparse.Namespace) -> dict[str, object]:
    """Run one scenario: `streams` streams, at most `concurrency` at a time."""
    Open.now = Open.peak = 0
    limit = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    results: list[dict[str, float]] = []
    failures = 0

    async def run() -> None:
        nonlocal failures
        async with limit:
            try:
                async with asyncio.timeout(args.timeout):  # whatever aiohttp's timeouts cover
                    results.append(await one(session, args))
            except (TimeoutError, aiohttp.ClientError, KeyError):
                failures += 1

    cpu = time.process_time()
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(run() for _ in range(args.streams)))
    wall = time.perf_counter() - started
    return {
        "streams": args.streams,
        "completed": sum(1 for r in results if r["ok"]),
        "failed": failures + sum(1 for r in results if not r["ok"]),
        "tokens": sum(r["tokens"] for r in results),
        "wall": wall,
        "ttft": sorted(r["ttft"] for r in results),
        "client_cpu": time.process_time() - cpu,
        "peak_open": Open.peak,
    }


def main() -> None:
    """One scenario per line of stdin (a JSON object of `load`'s arguments: kind, url,
    streams, concurrency, tokens, delay_ms, timeout), one JSON report per line of
    stdout; the process lives on between them, so its start is paid once."""
    for line in sys.stdin:
        report = uvloop.run(load(argparse.Namespace(**json.loads(line))))
        sys.stdout.buffer.write(json.dumps(report).encode() + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
