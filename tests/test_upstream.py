"""What the gateway makes of an upstream that writes unusual or hostile bytes, on every
path a client reads: `/v1/streams`, `/api/stream` (text and SSE) and
`/v1/chat/completions` (streamed and not, read with the `openai` SDK).

Raw UTF-8 comes from the simulator (`utf8=1`); values the simulator never sends
come from a scripted upstream that writes exact bytes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import httpx_sse
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import create, marker, read_events, run_server, text_of

pytestmark = pytest.mark.stores("memory")


def strict(data: str) -> Any:
    """Parse JSON as a strict parser would: `NaN` and `Infinity` are errors."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON: {data}")

    return json.loads(data, parse_constant=refuse)


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client", max_retries=0, timeout=10)


def every_path(client: httpx.Client, url: str, prompt: str) -> dict[str, str]:
    """The answer's text as each kind of client reads it (each path must end well)."""
    texts: dict[str, str] = {}
    events = read_events(client, create(client, url, prompt))
    assert events[-1].event == "done", events[-1].data
    for event in events:
        strict(event.data)
    texts["/v1/streams"] = text_of(events)

    body = {"messages": [{"role": "user", "content": prompt}]}
    response = client.post(f"{url}/api/stream", json=body)
    assert response.status_code == 200, response.text
    texts["/api/stream text"] = response.content.decode("utf-8")

    headers = {"Accept": "text/event-stream"}
    with httpx_sse.connect_sse(
        client, "POST", f"{url}/api/stream", json=body, headers=headers
    ) as s:
        sse = [event for event in s.iter_sse() if event.data]
    assert sse[-1].event == "done", sse[-1].data
    texts["/api/stream sse"] = text_of(sse)

    with sdk(url) as openai_client:
        messages: Any = [{"role": "user", "content": prompt}]
        stream = openai_client.chat.completions.create(
            model="sim-1", messages=messages, stream=True
        )
        texts["chat streamed"] = "".join(
            chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
        )
        completion = openai_client.chat.completions.create(model="sim-1", messages=messages)
        texts["chat"] = completion.choices[0].message.content or ""
    return texts


# -- raw UTF-8 ------------------------------------------------------------------


def test_raw_utf8_json_passes_byte_for_byte_on_every_path(url, client):
    """U+2028, U+2029 and U+0085 end lines for `str.splitlines()`, not for SSE."""
    text = f'{marker()} a\u2028b\u2029c\u0085d é 😀 中文 \r x\n y \r\n z \t "q" \\ end '
    texts = every_path(client, url, text + "[[sim echo=1 utf8=1 chunk=2]]")
    assert texts == dict.fromkeys(texts, text)


# -- a scripted upstream ------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    fields = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return json.dumps({**fields, "choices": choices, **extra})


def sse(*payloads: str) -> bytes:
    return b"".join(b"data: " + payload.encode() + b"\n\n" for payload in payloads)


ROLE = chunk({"role": "assistant", "content": ""})
STOP = chunk({}, "stop")
DONE = "[DONE]"

#: The stream the scripted upstream writes for a prompt containing the key.
SCRIPTS: dict[str, bytes] = {
    "nan-usage": sse(
        ROLE,
        chunk({"content": "hi"}),
        STOP,
        chunk(usage={"prompt_tokens": 1, "completion_tokens": 1}).replace("1}", "NaN}"),
        DONE,
    ),
    "huge-usage": sse(
        ROLE, chunk({"content": "hi"}), STOP, chunk(usage={"prompt_tokens": "X"}), DONE
    ).replace(b'"X"', b"1e999"),
    "lone-surrogate": sse(ROLE, chunk({"content": "a\ud800b"}), STOP, DONE),
    "bad-tool-calls": sse(ROLE, chunk({"tool_calls": [{"index": 0, "function": "f"}]}), DONE),
    "multi-line-data": (
        b'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk",\n'
        b'data: "created": 1, "model": "m",\n'
        b'data: "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}\n\n'
    )
    + sse(STOP, DONE),
}


CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
#: Prompts the scripted upstream received.
RECEIVED: list[str] = []


async def scripted(request: Request) -> Response:
    """An OpenAI-compatible upstream that streams `SCRIPTS[key]` for a prompt holding key,
    or answers 400 `context_length_exceeded` to a prompt holding `too-long`."""
    prompt = (await request.json())["messages"][-1]["content"]
    RECEIVED.append(prompt)
    if "too-long" in prompt:
        return JSONResponse(CONTEXT_ERROR, status_code=400)
    script = next(value for key, value in SCRIPTS.items() if key in prompt)
    return Response(script, media_type="text/event-stream")


@pytest.fixture(scope="module")
def scripted_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", scripted, methods=["POST"])])
    with run_server(app) as url:
        yield url


@pytest.fixture
def hostile(gateway, scripted_url):
    return gateway(upstream={"base_url": f"{scripted_url}/v1", "retries": 0}).url


@pytest.mark.parametrize("key", ["nan-usage", "huge-usage"])
def test_non_finite_usage_never_reaches_a_client_as_invalid_json(hostile, client, key):
    texts = every_path(client, hostile, key)  # strict JSON on /v1/streams
    assert texts == dict.fromkeys(texts, "hi")
    done = read_events(client, create(client, hostile, key))[-1]
    assert strict(done.data)["usage"] is None
    raw = client.post(
        f"{hostile}/v1/chat/completions",
        json={"model": "sim-1", "messages": [{"role": "user", "content": key}], "stream": True},
    )
    for line in raw.text.split("\n"):
        if line.startswith("data: {"):
            strict(line[6:])


def test_a_lone_surrogate_becomes_a_replacement_character_on_every_path(hostile, client):
    texts = every_path(client, hostile, "lone-surrogate")
    assert texts == dict.fromkeys(texts, "a\ufffdb")


def test_malformed_tool_calls_are_an_upstream_error_not_a_500(hostile, client):
    with sdk(hostile) as openai_client, pytest.raises(openai.InternalServerError) as caught:
        openai_client.chat.completions.create(
            model="sim-1", messages=[{"role": "user", "content": "bad-tool-calls"}]
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    events = read_events(client, create(client, hostile, "bad-tool-calls"))
    assert events[-1].event == "error"
    assert strict(events[-1].data)["code"] == "upstream_error"


def test_an_event_over_several_data_lines_is_relayed_as_valid_sse(hostile, client):
    texts = every_path(client, hostile, "multi-line-data")
    assert texts == dict.fromkeys(texts, "hi")


# -- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-5", "99999999"])
def test_an_absurd_retry_after_gives_a_clean_429(gateway, client, value):
    url = gateway(upstream={"retries": 0}).url
    prompt = f"{marker()} [[sim status=429 retry_after={value}]]"
    response = client.post(f"{url}/api/stream", json={"message": prompt})
    assert response.status_code == 429, response.text
    error = strict(response.text)["error"]
    assert error["code"] == "upstream_rate_limited"
    assert 0 <= error.get("retry_after", 0) <= 3600
    assert 1 <= int(response.headers.get("retry-after", "1")) <= 3600  # whole seconds or none

    events = read_events(client, create(client, url, prompt))
    assert strict(events[-1].data)["code"] == "upstream_rate_limited"

    with sdk(url) as openai_client, pytest.raises(openai.RateLimitError):
        openai_client.chat.completions.create(
            model="sim-1", messages=[{"role": "user", "content": prompt}]
        )


def test_the_upstreams_own_error_reaches_the_caller(hostile, client):
    tag = f"too-long {marker()}"
    events = read_events(client, create(client, hostile, tag))
    error = strict(events[-1].data)
    assert (events[-1].event, error["code"]) == ("error", "upstream_bad_request")
    assert error["message"] == CONTEXT_ERROR["error"]["message"]
    assert error["upstream"] == {"status": 400, **CONTEXT_ERROR["error"]}

    response = client.post(f"{hostile}/api/stream", json={"message": tag})
    assert response.status_code == 502
    assert response.json()["error"]["upstream"]["code"] == "context_length_exceeded"

    RECEIVED.clear()
    with openai.OpenAI(base_url=f"{hostile}/v1", api_key="sk-client") as default_retries:
        for stream in (True, False):
            with pytest.raises(openai.BadRequestError) as caught:
                default_retries.chat.completions.create(
                    model="sim-1", messages=[{"role": "user", "content": tag}], stream=stream
                )
            assert caught.value.status_code == 400
            assert caught.value.body == CONTEXT_ERROR["error"]
    assert [prompt for prompt in RECEIVED if prompt == tag] == [tag, tag]  # one request per call


# -- an upstream that breaks HTTP ------------------------------------------------------

#: What the raw upstream writes back, whatever was asked, for a prompt holding the key.
RAW_REPLIES: dict[str, bytes] = {
    "closes-at-once": b"",
    "absurd-header": b"HTTP/1.1 200 OK\r\nX-Absurd: " + b"a" * 100_000 + b"\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "huge-error-page": (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\n"
        b"Content-Length: 8000000\r\n\r\n" + b"<p>down</p>" + b" " * 7_999_989
    ),
}


def raw_reply(conn: socket.socket) -> None:
    """Read one request (headers, then `Content-Length` bytes), answer from RAW_REPLIES;
    a connection closed before that is left alone."""
    with conn:
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            if not (data := conn.recv(65536)):
                return
            request += data
        head, _, body = request.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            if not (data := conn.recv(65536)):
                return
            body += data
        prompt = json.loads(body)["messages"][-1]["content"]
        reply = next(value for key, value in RAW_REPLIES.items() if key in prompt)
        with contextlib.suppress(OSError):  # the gateway may stop reading an error page early
            conn.sendall(reply)


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[str]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=raw_reply, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
        stop.set()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("key", "code", "message"),
    [
        ("closes-at-once", "upstream_unavailable", None),
        ("absurd-header", "upstream_error", None),
        ("not-http", "upstream_error", None),
        ("huge-error-page", "upstream_error", "<p>down</p>"),
    ],
)
def test_an_upstream_that_breaks_http_is_a_clean_error(
    gateway, client, raw_upstream, key, code, message
):
    url = gateway(upstream={"base_url": raw_upstream, "retries": 0}).url
    events = read_events(client, create(client, url, f"{key} {marker()}"))
    assert [event.event for event in events] == ["error"]
    error = strict(events[-1].data)
    assert (error["code"], error["retryable"]) == (code, True)
    if message is not None:
        assert error["message"] == message
        assert error["upstream"] == {"status": 503, "message": message}
