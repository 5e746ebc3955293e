"""The load client: opens streams against one target and reports what it saw, as JSON.

It runs in its own process so its CPU is not counted as the server's. Events
come from the gateway's own SSE decoder; token events are recognised without
parsing their JSON, to keep the client cheap.
"""

import argparse
import asyncio
import json
import time

import aiohttp

from gateway.decoder import SSEDecoder

OPENAI_TOKEN = '"content": "'
OPENAI_EMPTY = '"content": ""'


async def one(session: aiohttp.ClientSession, args: argparse.Namespace) -> dict[str, float]:
    prompt = f"bench [[sim tokens={args.tokens} delay_ms={args.delay_ms}]]"
    messages = [{"role": "user", "content": prompt}]
    started = time.perf_counter()
    first = None
    tokens = 0
    done = False
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
    async with response:
        async for data in response.content.iter_any():
            for event in decoder.feed(data):
                if args.kind == "openai":
                    is_token = OPENAI_TOKEN in event.data and OPENAI_EMPTY not in event.data
                    done = done or event.data.startswith("[DONE]")
                else:
                    is_token = event.event == "token"
                    done = done or event.event == "done"
                if is_token:
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
    return {"ttft": (first or time.perf_counter()) - started, "tokens": tokens, "ok": done}


async def main(args: argparse.Namespace) -> None:
    limit = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    results: list[dict[str, float]] = []
    failures = 0

    async def run(index: int) -> None:
        nonlocal failures
        await asyncio.sleep(index / args.ramp if args.ramp else 0)
        async with limit:
            try:
                results.append(await one(session, args))
            except (TimeoutError, aiohttp.ClientError, KeyError):
                failures += 1

    cpu = time.process_time()
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(run(i) for i in range(args.streams)))
    wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "streams": args.streams,
                "completed": sum(1 for r in results if r["ok"]),
                "failed": failures + sum(1 for r in results if not r["ok"]),
                "tokens": sum(r["tokens"] for r in results),
                "wall": wall,
                "ttft": sorted(r["ttft"] for r in results),
                "client_cpu": time.process_time() - cpu,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["openai", "sse", "gateway2"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--ramp", type=float, default=0, help="streams started per second")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args))
