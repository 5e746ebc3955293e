"""`StreamResponse` as plain ASGI: what sse-starlette's response did for it, kept."""

import httpx

from tests.conftest import create, marker


def test_head_answers_the_headers_without_streaming(client, url):
    events_url = create(client, url, f"{marker()} [[sim tokens=100 delay_ms=100]]")  # ~10 s
    response = client.head(events_url, timeout=httpx.Timeout(3.0))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.content == b""
    # The stream itself is untouched: a GET reads it from the start.
    with client.stream("GET", events_url) as stream:
        assert next(stream.iter_lines()) == "retry: 2000"
