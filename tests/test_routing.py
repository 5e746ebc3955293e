"""Routes: model names served by several upstreams, fallback before the first token only,
on every endpoint (`/v1/chat/completions`, `/v1/streams`, `/api/stream`)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway import load_settings
from gateway.config import ConfigError, SimulatorSettings
from gateway.simulator import Simulator
from tests.helpers import (
    TIMEOUT,
    SimServer,
    create,
    labelled,
    marker,
    read_events,
    run_server,
    scrape,
    text_of,
)


@pytest.fixture(scope="module")
def secondary() -> Iterator[SimServer]:
    """A second simulator, so a test can tell which upstream served."""
    sim = Simulator(SimulatorSettings(tokens=8, token_delay=0))
    with run_server(sim.app) as url:
        yield SimServer(url, sim)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pair(gateway, primary_url: str, secondary: SimServer, first_token: float = 5):
    """A gateway whose model `pair` is served by `primary_url`, then `secondary`."""
    routes = {
        "pair": [
            {"base_url": primary_url, "model": "sim-1", "name": "primary"}
            | {"timeouts": {"first_token": first_token, "idle": 5, "total": 30}},
            {"base_url": secondary.base_url, "model": "sim-1", "name": "secondary"},
        ]
    }
    return gateway(routes=routes)


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-client", max_retries=0, timeout=15)


def chat_text(url: str, prompt: str) -> str:
    with sdk(f"{url}/v1") as client:
        stream = client.chat.completions.create(
            model="pair", messages=[{"role": "user", "content": prompt}], stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def direct_text(sim: SimServer, prompt: str) -> str:
    with sdk(sim.base_url) as client:
        answer = client.chat.completions.create(
            model="sim-1", messages=[{"role": "user", "content": prompt}]
        )
    return answer.choices[0].message.content


def routed(url: str) -> dict:
    with httpx.Client(timeout=TIMEOUT) as client:
        return labelled(scrape(client, url), "gateway_routed_streams_total")


def spend(sim: SimServer, prompt: str, times: int) -> None:
    """Use up a `times=N key=K` failure budget on `sim`: each simulator counts its own,
    and only the primary should fail."""
    with sdk(sim.base_url) as client:
        for _ in range(times):
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(
                    model="sim-1", messages=[{"role": "user", "content": prompt}]
                )


@pytest.mark.parametrize(
    ("directive", "primary_outcome"),
    [
        ("status=500 times=1", "rejected"),
        ("status=503 times=1", "rejected"),
        ("status=429 retry_after=0 times=1", "rejected"),
        ("delay_ms=1000 tokens=2", "client_gone"),  # no first token within 0.3 s
    ],
)
def test_primary_refuses_secondary_serves_one_clean_stream(
    gateway, simulator, secondary, directive, primary_outcome
):
    gw = pair(
        gateway, simulator.base_url, secondary, first_token=0.3 if "delay" in directive else 5
    )
    tag = marker()
    prompt = f"{tag} [[sim {directive} key={tag}]]"
    spend(secondary, prompt, 1 if "times" in directive else 0)
    text = chat_text(gw.url, prompt)
    (first,) = simulator.sim.find(tag)
    assert first.outcome == primary_outcome
    assert secondary.sim.find(tag)[-1].outcome == "completed"
    tokens = 2 if "tokens=2" in directive else 8
    assert text == direct_text(secondary, f"{tag} [[sim tokens={tokens}]]")
    assert routed(gw.url) == {
        (("model", "pair"), ("outcome", "done"), ("upstream", "secondary")): 1.0
    }


def test_primary_refusing_connections_falls_back(gateway, secondary):
    gw = pair(gateway, f"http://127.0.0.1:{closed_port()}/v1", secondary)
    tag = marker()
    assert chat_text(gw.url, f"{tag} hello") == direct_text(secondary, f"{tag} hello")
    assert [r.outcome for r in secondary.sim.find(tag)] == ["completed", "completed"]


def test_failure_after_the_first_token_does_not_switch(gateway, simulator, secondary):
    gw = pair(gateway, simulator.base_url, secondary)
    tag = marker()
    texts = []
    with sdk(f"{gw.url}/v1") as client, pytest.raises(openai.APIError) as info:
        stream = client.chat.completions.create(
            model="pair",
            messages=[{"role": "user", "content": f"{tag} [[sim tokens=6 fault=drop after=2]]"}],
            stream=True,
        )
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert info.value.body["code"] == "upstream_error"
    expected = direct_text(simulator, f"{tag} [[sim tokens=6]]")
    first_two = expected.split(" ")[:2]
    assert "".join(texts) == " ".join(first_two)
    assert secondary.sim.find(tag) == []
    assert [r.outcome for r in simulator.sim.find(tag)] == ["fault", "completed"]


def test_every_upstream_failing_reports_the_last_error(gateway, simulator, secondary):
    gw = pair(gateway, simulator.base_url, secondary)
    with sdk(f"{gw.url}/v1") as client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="pair", messages=[{"role": "user", "content": f"{marker()} [[sim status=500]]"}]
        )
    assert info.value.status_code == 502
    assert routed(gw.url) == {
        (("model", "pair"), ("outcome", "upstream_error"), ("upstream", "none")): 1.0
    }


def test_a_non_retryable_failure_does_not_fall_back(gateway, simulator, secondary):
    gw = pair(gateway, simulator.base_url, secondary)
    tag = marker()
    with sdk(f"{gw.url}/v1") as client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="pair", messages=[{"role": "user", "content": f"{tag} [[sim status=401]]"}]
        )
    assert info.value.body["code"] == "upstream_auth"
    assert secondary.sim.find(tag) == []


def test_stream_protocol_and_api_stream_use_the_same_routing(gateway, simulator, secondary):
    gw = pair(gateway, simulator.base_url, secondary)
    tag = marker()
    directive = f"[[sim status=500 times=2 key={tag}]]"
    spend(secondary, f"{tag} {directive}", 2)
    with httpx.Client(timeout=TIMEOUT) as client:
        events = read_events(client, create(client, gw.url, f"{tag} a {directive}", model="pair"))
        body = {"message": f"{tag} b {directive}", "model": "pair"}
        plain = client.post(f"{gw.url}/api/stream", json=body)
        unknown = client.post(
            f"{gw.url}/v1/streams",
            json={"messages": [{"role": "user", "content": "hi"}], "model": "nope"},
        )
    assert events[-1].event == "done"
    assert text_of(events) == direct_text(secondary, f"{tag} a {directive}")
    assert plain.status_code == 200
    assert plain.text == direct_text(secondary, f"{tag} b {directive}")
    assert [r.outcome for r in simulator.sim.find(tag)] == ["rejected", "rejected"]
    assert [r.outcome for r in secondary.sim.find(tag)][-2:] == ["completed", "completed"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


def test_routed_upstream_gets_its_own_model_name_and_key(gateway, secondary):
    tag = marker()
    settings_routes = {"alias": [{"base_url": secondary.base_url, "model": "sim-1"}]}
    gw = gateway(routes=settings_routes)
    with httpx.Client(timeout=TIMEOUT) as client:
        answer = client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "alias", "messages": [{"role": "user", "content": tag}]},
        )
    assert answer.status_code == 200, answer.text
    (record,) = secondary.sim.find(tag)
    assert record.headers["authorization"] == "Bearer sk-test-secret-key"
    assert record.prompt == tag
    assert answer.json()["model"] == "sim-1"


# --- configuration -----------------------------------------------------------------------


def test_routes_load_from_yaml_with_keys_from_the_environment(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "routes:\n"
        "  smart:\n"
        "    - base_url: http://a/v1\n"
        "      api_key_env: A_KEY\n"
        "      model: big-1\n"
        "      timeouts: {first_token: 3}\n"
        "    - base_url: http://b/v1\n"
        "      model: big-2\n"
    )
    settings = load_settings(path, environ={"A_KEY": "sk-a", "OPENAI_API_KEY": "sk-o"})
    first, second = settings.routes["smart"]
    assert (first.base_url, first.model, first.timeouts.first_token) == ("http://a/v1", "big-1", 3)
    assert first.api_key.get_secret_value() == "sk-a"
    assert second.api_key.get_secret_value() == "sk-o"
    assert (first.retries, second.retries) == (0, 0)
    assert settings.upstream.retries == 2


def test_route_keys_are_never_read_from_files(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("routes:\n  m:\n    - base_url: http://a/v1\n      api_key: sk-x\n")
    with pytest.raises(
        ConfigError, match=r"routes\.m\.0\.api_key: secrets are not read from files"
    ):
        load_settings(path, environ={})


def test_routes_from_the_environment_as_json():
    value = json.dumps({"m": [{"base_url": "http://a/v1", "model": "x"}]})
    settings = load_settings("/dev/null", environ={"GATEWAY_ROUTES": value})
    assert settings.routes["m"][0].model == "x"
