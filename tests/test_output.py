"""Every kind of output on `/v1/streams` (reasoning, text, tool calls), the chat
completions input it accepts, and the front door passing every field through."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.helpers import create, marker, read_events, text_of

pytestmark = pytest.mark.stores("memory", "redis")

TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]


def joined(events: list[Any], kind: str) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if e.event == kind)


@pytest.mark.parametrize("name", ["reasoning_content", "reasoning"])
def test_reasoning_longer_than_first_token_then_the_answer(gateway, client, simulator, name):
    url = gateway(upstream={"retries": 0, "timeouts": {"first_token": 0.4}}).url
    tag = marker()
    directive = f"[[sim reasoning=8 reasoning_name={name} tokens=3 delay_ms=100]]"
    events = read_events(client, create(client, url, f"{tag} {directive}"))
    kinds = [e.event for e in events]
    assert kinds == ["reasoning"] * 8 + ["token"] * 3 + ["done"]
    assert [e.id for e in events] == [str(i) for i in range(1, 13)]
    direct = openai.OpenAI(base_url=simulator.base_url, api_key="x", max_retries=0)
    with direct:
        answer = direct.chat.completions.create(
            model="sim-1", messages=[{"role": "user", "content": f"{tag} {directive}"}]
        )
    message = answer.choices[0].message.model_dump()
    assert joined(events, "reasoning") == message[name]
    assert text_of(events) == message["content"]
    usage = json.loads(events[-1].data)["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 8}
    metrics = client.get(f"{url}/metrics").text
    assert 'gateway_usage_tokens_total{kind="reasoning"} 8.0' in metrics
    assert 'gateway_usage_tokens_total{kind="completion"} 11.0' in metrics


def test_parallel_tool_calls_arrive_in_pieces_and_assembled(gateway, client):
    url = gateway(sse={"coalesce_ms": 0}).url
    prompt = f"{marker()} [[sim tools=1 calls=2 tokens=6]]"
    events = read_events(client, create(client, url, prompt, tools=TOOLS))
    calls = [json.loads(e.data) for e in events if e.event == "tool_call"]
    assert len(calls) == 12
    done = json.loads(events[-1].data)
    assert events[-1].event == "done" and done["finish_reason"] == "tool_calls"
    for index, tool in enumerate(("get_weather", "get_time")):
        pieces = [call for call in calls if call["index"] == index]
        assert pieces[0]["name"] == tool and pieces[0]["id"].startswith("call_")
        assert all("id" not in piece for piece in pieces[1:])
        arguments = "".join(piece["arguments"] for piece in pieces)
        assert json.loads(arguments)["text"]
        assert done["tool_calls"][index] == {
            "id": pieces[0]["id"],
            "name": tool,
            "arguments": arguments,
        }


def test_coalescing_joins_only_deltas_of_one_kind_and_call(gateway, client):
    url = gateway(sse={"coalesce_ms": 50}).url
    prompt = f"{marker()} [[sim reasoning=5 tools=1 calls=2 tokens=5 delay_ms=2]]"
    events = read_events(client, create(client, url, prompt, tools=TOOLS))
    uncoalesced = read_events(
        client, create(client, gateway(sse={"coalesce_ms": 0}).url, prompt, tools=TOOLS)
    )
    assert json.loads(events[-1].data) == json.loads(uncoalesced[-1].data)
    assert joined(events, "reasoning") == joined(uncoalesced, "reasoning")
    kinds = [(e.event, json.loads(e.data).get("index")) for e in events[:-1]]
    assert kinds == sorted(kinds, key=lambda kind: (kind[0] != "reasoning", kind[1] or 0))
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]


def test_resume_from_every_id_in_reasoning_and_tool_calls_loses_nothing(gateway, client):
    url = gateway().url
    prompt = f"{marker()} [[sim reasoning=4 tools=1 calls=2 tokens=3]]"
    events_url = create(client, url, prompt, tools=TOOLS)
    whole = read_events(client, events_url)
    for event in whole[:-1]:
        rest = read_events(client, events_url, {"Last-Event-ID": event.id})
        assert [(e.id, e.event, e.data) for e in rest] == [
            (e.id, e.event, e.data) for e in whole[int(event.id) :]
        ]


def test_a_conversation_continuing_after_a_tool_result_is_passed_on(gateway, client, simulator):
    url = gateway().url
    tag = marker()
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": f"{tag} weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": f"{tag} thanks [[sim tokens=3]]"},
    ]
    fields = {
        "tools": TOOLS,
        "tool_choice": "auto",
        "seed": 3,
        "metadata": {"k": "v"},
        "x_vendor": [1],
    }
    response = client.post(f"{url}/v1/streams", json={"messages": messages, **fields})
    assert response.status_code == 201, response.text
    events = read_events(client, f"{url}{response.json()['events_url']}")
    assert events[-1].event == "done"
    (record,) = simulator.sim.find(f"{tag} thanks")
    assert record.body["messages"] == messages
    assert {key: record.body[key] for key in fields} == fields
    assert record.body["stream"] is True
    assert record.body["stream_options"] == {"include_usage": True}


def test_the_front_door_passes_every_field_through(gateway, simulator):
    url = gateway().url
    tag = marker()
    fields: dict[str, Any] = {
        "response_format": {"type": "json_object"},
        "user": "user-7",
        "logprobs": True,
        "top_logprobs": 2,
        "presence_penalty": 0.5,
        "parallel_tool_calls": False,
        "reasoning_effort": "low",
        "n": 1,
        "tools": TOOLS[:1],
    }
    prompt = f"{tag} [[sim reasoning=2 tokens=4]]"
    messages: Any = [{"role": "user", "content": prompt}]
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        through = list(
            client.chat.completions.create(model="sim-1", messages=messages, stream=True, **fields)
        )
    (record,) = simulator.sim.find(tag)
    assert {key: record.body[key] for key in fields} == fields
    with openai.OpenAI(base_url=simulator.base_url, api_key="x", max_retries=0) as direct:
        expected = list(
            direct.chat.completions.create(model="sim-1", messages=messages, stream=True, **fields)
        )

    def deltas(chunks: list[Any]) -> list[Any]:
        return [chunk.choices[0].delta.model_dump() for chunk in chunks if chunk.choices]

    assert deltas(through) == deltas(expected)
    assert any(delta.get("reasoning_content") for delta in deltas(through))


@pytest.mark.parametrize("path", ["/v1/streams", "/api/stream", "/v1/chat/completions"])
def test_limits_hold_for_every_input_shape(gateway, client, simulator, path):
    url = gateway(limits={"max_message_chars": 1000}).url
    tag = marker()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000_000}}
    parts = [{"type": "text", "text": f"{tag} " + "x" * 400} for _ in range(3)]
    bodies = {
        413: [{"role": "user", "content": [{"type": "text", "text": tag}, image]}],
        422: [{"role": "user", "content": parts}],
    }
    for status, messages in bodies.items():
        body: dict[str, Any] = {"messages": messages, "model": "sim-1"}
        response = client.post(f"{url}{path}", json=body)
        expected = 400 if status == 422 and path == "/v1/chat/completions" else status
        assert response.status_code == expected, response.text
    extra = [{"role": "user", "content": tag, "name": "n" * 1001}]
    assert client.post(f"{url}{path}", json={"messages": extra, "model": "sim-1"}).status_code in (
        400,
        422,
    )
    if path == "/api/stream":
        assert client.post(f"{url}{path}", json={"message": "x" * 1001}).status_code == 422
    assert not simulator.sim.find(tag)
