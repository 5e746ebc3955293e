"""The built-in simulator over real HTTP, driven by the real `openai` SDK (and raw httpx).

The session's simulator answers 8 tokens with no delay unless a request asks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import httpx_sse
import openai
import pytest

from tests.helpers import (
    KEY,
    TIMEOUT,
    WITH_KEYS,
    create,
    marker,
    own_simulator,
    read_events,
    wait_until,
)

MODEL = "sim-1"
NASTY = 'one\ntwo\r\nthree\rfour\n\ndata: fake\nevent: done\nid: 9\n: comment\n"q" \\ 🎉 日本 é\t '


@pytest.fixture
def sdk(simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key="sk-test", base_url=simulator.base_url, max_retries=0, timeout=10.0
    ) as client:
        yield client


@pytest.fixture
def http(simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator.url, timeout=TIMEOUT) as client:
        yield client


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def stream_chunks(client: openai.OpenAI, content: str, **kwargs) -> list:
    with client.chat.completions.create(
        model=MODEL, messages=user(content), stream=True, **kwargs
    ) as stream:
        return list(stream)


def content_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def raw_stream(http: httpx.Client, content: str, **body) -> tuple[httpx.Response, bytes]:
    payload = {"model": MODEL, "messages": user(content), "stream": True, **body}
    with http.stream("POST", "/v1/chat/completions", json=payload) as response:
        return response, response.read()


def only(simulator, m: str):
    (record,) = simulator.sim.find(m)
    return record


# --- the happy path -------------------------------------------------------------


def test_stream_chunk_sequence_with_usage(sdk, simulator):
    m = marker()
    prompt = f"{m} tell me a story [[sim tokens=5]]"
    chunks = stream_chunks(sdk, prompt, stream_options={"include_usage": True})
    assert len(chunks) == 1 + 5 + 1 + 1
    first, tokens, finish, usage = chunks[0], chunks[1:6], chunks[6], chunks[7]

    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert first.choices[0].finish_reason is None
    for chunk in tokens:
        (choice,) = chunk.choices
        assert choice.index == 0
        assert choice.delta.role is None
        assert choice.delta.content
        assert choice.finish_reason is None
    (choice,) = finish.choices
    assert choice.finish_reason == "stop"
    assert choice.delta.content is None
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 5
    assert usage.usage.prompt_tokens == 5  # "<marker> tell me a story", directive removed
    assert usage.usage.total_tokens == 10
    for chunk in chunks[:-1]:
        assert chunk.usage is None
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {MODEL}
    assert len({c.id for c in chunks}) == 1

    record = only(simulator, m)
    assert record.stream is True
    assert (record.tokens_sent, record.outcome) == (5, "completed")
    assert record.prompt == f"{m} tell me a story "


def test_stream_without_usage_has_no_usage_chunk(sdk, simulator):
    m = marker()
    chunks = stream_chunks(sdk, f"{m} [[sim tokens=3]]")
    assert len(chunks) == 1 + 3 + 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks)


def test_raw_stream_ends_with_done(http, simulator):
    m = marker()
    response, body = raw_stream(
        http, f"{m} [[sim tokens=4]]", stream_options={"include_usage": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    assert body.count(b"[DONE]") == 1
    events = list(parse(body))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 1 + 4 + 1 + 1
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-2]] == [None] * 5
    assert only(simulator, m).outcome == "completed"


def parse(body: bytes) -> Iterator[str]:
    """The data of each event, with httpx-sse's decoder."""
    decoder = httpx_sse._decoders.SSEDecoder()
    lines = httpx_sse._decoders.SSELineDecoder()
    for line in [*lines.decode(body.decode()), *lines.flush()]:
        event = decoder.decode(line)
        if event is not None:
            yield event.data


def test_non_stream_completion(sdk, simulator):
    m = marker()
    prompt = f"{m} hello there [[sim tokens=6]]"
    completion = sdk.chat.completions.create(model=MODEL, messages=user(prompt))
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6
    assert completion.usage.prompt_tokens == 3
    assert completion.usage.total_tokens == 9
    # The same prompt streamed gives the same text.
    assert content_of(stream_chunks(sdk, prompt)) == choice.message.content
    first, second = simulator.sim.find(m)
    assert (first.stream, first.tokens_sent, first.outcome) == (False, 6, "completed")
    assert (second.stream, second.tokens_sent, second.outcome) == (True, 6, "completed")


def test_models(sdk):
    models = sdk.models.list()
    assert [model.id for model in models.data] == [MODEL]
    assert models.data[0].object == "model"


def test_models_raw(http):
    response = http.get("/v1/models")
    assert response.status_code == 200
    assert response.json()["object"] == "list"
    assert [m["id"] for m in response.json()["data"]] == [MODEL]


def test_output_is_deterministic_readable_text(sdk):
    m = marker()
    one = content_of(stream_chunks(sdk, f"{m} same prompt"))
    two = content_of(stream_chunks(sdk, f"{m} same prompt"))
    other = content_of(stream_chunks(sdk, f"{m} another prompt"))
    assert one == two
    assert one != other
    # Default of the test simulator: 8 tokens, words separated by spaces, a full sentence.
    assert len(one.split(" ")) == 8
    assert one[0].isupper()
    assert one.endswith(".")
    assert one.replace(".", "").replace(" ", "").isalpha()


def test_token_count_and_default(sdk, simulator):
    m = marker()
    chunks = stream_chunks(sdk, f"{m} [[sim tokens=13]]")
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 13
    chunks = stream_chunks(sdk, f"{m} default length")
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 8
    assert [r.tokens_sent for r in simulator.sim.find(m)] == [13, 8]


def test_zero_tokens(sdk, simulator):
    m = marker()
    chunks = stream_chunks(sdk, f"{m} [[sim tokens=0]]")
    assert len(chunks) == 2
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert content_of(chunks) == ""
    assert only(simulator, m).outcome == "completed"


def test_delay_per_token(sdk):
    m = marker()
    started = time.monotonic()
    stream_chunks(sdk, f"{m} [[sim tokens=3 delay_ms=40]]")
    assert time.monotonic() - started >= 0.12


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_gives_length(sdk, simulator, param):
    m = marker()
    prompt = f"{m} [[sim tokens=10]]"
    full = content_of(stream_chunks(sdk, prompt))
    chunks = stream_chunks(sdk, prompt, stream_options={"include_usage": True}, **{param: 4})
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 4
    assert full.startswith(content_of(chunks))
    assert content_of(chunks) != full

    completion = sdk.chat.completions.create(model=MODEL, messages=user(prompt), **{param: 4})
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == content_of(chunks)
    assert completion.usage.completion_tokens == 4


def test_max_tokens_not_reached_is_stop(sdk):
    m = marker()
    chunks = stream_chunks(sdk, f"{m} [[sim tokens=4]]", max_tokens=4)
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- echo -----------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_echo_returns_the_prompt_minus_the_directive(sdk, simulator, chunk):
    m = marker()
    prompt = f"{m} {NASTY}[[sim echo=1 chunk={chunk}]]{NASTY}"
    expected = f"{m} {NASTY}{NASTY}"
    chunks = stream_chunks(sdk, prompt)
    assert content_of(chunks) == expected
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert all(1 <= len(piece) <= chunk for piece in pieces)
    assert len(pieces) == -(-len(expected) // chunk)
    assert only(simulator, m).tokens_sent == len(pieces)

    completion = sdk.chat.completions.create(model=MODEL, messages=user(prompt))
    assert completion.choices[0].message.content == expected


def test_echo_uses_the_last_user_message(sdk):
    m = marker()
    messages = [
        {"role": "system", "content": "be terse [[sim tokens=1]]"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": f"{m} second\nquestion [[sim echo=1]]"},
    ]
    with sdk.chat.completions.create(model=MODEL, messages=messages, stream=True) as stream:
        assert content_of(list(stream)) == f"{m} second\nquestion "


def test_directive_in_x_simulator_header(sdk, simulator):
    m = marker()
    chunks = stream_chunks(sdk, f"{m} plain prompt", extra_headers={"X-Simulator": "tokens=3"})
    assert len(chunks) == 1 + 3 + 1
    record = only(simulator, m)
    assert record.prompt == f"{m} plain prompt"
    assert record.tokens_sent == 3
    assert record.headers["x-simulator"] == "tokens=3"


def test_echo_from_header(sdk):
    m = marker()
    chunks = stream_chunks(sdk, f"{m} {NASTY}", extra_headers={"X-Simulator": "echo=1 chunk=2"})
    assert content_of(chunks) == f"{m} {NASTY}"


def test_fault_from_header(sdk, simulator):
    m = marker()
    with pytest.raises(openai.InternalServerError):
        stream_chunks(sdk, f"{m} x", extra_headers={"X-Simulator": "status=500"})
    assert only(simulator, m).outcome == "rejected"


# --- HTTP errors before streaming ---------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_status_429_has_retry_after(sdk, simulator, stream):
    m = marker()
    with pytest.raises(openai.RateLimitError) as info:
        if stream:
            stream_chunks(sdk, f"{m} [[sim status=429]]")
        else:
            sdk.chat.completions.create(model=MODEL, messages=user(f"{m} [[sim status=429]]"))
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "1"
    record = only(simulator, m)
    assert (record.outcome, record.tokens_sent) == ("rejected", 0)


def test_status_429_custom_retry_after(sdk):
    m = marker()
    with pytest.raises(openai.RateLimitError) as info:
        stream_chunks(sdk, f"{m} [[sim status=429 retry_after=7]]")
    assert info.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, openai.InternalServerError),
        (401, openai.AuthenticationError),
        (400, openai.BadRequestError),
        (403, openai.PermissionDeniedError),
        (503, openai.InternalServerError),
    ],
)
def test_status_faults(sdk, simulator, status, error):
    m = marker()
    with pytest.raises(error) as info:
        stream_chunks(sdk, f"{m} [[sim status={status}]]")
    assert info.value.status_code == status
    assert "retry-after" not in info.value.response.headers
    assert info.value.message.endswith(f"simulated HTTP {status}")
    record = only(simulator, m)
    assert (record.outcome, record.tokens_sent) == ("rejected", 0)


def test_error_body_is_openai_shaped(http):
    m = marker()
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": user(f"{m} [[sim status=429]]"), "stream": True},
    )
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["message"] == "simulated HTTP 429"
    assert set(error) == {"message", "type", "param", "code"}


def test_times_and_key_fail_only_the_first_requests(sdk, simulator):
    m = marker()
    prompt = f"{m} [[sim status=500 times=1 key={m}]]"
    with pytest.raises(openai.InternalServerError):
        stream_chunks(sdk, prompt)
    assert content_of(stream_chunks(sdk, prompt))
    assert content_of(stream_chunks(sdk, prompt))
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected", "completed", "completed"]


def test_times_two_with_429(sdk, simulator):
    m = marker()
    prompt = f"{m} [[sim status=429 retry_after=0 times=2 key={m}]]"
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            stream_chunks(sdk, prompt)
    assert content_of(stream_chunks(sdk, prompt))
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected", "rejected", "completed"]


def test_sdk_retries_through_a_transient_fault(simulator):
    m = marker()
    with openai.OpenAI(
        api_key="k", base_url=simulator.base_url, max_retries=1, timeout=10.0
    ) as client:
        chunks = stream_chunks(client, f"{m} [[sim status=429 retry_after=0 times=1 key={m}]]")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected", "completed"]


@pytest.mark.parametrize(
    "directive",
    [
        "tokens=abc",
        "tokens=-1",
        "bogus=1",
        "fault=explode",
        "chunk=0",
        "delay_ms=slow",
        "status=x",
        "after=-2",
        "tokens",
    ],
)
def test_bad_directive_is_400(sdk, directive):
    m = marker()
    with pytest.raises(openai.BadRequestError) as info:
        stream_chunks(sdk, f"{m} [[sim {directive}]]")
    assert info.value.status_code == 400
    assert "bad simulator directive" in info.value.message


def test_bad_header_directive_is_400(sdk):
    with pytest.raises(openai.BadRequestError):
        stream_chunks(sdk, f"{marker()} x", extra_headers={"X-Simulator": "nope=1"})


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"model": "sim-1"}',
        b'{"model": "sim-1", "messages": "hi"}',
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        b"[]",
    ],
)
def test_malformed_requests_are_400(http, body):
    response = http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- faults mid-stream ------------------------------------------------------------


def read_until_error(stream) -> tuple[list, BaseException | None]:
    chunks = []
    try:
        for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    return chunks, None


def test_drop_after_n_tokens(sdk, simulator):
    m = marker()
    with sdk.chat.completions.create(
        model=MODEL, messages=user(f"{m} [[sim tokens=8 fault=drop after=3]]"), stream=True
    ) as stream:
        chunks, error = read_until_error(stream)
    assert type(error) is openai.APIConnectionError
    assert len(chunks) == 1 + 3
    assert all(c.choices[0].finish_reason is None for c in chunks)
    record = only(simulator, m)
    assert (record.tokens_sent, record.outcome) == (3, "fault")


def test_drop_at_start(sdk, simulator):
    m = marker()
    with sdk.chat.completions.create(
        model=MODEL, messages=user(f"{m} [[sim fault=drop]]"), stream=True
    ) as stream:
        chunks, error = read_until_error(stream)
    assert type(error) is openai.APIConnectionError
    assert len(chunks) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert only(simulator, m).tokens_sent == 0


def test_drop_raw_bytes_are_cut(http, simulator):
    m = marker()
    payload = {"model": MODEL, "messages": user(f"{m} [[sim fault=drop after=2]]"), "stream": True}
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/chat/completions", json=payload) as response,
    ):
        for piece in response.iter_bytes():
            received += piece
    assert b"[DONE]" not in received
    assert b'"finish_reason": "stop"' not in received
    assert len([d for d in parse(received)]) == 3


def test_stall_times_out_and_client_gone(simulator):
    m = marker()
    with openai.OpenAI(
        api_key="k", base_url=simulator.base_url, max_retries=0, timeout=0.3
    ) as client:
        started = time.monotonic()
        with client.chat.completions.create(
            model=MODEL, messages=user(f"{m} [[sim tokens=8 fault=stall after=2]]"), stream=True
        ) as stream:
            chunks, error = read_until_error(stream)
            record = only(simulator, m)
            # Stalled; the SDK may already have dropped the timed-out connection.
            assert record.outcome in ("fault", "client_gone")
        elapsed = time.monotonic() - started
    assert type(error) is openai.APITimeoutError
    assert len(chunks) == 1 + 2
    assert 0.25 <= elapsed < 5
    assert record.tokens_sent == 2
    wait_until(lambda: record.outcome == "client_gone")


@pytest.mark.anyio
async def test_stall_async_client_gone(simulator):
    m = marker()
    async with openai.AsyncOpenAI(
        api_key="k", base_url=simulator.base_url, max_retries=0, timeout=0.3
    ) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=user(f"{m} [[sim fault=stall after=1]]"), stream=True
        )
        chunks = []
        async with stream:
            with pytest.raises(openai.APITimeoutError):
                async for chunk in stream:
                    chunks.append(chunk)
    assert len(chunks) == 2
    record = only(simulator, m)
    assert record.tokens_sent == 1
    deadline = time.monotonic() + 5
    while record.outcome != "client_gone" and time.monotonic() < deadline:
        await anyio_sleep(0.02)
    assert record.outcome == "client_gone"


async def anyio_sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


def test_client_leaving_mid_stream_is_client_gone(sdk, simulator):
    m = marker()
    with sdk.chat.completions.create(
        model=MODEL, messages=user(f"{m} [[sim tokens=40 delay_ms=20]]"), stream=True
    ) as stream:
        iterator = iter(stream)
        next(iterator)
        next(iterator)
    record = only(simulator, m)
    wait_until(lambda: record.outcome == "client_gone")
    assert record.tokens_sent < 40


def test_malformed_chunk(sdk, simulator):
    m = marker()
    with sdk.chat.completions.create(
        model=MODEL, messages=user(f"{m} [[sim fault=malformed after=2]]"), stream=True
    ) as stream:
        chunks, error = read_until_error(stream)
    assert isinstance(error, json.JSONDecodeError)
    assert len(chunks) == 1 + 2
    record = only(simulator, m)
    assert (record.tokens_sent, record.outcome) == (2, "fault")


def test_no_finish(sdk, http, simulator):
    m = marker()
    prompt = f"{m} [[sim tokens=6 fault=no_finish after=4]]"
    chunks = stream_chunks(sdk, prompt, stream_options={"include_usage": True})
    assert len(chunks) == 1 + 4
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 5
    assert all(c.usage is None for c in chunks)
    _, body = raw_stream(http, prompt)
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    assert b'"finish_reason": "' not in body
    assert [r.outcome for r in simulator.sim.find(m)] == ["fault", "fault"]
    assert [r.tokens_sent for r in simulator.sim.find(m)] == [4, 4]


def test_no_finish_after_all_tokens(sdk, simulator):
    m = marker()
    chunks = stream_chunks(sdk, f"{m} [[sim tokens=3 fault=no_finish after=99]]")
    assert len(chunks) == 1 + 3
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 4
    assert only(simulator, m).outcome == "fault"


def test_eof(sdk, http, simulator):
    m = marker()
    prompt = f"{m} [[sim tokens=6 fault=eof after=3]]"
    chunks = stream_chunks(sdk, prompt)
    assert len(chunks) == 1 + 3
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 4
    response, body = raw_stream(http, prompt)
    assert response.status_code == 200
    assert b"[DONE]" not in body
    assert b'"finish_reason": "' not in body
    assert body.endswith(b"\n\n")
    assert len(list(parse(body))) == 4
    assert [r.outcome for r in simulator.sim.find(m)] == ["fault", "fault"]


# --- the async SDK -------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_sdk_stream(simulator):
    m = marker()
    prompt = f"{m} async [[sim tokens=5]]"
    async with openai.AsyncOpenAI(
        api_key="k", base_url=simulator.base_url, max_retries=0, timeout=10.0
    ) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=user(prompt),
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            chunks = [chunk async for chunk in stream]
        completion = await client.chat.completions.create(model=MODEL, messages=user(prompt))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * 6 + ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5
    assert content_of(chunks) == completion.choices[0].message.content
    assert [r.outcome for r in simulator.sim.find(m)] == ["completed", "completed"]


@pytest.mark.anyio
async def test_async_sdk_drop(simulator):
    m = marker()
    async with openai.AsyncOpenAI(
        api_key="k", base_url=simulator.base_url, max_retries=0, timeout=10.0
    ) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=user(f"{m} [[sim fault=drop after=2]]"), stream=True
        )
        chunks = []
        async with stream:
            with pytest.raises(openai.APIConnectionError) as info:
                async for chunk in stream:
                    chunks.append(chunk)
    assert type(info.value) is openai.APIConnectionError
    assert len(chunks) == 3
    assert only(simulator, m).outcome == "fault"


@pytest.mark.anyio
async def test_async_sdk_rate_limited(simulator):
    m = marker()
    async with openai.AsyncOpenAI(
        api_key="k", base_url=simulator.base_url, max_retries=0, timeout=10.0
    ) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(
                model=MODEL, messages=user(f"{m} [[sim status=429 retry_after=2]]"), stream=True
            )
    assert info.value.response.headers["retry-after"] == "2"


def test_request_records_headers_and_authorization(sdk, simulator):
    m = marker()
    stream_chunks(sdk, f"{m} hi")
    record = only(simulator, m)
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.scenario.tokens == 8
    assert record.scenario.delay == 0


# -- caps and the mount in the gateway ------------------------------------------


@pytest.mark.parametrize(
    "directive",
    ["tokens=1000000000", "size=1000000000", "tokens=5000 size=90000", "delay_ms=100000000"],
)
def test_a_directive_beyond_the_caps_is_refused_before_any_work(sdk, simulator, directive):
    content = f"{marker()} [[sim {directive}]]"
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError):
        stream_chunks(sdk, content)
    assert time.monotonic() - started < 5
    assert simulator.sim.requests[-1].prompt != content  # never recorded


def test_with_auth_on_only_the_gateway_itself_may_call_its_simulator(simulator, client):
    with own_simulator(simulator, **WITH_KEYS) as (url, app):
        completions = f"{url}/simulator/v1/chat/completions"
        body = {"model": MODEL, "messages": user("anonymous [[sim tokens=3]]")}
        for headers in ({}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer x"}):
            assert client.post(completions, json=body, headers=headers).status_code == 401
            assert client.get(f"{url}/simulator/v1/models", headers=headers).status_code == 401
        content = f"{marker()} through the gateway [[sim tokens=3 delay_ms=0]]"
        client.headers["Authorization"] = f"Bearer {KEY}"
        events = read_events(client, create(client, url, content))
    assert [e.event for e in events] == ["token"] * 3 + ["done"]
    assert [r.outcome for r in app.state.simulator.requests] == ["completed"]


def test_the_simulator_is_not_mounted_when_no_upstream_uses_it(gateway, client):
    url = gateway(simulator={"enabled": None}).url
    body = {"model": MODEL, "messages": user("hi")}
    assert client.post(f"{url}/simulator/v1/chat/completions", json=body).status_code == 404
    assert client.get(f"{url}/simulator/v1/models").status_code == 404
