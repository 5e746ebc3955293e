"""gateway/scenario.py: the directive a simulator request carries and the answer made
from it, as plain data (tests/test_simulator.py serves them over HTTP)."""

from __future__ import annotations

import json

import pytest

from gateway.config import SimulatorSettings
from gateway.scenario import Refused, Scenario, SimRequest, answer, completion, tool_calls, usage

DEFAULTS = SimulatorSettings(tokens=8, token_delay=0.04)


def test_the_directive_is_taken_out_of_the_prompt_and_the_header_adds_to_it() -> None:
    prompt, scenario = Scenario.of("hello [[sim tokens=3 delay_ms=5]] world", "echo=1", DEFAULTS)
    assert prompt == "hello  world"
    assert (scenario.tokens, scenario.delay, scenario.echo) == (3, 0.005, True)
    prompt, scenario = Scenario.of("no directive", "", DEFAULTS)
    assert prompt == "no directive"
    assert (scenario.tokens, scenario.delay) == (8, 0.04)


@pytest.mark.parametrize(
    "directive",
    [
        "tokens=-1",
        "chunk=0",
        "calls=0",
        "fault=explode",
        "reasoning_name=x",
        "colour=red",
        "tokens=x",
    ],
)
def test_a_bad_directive_is_a_400_naming_it(directive: str) -> None:
    with pytest.raises(Refused) as refused:
        Scenario.parse(directive, DEFAULTS)
    assert refused.value.status == 400
    assert repr(directive) in refused.value.message
    body = json.loads(refused.value.response().body)
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("directive", "cap"),
    [
        ("tokens=101", "tokens: at most 100"),
        ("size=51", "size: at most 50"),
        ("tokens=100 size=50", "tokens x size: at most 1000"),
        ("delay_ms=2001", "delay_ms: at most 2000"),
    ],
)
def test_what_would_cost_more_than_the_caps_is_refused(directive: str, cap: str) -> None:
    caps = SimulatorSettings(max_tokens=100, max_size=50, max_answer_chars=1000, max_token_delay=2)
    with pytest.raises(Refused, match=cap):
        Scenario.parse(directive, caps)


def test_the_answer_is_the_same_for_the_same_prompt_and_has_its_token_count() -> None:
    scenario = Scenario(tokens=20, delay=0)
    first = answer("a prompt", scenario)
    assert first == answer("a prompt", scenario)
    assert first != answer("another prompt", scenario)
    assert len(first) == 20
    assert first[0][0].isupper() and first[-1].endswith(".")
    assert all(token.startswith(" ") for token in first[1:])


def test_echo_and_size() -> None:
    assert answer("abcdefg", Scenario(tokens=0, delay=0, echo=True, chunk=3)) == ["abc", "def", "g"]
    sized = answer("p", Scenario(tokens=4, delay=0, size=10))
    assert [len(token.removeprefix(" ").removesuffix(".")) for token in sized] == [9] * 4


def test_tool_calls_name_the_offered_tools_in_turn() -> None:
    record = SimRequest("p", Scenario(tokens=1, delay=0, tools=True, calls=3), stream=True)
    offered = {"tools": [{"function": {"name": "f"}}, {"function": {"name": "g"}}]}
    calls = tool_calls(offered, record)
    assert [c["name"] for c in calls] == ["f", "g", "f"]
    assert len({c["id"] for c in calls}) == 3
    assert [c["name"] for c in tool_calls({}, record)] == ["answer"] * 3


def test_usage_and_a_whole_completion() -> None:
    record = SimRequest("two words", Scenario(tokens=5, delay=0, reasoning=2), stream=False)
    record.tokens_sent = 5
    assert usage(record) == {
        "prompt_tokens": 2,
        "completion_tokens": 5,
        "total_tokens": 7,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    body = completion("m", "text", "stop", record, [])
    message = body["choices"][0]["message"]
    assert (body["object"], body["model"], message["content"]) == ("chat.completion", "m", "text")
    assert message["reasoning_content"]
    with_calls = completion("m", "text", "tool_calls", record, [{"id": "c", "name": "f"}])
    call = with_calls["choices"][0]["message"]["tool_calls"][0]
    assert with_calls["choices"][0]["message"]["content"] is None
    assert (call["id"], call["function"]["name"]) == ("c", "f")
    assert json.loads(call["function"]["arguments"]) == {"text": "text"}
