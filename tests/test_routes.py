"""The stream protocol's endpoints (gateway/routes.py) in-process, with a scripted
upstream: what each answers, status, headers and body. docs/protocol.md is the
contract; the end-to-end files (test_streams, test_api_stream...) run it over sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from gateway import create_app
from gateway.auth import hash_key
from gateway.stores.memory import MemoryStore
from tests.helpers import ScriptedRouter, offline_settings, read_frames

MESSAGES = [{"role": "user", "content": "one two three"}]


@pytest.fixture
def app_client() -> Iterator[TestClient]:
    app = create_app(offline_settings(web={"enabled": False}), router=ScriptedRouter())
    with TestClient(app) as client:
        yield client


def create(client: TestClient, content: str = "one two three") -> tuple[str, str]:
    response = client.post("/v1/streams", json={"messages": [{"role": "user", "content": content}]})
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/streams/{body['id']}/events"
    return body["id"], body["events_url"]


def test_create_then_read_the_whole_stream(app_client: TestClient) -> None:
    stream_id, events_url = create(app_client)
    assert events_url == f"/v1/streams/{stream_id}/events"  # no auth: no token
    frames = read_frames(app_client, events_url)
    assert [(i, e) for i, e, _ in frames] == [
        ("1", "token"),
        ("2", "token"),
        ("3", "token"),
        ("4", "done"),
    ]
    assert "".join(d["text"] for _, e, d in frames if e == "token") == "one two three "
    assert frames[-1][2]["finish_reason"] == "stop"


def test_resume_after_an_id_and_at_the_end(app_client: TestClient) -> None:
    _, events_url = create(app_client)
    read_frames(app_client, events_url)  # to its end
    resumed = app_client.get(events_url, headers={"Last-Event-ID": "2"})
    assert [line for line in resumed.text.splitlines() if line.startswith("id: ")] == [
        "id: 3",
        "id: 4",
    ]
    by_query = read_frames(app_client, f"{events_url}?last_event_id=3")
    assert [(i, e) for i, e, _ in by_query] == [("4", "done")]
    at_end = app_client.get(events_url, headers={"Last-Event-ID": "4"})
    assert (at_end.status_code, at_end.content) == (204, b"")


@pytest.mark.parametrize(
    ("content", "last_event_id"),
    [("slow a b", "5"), ("a b", "abc"), ("a b", "-1"), ("a b", "1" * 30)],
)
def test_an_unusable_last_event_id_is_an_sse_error(
    app_client: TestClient, content: str, last_event_id: str
) -> None:
    """Malformed, or beyond the end of a stream still running (of a finished one: 204)."""
    _, events_url = create(app_client, content)
    answer = app_client.get(events_url, headers={"Last-Event-ID": last_event_id})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in answer.text.split("\n\n") if "event: error" in f]
    assert len(frames) == 1
    data = json.loads(frames[0].split("data: ", 1)[1])
    assert data["code"] == "resume_unavailable"


def test_unknown_streams_are_404(app_client: TestClient) -> None:
    for method in ("GET", "DELETE"):
        path = "/v1/streams/nope/events" if method == "GET" else "/v1/streams/nope"
        answer = app_client.request(method, path)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"


def test_delete_cancels_a_running_stream(app_client: TestClient) -> None:
    stream_id, events_url = create(app_client, "slow one two three four")
    assert app_client.delete(f"/v1/streams/{stream_id}").status_code == 204
    frames = read_frames(app_client, events_url)
    assert (frames[-1][1], frames[-1][2]["code"]) == ("error", "cancelled")
    assert len(frames) < 6  # cut before the five words


def test_api_stream_answers_text_or_sse(app_client: TestClient) -> None:
    text = app_client.post("/api/stream", json={"message": "a b"})
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "a b "
    assert text.headers["x-stream-id"]
    sse = app_client.post(
        "/api/stream", json={"messages": MESSAGES}, headers={"Accept": "text/event-stream"}
    )
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert sse.text.count("event: token") == 3
    assert sse.text.count("event: done") == 1


def test_a_refused_api_stream_is_an_http_error(app_client: TestClient) -> None:
    answer = app_client.post("/api/stream", json={"message": "a", "messages": MESSAGES})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"


def test_health_and_readiness(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_readiness_fails_when_the_store_is_down() -> None:
    class DownStore(MemoryStore):
        async def ready(self) -> bool:
            return False

    config = offline_settings()
    app = create_app(config, store=DownStore(config), router=ScriptedRouter())
    with TestClient(app) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "store" in ready.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/streams", "/api/stream", "/v1/ui/chat"])
def test_a_create_is_refused_for_its_caller_then_its_rate_then_its_body(path: str) -> None:
    """`read_request`'s order: no key is 401 and a caller over their rate is 429 before
    the body is read (a body that is not JSON would be 415)."""
    key = "order-key-5c0e7a91"
    auth = {"mode": "api_key", "api_keys": [hash_key(key)]}
    settings = offline_settings(
        web={"enabled": False}, auth=auth, limits={"requests_per_minute": 1}
    )
    not_json = {"content-type": "text/plain"}
    with TestClient(create_app(settings, router=ScriptedRouter())) as client:
        assert client.post(path, content=b"x", headers=not_json).status_code == 401
        caller = {**not_json, "authorization": f"Bearer {key}"}
        assert client.post(path, content=b"x", headers=caller).status_code == 415
        refused = client.post(path, content=b"x", headers=caller)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
