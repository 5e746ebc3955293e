"""Per-caller limits against a real gateway, with each store's counters (memory, Redis),
and the request limits on models and `max_tokens`. A refused request must not
reach the upstream: the simulator never sees its marker."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from redis import Redis

from gateway.auth import Identity, hash_key
from gateway.limits import _key
from tests.helpers import marker, read_events

pytestmark = pytest.mark.stores("memory", "redis")


@pytest.fixture
def keys() -> tuple[str, str, dict[str, Any]]:
    """Two callers' keys and the auth settings; new in each test, since Redis counters
    outlive a test (and a run)."""
    alice, bob = f"alice-{secrets.token_hex(8)}", f"bob-{secrets.token_hex(8)}"
    return alice, bob, {"auth": {"mode": "api_key", "api_keys": [hash_key(alice), hash_key(bob)]}}


def address() -> str:
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


def post(client: httpx.Client, url: str, word: str, key: str | None = None, **extra: Any):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(extra.pop("headers", {}))
    body = {"messages": [{"role": "user", "content": word}], **extra}
    return client.post(f"{url}/v1/streams", json=body, headers=headers)


def test_requests_per_minute_per_caller(client, gateway, simulator, keys):
    ALICE, BOB, API_KEYS = keys
    url = gateway(**API_KEYS, limits={"requests_per_minute": 2}).url
    for _ in range(2):
        assert post(client, url, marker(), ALICE).status_code == 201
    word = marker()
    response = post(client, url, word, ALICE)
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["code"], error["message"]) == ("rate_limited", "At most 2 requests per minute.")
    assert 0 < error["retry_after"] <= 60
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert simulator.sim.find(word) == []
    # /api/stream counts against the same budget; another caller has its own.
    response = client.post(f"{url}/api/stream", json={"message": word}, headers={"X-Auth": ALICE})
    assert response.status_code == 429
    assert post(client, url, marker(), BOB).status_code == 201


def test_concurrent_streams_per_caller_and_the_slot_frees_at_the_end(
    client, gateway, simulator, keys
):
    ALICE, BOB, API_KEYS = keys
    server = gateway(**API_KEYS, limits={"concurrent_streams_per_identity": 1})
    url = server.url
    running = post(client, url, marker() + " [[sim tokens=3 delay_ms=300]]", ALICE)
    assert running.status_code == 201
    word = marker()
    response = post(client, url, word, ALICE)
    assert response.status_code == 429
    assert response.json() == {
        "error": {
            "code": "too_many_streams",
            "message": "At most 1 stream at once.",
            "retry_after": 1,
        }
    }
    assert response.headers["retry-after"] == "1"
    assert simulator.sim.find(word) == []
    assert post(client, url, marker(), BOB).status_code == 201  # Bob has his own slot
    # Once the stream is over (its `done` read), the slot is free again.
    events_url = url + running.json()["events_url"]
    assert [e.event for e in read_events(client, events_url)][-1] == "done"
    again = post(client, url, marker() + " [[sim tokens=1]]", ALICE)
    assert again.status_code == 201, again.text
    # A cancelled stream frees its slot too.
    stream_id = again.json()["id"]
    assert [e.event for e in read_events(client, url + again.json()["events_url"])][-1] == "done"
    slow = post(client, url, marker() + " [[sim tokens=50 delay_ms=200]]", ALICE)
    assert slow.status_code == 201
    headers = {"Authorization": f"Bearer {ALICE}"}
    assert (
        client.delete(f"{url}/v1/streams/{slow.json()['id']}", headers=headers).status_code == 204
    )
    events = read_events(client, url + slow.json()["events_url"])
    assert events[-1].event == "error"
    assert post(client, url, marker(), ALICE).status_code == 201
    assert stream_id != slow.json()["id"]


def test_without_auth_the_caller_is_its_address(client, gateway):
    url = gateway(limits={"requests_per_minute": 1}).url
    # 127.0.0.1 is a trusted proxy by default: X-Forwarded-For names the client.
    first = {"X-Forwarded-For": address()}  # new in each test, as keys are
    assert post(client, url, marker(), headers=first).status_code == 201
    assert post(client, url, marker(), headers=first).status_code == 429
    assert post(client, url, marker(), headers={"X-Forwarded-For": address()}).status_code == 201


def test_forwarded_for_is_ignored_from_untrusted_peers(client, gateway, request, store_name):
    if store_name == "redis":  # the caller is 127.0.0.1 in every run: start from zero
        redis = Redis.from_url(request.getfixturevalue("redis_server").url)
        with redis:
            redis.delete(_key("rate", Identity("address:127.0.0.1")))
    url = gateway(limits={"requests_per_minute": 1}, server={"trusted_proxies": []}).url
    assert post(client, url, marker(), headers={"X-Forwarded-For": address()}).status_code == 201
    response = post(client, url, marker(), headers={"X-Forwarded-For": address()})
    assert response.status_code == 429  # both are 127.0.0.1, whatever they claim


def test_max_tokens_and_allowed_models(client, gateway, simulator):
    limits = {"max_tokens": 100, "allowed_models": ["sim-1"]}
    url = gateway(limits=limits).url
    word = marker()
    response = post(client, url, word, max_tokens=101)
    assert response.status_code == 422
    assert response.json() == {
        "error": {"code": "invalid_request", "message": "max_tokens: at most 100."}
    }
    response = post(client, url, word, model="gpt-4-expensive")
    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "model_not_allowed", "message": "That model is not available."}
    }
    response = client.post(f"{url}/api/stream", json={"message": word, "model": "gpt-4-expensive"})
    assert response.status_code == 400
    assert simulator.sim.find(word) == []
    assert post(client, url, marker(), max_tokens=100, model="sim-1").status_code == 201
    assert post(client, url, marker()).status_code == 201  # the default model


def test_message_length_limit(client, gateway, simulator):
    url = gateway(limits={"max_message_chars": 50}).url
    word = marker()
    response = post(client, url, word + "x" * 50)
    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "invalid_request",
            "message": "messages.0: at most 50 characters of text.",
        }
    }
    assert simulator.sim.find(word) == []


def test_counters_are_shared_between_instances(client, gateway, store_name, keys):
    ALICE, _, API_KEYS = keys
    if store_name == "memory":
        pytest.skip("memory counters belong to one process")
    limits = {"requests_per_minute": 2, "concurrent_streams_per_identity": 1}
    first, second = gateway(**API_KEYS, limits=limits), gateway(**API_KEYS, limits=limits)
    assert (
        post(client, first.url, marker() + " [[sim tokens=3 delay_ms=300]]", ALICE).status_code
        == 201
    )
    response = post(client, second.url, marker(), ALICE)
    assert response.json()["error"]["code"] == "too_many_streams"
    response = post(client, second.url, marker(), ALICE)
    assert response.json()["error"]["code"] == "rate_limited"
