"""`RequestMiddleware` at the ASGI level: the `X-Request-ID` a client and the log lines
see, the HTTP metrics' labels, and bodies passed through as they were sent."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import Message, Receive, Scope, Send

from gateway import logs
from gateway.config import MetricsSettings
from gateway.metrics import Metrics
from gateway.middleware import RequestMiddleware

pytestmark = pytest.mark.anyio

WATCHDOG = 5.0


async def request_id(request: Request) -> Response:
    """Answers with the request id every log line of this request carries."""
    return PlainTextResponse(logs.request_id.get() or "")


async def item(request: Request) -> Response:
    return Response(status_code=204)


async def fail(request: Request) -> Response:
    raise RuntimeError("a bug")


async def static(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("file")(scope, receive, send)


def app(metrics: Metrics) -> Starlette:
    routes = [
        Route("/id", request_id),
        Route("/items/{item_id}", item, methods=["GET", "DELETE"]),
        Route("/fail", fail),
        Mount("/static", app=static),
    ]
    return Starlette(routes=routes, middleware=[Middleware(RequestMiddleware, metrics=metrics)])


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(MetricsSettings())


@pytest.fixture
async def client(metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app(metrics), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def requests_counted(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    counted = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "gateway_http_requests_total":
                labels = sample.labels
                counted[labels["route"], labels["method"], labels["status"]] = sample.value
    return counted


async def test_a_well_formed_client_request_id_is_kept_for_the_answer_and_the_logs(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/id", headers={"X-Request-ID": "nginx-req.42:a_b"})
    assert response.headers["x-request-id"] == response.text == "nginx-req.42:a_b"
    assert logs.request_id.get() is None  # reset after the request


@pytest.mark.parametrize("sent", [None, "", "a b", "x" * 129, "id\u00e9", "<script>"])
async def test_otherwise_the_request_gets_a_new_random_id(
    client: httpx.AsyncClient, sent: str | None
) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent.encode("utf-8")}
    first = await client.get("/id", headers=headers)
    second = await client.get("/id", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.text == first.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_metrics_are_labelled_by_route_template_method_and_status(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    await client.get("/items/1")
    await client.get("/items/2")
    await client.delete("/items/3")
    await client.post("/items/4")  # 405 from the router
    await client.get("/nowhere/5")
    await client.get("/static/a/b.css")
    await client.request("BREW", "/items/6")
    await client.get("/fail")
    assert requests_counted(metrics) == {
        ("/items/{item_id}", "GET", "204"): 2,
        ("/items/{item_id}", "DELETE", "204"): 1,
        ("/items/{item_id}", "POST", "405"): 1,
        ("unmatched", "GET", "404"): 1,
        ("/static/{path}", "GET", "200"): 1,
        ("/items/{item_id}", "OTHER", "405"): 1,
        ("/fail", "GET", "500"): 1,
    }


async def test_each_body_message_passes_through_as_it_was_sent(metrics: Metrics) -> None:
    """Nothing is buffered: a streamed body reaches the server message by message."""

    async def body() -> AsyncIterator[bytes]:
        for part in (b"one", b"two", b"three"):
            yield part

    async def stream(request: Request) -> Response:
        return StreamingResponse(body(), media_type="text/plain")

    middleware = RequestMiddleware(Starlette(routes=[Route("/s", stream)]), metrics)
    sent: list[Message] = []
    connected = anyio.Event()  # the client never leaves

    async def receive() -> Message:
        await connected.wait()
        raise AssertionError("not reached")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/s",
        "raw_path": b"/s",
        "query_string": b"",
        "headers": [],
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
    }
    with anyio.fail_after(WATCHDOG):
        await middleware(scope, receive, send)
    bodies = [m.get("body", b"") for m in sent if m["type"] == "http.response.body"]
    assert [b for b in bodies if b] == [b"one", b"two", b"three"]
    assert any(name == b"x-request-id" for name, _ in sent[0]["headers"])


async def test_other_scopes_pass_through_untouched(metrics: Metrics) -> None:
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def receive() -> Message:
        raise AssertionError("not called")

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    scope: Scope = {"type": "lifespan"}
    await RequestMiddleware(inner, metrics)(scope, receive, send)
    assert seen == [scope]
    assert requests_counted(metrics) == {}
