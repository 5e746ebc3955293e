"""The OpenAI-compatible front door, read by the official `openai` SDK (sync and async)
and compared with what the same SDK reads from the simulator directly."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import openai
import pytest

from tests.helpers import TIMEOUT, marker, wait_until

TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
]


_OPEN: list[openai.OpenAI] = []


def sync_client(base_url: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=base_url, api_key="sk-client", max_retries=0, timeout=10)
    _OPEN.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _OPEN:
        _OPEN.pop().close()


def async_client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="sk-client", max_retries=0, timeout=10)


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def summary(chunks: list) -> dict:
    """What a stream says, without the ids and times that differ between two runs."""
    deltas = []
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            calls = [
                (c.index, c.id, c.type, c.function.name, c.function.arguments)
                for c in delta.tool_calls or ()
            ]
            deltas.append((delta.role, delta.content, calls, choice.finish_reason))
        if chunk.usage is not None:
            deltas.append(("usage", chunk.usage.model_dump()))
    return {"deltas": deltas, "objects": {chunk.object for chunk in chunks}}


def completion_summary(completion) -> dict:
    message = completion.choices[0].message
    calls = [
        (c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls or ()
    ]
    return {
        "content": message.content,
        "calls": calls,
        "finish": completion.choices[0].finish_reason,
        "usage": completion.usage.model_dump(),
        "object": completion.object,
    }


@pytest.fixture
def gw(gateway):
    return gateway(upstream={"retries": 0})


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool_call"])
def test_sync_stream_equals_the_simulator(gw, simulator, tools):
    prompt = f"{marker()} weather please [[sim tokens=6{' tools=1' if tools else ''}]]"
    arguments = {
        "model": "sim-1",
        "messages": user(prompt),
        "stream": True,
        "stream_options": {"include_usage": True},
        **({"tools": TOOLS, "tool_choice": "auto"} if tools else {}),
    }
    through = list(sync_client(f"{gw.url}/v1").chat.completions.create(**arguments))
    direct = list(sync_client(simulator.base_url).chat.completions.create(**arguments))
    assert summary(through) == summary(direct)
    said = summary(through)["deltas"]
    assert said[-1][0] == "usage" and said[-1][1]["completion_tokens"] == 6
    assert said[-2][3] == ("tool_calls" if tools else "stop")
    if tools:
        pieces = [call[4] for delta in said[:-1] for call in delta[2]]
        assert json.loads("".join(pieces)) == {"text": json.loads("".join(pieces))["text"]}
        assert said[1][2][0][3] == "get_weather"
    else:
        assert len([d for d in said if d[0] != "usage" and d[1]]) == 6


def test_async_stream_equals_the_simulator_without_usage(gw, simulator):
    prompt = f"{marker()} async [[sim tokens=5 tools=1]]"

    async def read(base_url: str) -> list:
        async with async_client(base_url) as client:
            stream = await client.chat.completions.create(
                model="sim-1", messages=user(prompt), stream=True, tools=TOOLS
            )
            return [chunk async for chunk in stream]

    through = asyncio.run(read(f"{gw.url}/v1"))
    direct = asyncio.run(read(simulator.base_url))
    assert summary(through) == summary(direct)
    # Without stream_options the client gets no usage chunk, as from OpenAI.
    assert all(chunk.usage is None for chunk in through)
    assert through[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool_call"])
def test_non_stream_equals_the_simulator_sync_and_async(gw, simulator, tools):
    prompt = f"{marker()} whole [[sim tokens=7{' tools=1' if tools else ''}]]"
    arguments = {"model": "sim-1", "messages": user(prompt), "max_tokens": 50, "seed": 3}
    if tools:
        arguments["tools"] = TOOLS
    direct = completion_summary(
        sync_client(simulator.base_url).chat.completions.create(**arguments)
    )
    through = completion_summary(sync_client(f"{gw.url}/v1").chat.completions.create(**arguments))

    async def read() -> dict:
        async with async_client(f"{gw.url}/v1") as client:
            return completion_summary(await client.chat.completions.create(**arguments))

    assert through == direct
    assert asyncio.run(read()) == direct
    assert direct["finish"] == ("tool_calls" if tools else "stop")
    assert direct["usage"]["completion_tokens"] == 7
    assert direct["object"] == "chat.completion"
    assert (direct["content"] is None) == tools


def test_request_fields_are_passed_through(gw, simulator):
    tag = marker()
    client = sync_client(f"{gw.url}/v1")
    answer = client.chat.completions.create(
        model="sim-1",
        messages=[{"role": "system", "content": "be brief"}, *user(f"{tag} [[sim tokens=9]]")],
        temperature=0.5,
        top_p=0.9,
        max_completion_tokens=4,
        stop=["\n"],
        seed=7,
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 4
    (record,) = simulator.sim.find(tag)
    assert record.outcome == "completed"


def test_the_wire_format_is_openai_sse_ending_in_done(gw):
    body = {"model": "sim-1", "messages": user(f"{marker()} [[sim tokens=3]]"), "stream": True}
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(f"{gw.url}/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    blocks = response.text.split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(block.removeprefix("data: ")) for block in blocks[:-2]]
    assert all(block.startswith("data: {") for block in blocks[:-2])
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, None, "stop"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def test_models_lists_the_routed_models(gateway, simulator):
    route = [{"base_url": simulator.base_url, "model": "sim-1"}]
    gw = gateway(routes={"fast": route, "smart": route})
    models = sync_client(f"{gw.url}/v1").models.list()
    assert [m.id for m in models.data] == ["sim-1", "fast", "smart"]
    assert {m.object for m in models.data} == {"model"}


# --- errors: the SDK exception a user would get from OpenAI ---------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("directive", "exception", "status", "code"),
    [
        ("status=429 retry_after=0", openai.RateLimitError, 429, "upstream_rate_limited"),
        ("status=500", openai.InternalServerError, 502, "upstream_error"),
        ("status=503", openai.InternalServerError, 502, "upstream_error"),
        ("status=401", openai.InternalServerError, 502, "upstream_auth"),
        ("status=403", openai.InternalServerError, 502, "upstream_auth"),
        ("status=400", openai.BadRequestError, 400, None),  # the upstream's own body
        ("status=422", openai.UnprocessableEntityError, 422, None),
        ("status=409", openai.InternalServerError, 502, "upstream_bad_request"),
        ("fault=no_finish", openai.InternalServerError, 502, "upstream_incomplete"),
        ("delay_ms=3000", openai.InternalServerError, 504, "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_upstream_failures_before_the_first_token(
    gateway, directive, exception, status, code, stream
):
    gw = gateway(upstream={"retries": 0, "timeouts": {"first_token": 0.5}})
    client = sync_client(f"{gw.url}/v1")
    with pytest.raises(exception) as info:
        answer = client.chat.completions.create(
            model="sim-1", messages=user(f"{marker()} [[sim {directive}]]"), stream=stream
        )
        list(answer) if stream else None
    assert info.value.status_code == status
    kind = {429: "rate_limit_error", 400: "invalid_request_error", 422: "invalid_request_error"}
    assert info.value.body == {
        "message": info.value.body["message"],
        "type": kind.get(status, "server_error"),
        "param": None,
        "code": code,
    }


def test_unreachable_upstream_is_502_never_401(gateway):
    gw = gateway(upstream={"base_url": f"http://127.0.0.1:{closed_port()}/v1", "retries": 0})
    with pytest.raises(openai.InternalServerError) as info:
        sync_client(f"{gw.url}/v1").chat.completions.create(model="sim-1", messages=user("hi"))
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_unavailable"


@pytest.mark.parametrize("fault", ["drop", "malformed", "stall"])
def test_failure_after_the_first_token_is_an_error_chunk_the_sdk_raises(gateway, simulator, fault):
    gw = gateway(upstream={"retries": 0, "timeouts": {"idle": 0.5}})
    tag = marker()
    stream = sync_client(f"{gw.url}/v1").chat.completions.create(
        model="sim-1", messages=user(f"{tag} [[sim tokens=6 fault={fault} after=2]]"), stream=True
    )
    texts = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content)
    assert not isinstance(info.value, openai.APIStatusError)
    assert info.value.body["code"] == ("upstream_timeout" if fault == "stall" else "upstream_error")
    assert info.value.body["type"] == "server_error"
    assert len([t for t in texts if t]) == 2
    assert len(simulator.sim.find(tag)) == 1


def test_unknown_model_is_openai_404(gw):
    with pytest.raises(openai.NotFoundError) as info:
        sync_client(f"{gw.url}/v1").chat.completions.create(model="gpt-9", messages=user("hi"))
    assert info.value.status_code == 404
    assert info.value.body == {
        "message": "The model 'gpt-9' does not exist or is not routed here.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ],
)
def test_invalid_requests_are_400(gw, extra, where):
    body = {"model": "sim-1", "messages": user("hi"), **extra}
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(f"{gw.url}/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["message"].startswith(where)
    with pytest.raises(openai.BadRequestError):
        sync_client(f"{gw.url}/v1").chat.completions.create(**body)


def test_client_leaving_closes_the_upstream(gw, simulator):
    tag = marker()
    stream = sync_client(f"{gw.url}/v1").chat.completions.create(
        model="sim-1", messages=user(f"{tag} [[sim tokens=200 delay_ms=20]]"), stream=True
    )
    next(iter(stream))
    next(iter(stream))
    stream.close()
    wait_until(lambda: simulator.sim.find(tag)[0].outcome == "client_gone")
    wait_until(lambda: gw.state.generations.active == 0)


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(gateway):
    """A frozen reader is let go after `sse.send_timeout` (0.5 s here), long before
    the upstream's idle limit (5 s in the test settings) would end the answer."""
    server = gateway(sse={"send_timeout": 0.5})
    content = f"{marker()} [[sim tokens=400 size=20000]]"
    body = json.dumps({"model": "sim-1", "stream": True, "messages": user(content)})
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        )
        sock.sendall(request.encode())
        wait_until(lambda: server.state.generations.active == 1)
        # The generation ends (and its upstream is closed) long before `idle`.
        wait_until(lambda: server.state.generations.active == 0, timeout=3)
