"""`/v1/ui/chat` on the wire: the UI message stream's bytes, bad input, chats per caller.
The AI SDK's own client is in tests/test_ai_sdk.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.auth import hash_key
from tests.helpers import marker, wait_until

pytestmark = pytest.mark.stores("memory", "redis")

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"
API_KEYS = {"auth": {"mode": "api_key", "api_keys": [hash_key(ALICE), hash_key(BOB)]}}


def body(content: str, chat_id: str = "chat-1", **extra: Any) -> dict[str, Any]:
    """What `DefaultChatTransport` POSTs for one user message."""
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": content}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message", **extra}


def data_lines(response: httpx.Response) -> list[str]:
    return [
        line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")
    ]


def chunks(lines: list[str]) -> list[dict[str, Any]]:
    assert lines[-1] == "[DONE]" and lines.count("[DONE]") == 1
    return [json.loads(line) for line in lines[:-1]]


def test_the_stream_is_the_sdks_protocol_exactly(client, url):
    with client.stream(
        "POST", f"{url}/v1/ui/chat", json=body("[[sim echo=1 chunk=2]]abcd")
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert response.headers["content-type"].startswith("text/event-stream")
        got = chunks(data_lines(response))
    start, *rest = got
    assert start["type"] == "start" and start["messageId"].startswith("msg-")
    assert rest == [
        {"type": "start-step"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "ab"},
        {"type": "text-delta", "id": "text-1", "delta": "cd"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {
            "type": "finish",
            "finishReason": "stop",
            "messageMetadata": {
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
            },
        },
    ]


def test_an_upstream_failure_is_one_error_chunk_with_the_gateways_text(client, url):
    with client.stream("POST", f"{url}/v1/ui/chat", json=body("x [[sim status=500]]")) as response:
        got = chunks(data_lines(response))
    assert got[-1] == {"type": "error", "errorText": "simulated HTTP 500"}
    assert [c["type"] for c in got] == ["start", "start-step", "error"]


@pytest.mark.parametrize(
    ("payload", "status", "problem"),
    [
        ({"id": "c"}, 422, "messages: Field required"),
        ({"id": "c", "messages": []}, 422, "messages: List should have at least 1 item"),
        ({"messages": body("x")["messages"]}, 422, "id: Field required"),
        (
            {"id": "c", "messages": [{"id": "u", "role": "user", "parts": [{"type": "magic"}]}]},
            422,
            "messages.0.parts.0: unknown part type 'magic'.",
        ),
        (
            {
                "id": "c",
                "messages": [
                    {
                        "id": "a",
                        "role": "assistant",
                        "parts": [
                            {
                                "type": "tool-f",
                                "toolCallId": "nope",
                                "state": "output-available",
                                "output": 1,
                            }
                        ],
                    }
                ],
            },
            422,
            "a tool result for call 'nope', whose input is unknown.",
        ),
        (
            {"id": "c", "messages": [{"id": "t", "role": "tool", "parts": []}]},
            422,
            "messages.0.role",
        ),
    ],
)
def test_bodies_the_transport_would_never_send_are_4xx_naming_the_problem(
    client, url, simulator, payload, status, problem
):
    before = len(simulator.sim.requests)
    response = client.post(f"{url}/v1/ui/chat", json=payload)
    assert response.status_code == status
    assert response.json()["error"]["code"] == "invalid_request"
    assert problem in response.json()["error"]["message"]
    assert len(simulator.sim.requests) == before  # nothing reached the upstream


def test_not_json_is_400_and_another_media_type_is_415(client, url):
    bad = client.post(
        f"{url}/v1/ui/chat", content=b"{", headers={"content-type": "application/json"}
    )
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_json")
    assert client.post(f"{url}/v1/ui/chat", content=b"{}").status_code == 415


def test_an_unknown_chat_is_204_on_resume_and_on_stop(client, url):
    for chat_id in ("never-seen", "with/slash and space", "é"):
        path = f"{url}/v1/ui/chat/{httpx.URL(chat_id)}/stream"
        assert client.get(path).status_code == 204
        assert client.delete(path).status_code == 204


def test_a_chat_belongs_to_its_caller(client, gateway, simulator):
    url = gateway(**API_KEYS).url
    alice, bob = {"Authorization": f"Bearer {ALICE}"}, {"Authorization": f"Bearer {BOB}"}
    m = marker()
    stream = f"{url}/v1/ui/chat/shared-id/stream"
    assert client.post(f"{url}/v1/ui/chat", json=body("x", "shared-id")).status_code == 401
    with client.stream(
        "POST",
        f"{url}/v1/ui/chat",
        json=body(f"{m} [[sim tokens=100 delay_ms=50]]", "shared-id"),
        headers=alice,
    ) as response:
        assert response.status_code == 200
    # Alice's connection is gone; her generation runs on. Bob, with the same chat id, sees nothing.
    assert client.get(stream, headers=bob).status_code == 204
    assert client.delete(stream, headers=bob).status_code == 204
    assert client.get(stream).status_code == 401
    with client.stream("GET", stream, headers=alice) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"text-delta"' in line:
                break  # replayed from the start: Bob's DELETE did not stop it
    assert client.delete(stream, headers=alice).status_code == 204
    (upstream,) = simulator.sim.find(m)
    wait_until(lambda: upstream.outcome == "client_gone")
    assert client.get(stream, headers=alice).status_code == 204
