"""Locust users that measure what a reader of sse-gateway feels, token by token.

Each user asks for one answer per task and reads it as it arrives. Besides
locust's own rows for the HTTP requests, every answer is reported under its
flow's name (`/v1/streams`, `/api/stream`, `/v1/chat/completions`) with a
request type of its own, so a row never mixes two quantities:

- `STREAM`: one answer, from sending the first request to its terminal event,
  in ms. A failure here is named by the stream's error code, or
  `no_terminal_event` when the body ended (or broke) without one.
- `TTFT`: time to the first non-empty token, in ms, from the same start.
- `TPOT`: time per output token after the first, (STREAM - TTFT) / (tokens - 1), in ms.
- `ITL`: each gap between two consecutive tokens, in ms.
- `TOKENS`: tokens per answer (the "response time" columns are counts).

TTFT, TPOT, ITL and TOKENS describe answers that ended with `done`, and are
kept out of locust's "Aggregated" row, which stays the HTTP requests plus the
streams. An HTTP error fails its request's row, named by its status and the
gateway's error code (`503 over_capacity`), and no STREAM is reported.
See docs/loadtest.md.
"""

from __future__ import annotations

import json
import random
import time
from argparse import ArgumentParser
from collections.abc import Callable
from http.client import HTTPException
from typing import Any

import gevent
import locust.stats
from locust import FastHttpUser, events, task
from locust.contrib.fasthttp import FastResponse
from locust.env import Environment
from locust.stats import RequestStats

from gateway.decoder import Event, SSEDecoder

MEASUREMENTS = frozenset({"TTFT", "TPOT", "ITL", "TOKENS"})
STREAM_HEADERS = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}

# What an event means to a reader: ("token", text), ("done", ""), ("error", code) or ("", "").
Meaning = tuple[str, str]


@events.init_command_line_parser.add_listener
def _add_options(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--prompt", default="Tell me about server-sent events.", help="user message"
    )
    parser.add_argument(
        "--output-tokens", type=int, default=64, help="answer length asked for (default 64)"
    )
    parser.add_argument(
        "--token-delay-ms",
        type=float,
        default=20.0,
        help="simulator pause before each token, in ms (default 20)",
    )
    parser.add_argument(
        "--think-time",
        type=float,
        default=1.0,
        help="mean pause between a user's answers, in s, ±50%% at random (default 1)",
    )
    parser.add_argument(
        "--model", default="", help="model to ask for (default: the gateway's upstream.model)"
    )
    parser.add_argument(
        "--no-sim-directive",
        action="store_true",
        help="send the prompt as is, without [[sim ...]] (for a gateway on a real model)",
    )
    parser.add_argument(
        "--chat-completions",
        action="store_true",
        help="also run ChatCompletionsUser (/v1/chat/completions, off by default)",
    )


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    _keep_measurements_out_of_total(environment.stats)
    options = environment.parsed_options
    chosen = options is not None and (
        options.chat_completions or "ChatCompletionsUser" in (options.user_classes or [])
    )
    if not chosen:
        environment.user_classes[:] = [
            user for user in environment.user_classes if user is not ChatCompletionsUser
        ]


@events.test_stop.add_listener
def _let_csv_catch_up(environment: Environment, **_kwargs: Any) -> None:
    """Wait for one more write of the CSV files, so they hold the final numbers.

    Locust rewrites them every `CSV_STATS_INTERVAL_SEC`, not at the end: the
    answers finished during `--stop-timeout` would be missing.
    """
    if environment.parsed_options is not None and environment.parsed_options.csv_prefix:
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)


def _keep_measurements_out_of_total(stats: RequestStats) -> None:
    """Log TTFT, TPOT, ITL and TOKENS samples in their own rows only.

    Locust adds every sample to "Aggregated"; token counts and gaps averaged
    with HTTP response times would make that row meaningless. Measurements
    never fail (failures go to STREAM), so only `log_request` needs this.
    """
    log_request = stats.log_request

    def log(method: str, name: str, response_time: int, content_length: int) -> None:
        if method in MEASUREMENTS:
            stats.entries[(name, method)].log(response_time, content_length)
        else:
            log_request(method, name, response_time, content_length)

    stats.log_request = log  # type: ignore[method-assign]


class Answer:
    """One answer's clock: started when its first request is sent, read at every token."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.token_times: list[float] = []
        self.text_bytes = 0
        self.body_bytes = 0

    def token(self, text: str) -> None:
        if text:
            self.token_times.append(time.perf_counter())
            self.text_bytes += len(text.encode())

    def report(self, user: FastHttpUser, flow: str, failure: str | None) -> None:
        """Fire the STREAM sample and, for an answer that ended well, the measurements."""

        def fire(kind: str, value: float, length: int = 0, failure: str | None = None) -> None:
            user.environment.events.request.fire(
                request_type=kind,
                name=flow,
                response_time=value,
                response_length=length,
                exception=failure,
                context={},
            )

        duration = (time.perf_counter() - self.start) * 1000
        fire("STREAM", duration, self.body_bytes, failure)
        if failure is not None or not self.token_times:
            return
        tokens = len(self.token_times)
        ttft = (self.token_times[0] - self.start) * 1000
        fire("TTFT", ttft)
        if tokens > 1:
            fire("TPOT", (duration - ttft) / (tokens - 1))
        for before, after in zip(self.token_times, self.token_times[1:], strict=False):
            fire("ITL", (after - before) * 1000)
        fire("TOKENS", tokens, self.text_bytes)


def _error_code(response: FastResponse) -> str:
    """The `code` of an error body, OpenAI's or the gateway's (docs/protocol.md)."""
    try:
        error = response.json()["error"]
        return str(error.get("code") or error.get("type"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "unexpected status"


def gateway_event(event: Event) -> Meaning:
    """The gateway's protocol (docs/protocol.md): `token`, then `done` or `error`."""
    if event.event == "token":
        return "token", json.loads(event.data)["text"]
    if event.event == "done":
        return "done", ""
    if event.event == "error":
        return "error", json.loads(event.data)["code"]
    return "", ""


def openai_event(event: Event) -> Meaning:
    """OpenAI's chat completion chunks, ended by `data: [DONE]`."""
    if event.data == "[DONE]":
        return "done", ""
    chunk = json.loads(event.data)
    if "error" in chunk:
        error = chunk["error"]
        return "error", str(error.get("code") or error.get("type") or "error")
    choices = chunk.get("choices") or [{}]
    return "token", choices[0].get("delta", {}).get("content") or ""


class StreamUser(FastHttpUser):
    """Shared by the flows: the request body, think time, and reading one stream."""

    abstract = True
    flow: str

    def wait_time(self) -> float:
        return float(self.options.think_time * random.uniform(0.5, 1.5))

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    def messages(self) -> list[dict[str, str]]:
        options = self.options
        prompt = options.prompt
        if not options.no_sim_directive:
            delay = f"{options.token_delay_ms:g}"
            prompt = f"{prompt} [[sim tokens={options.output_tokens} delay_ms={delay}]]"
        return [{"role": "user", "content": prompt}]

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": self.messages(),
            "max_tokens": self.options.output_tokens,
        }
        if self.options.model:
            body["model"] = self.options.model
        return body

    def request(self, method: str, path: str, status: int, **kwargs: Any) -> FastResponse | None:
        """The response when it has `status`; otherwise None, and a failure of its HTTP row
        named by its status and the gateway's error code."""
        with self.client.request(method, path, catch_response=True, **kwargs) as response:
            if response.status_code == status:
                return response
            if response.status_code:  # 0 is no response: locust names the exception
                response.failure(f"{response.status_code} {_error_code(response)}")
        return None

    def read(
        self, response: FastResponse, answer: Answer, meaning: Callable[[Event], Meaning]
    ) -> None:
        """Read `response` to its end, timing tokens as their lines arrive, then report."""
        decoder = SSEDecoder()
        failure: str | None = "no_terminal_event"
        ended = False
        stream = response.stream
        try:
            while line := stream.readline(b"\n"):
                answer.body_bytes += len(line)
                for event in decoder.feed(line):
                    if ended:
                        continue
                    kind, value = meaning(event)
                    if kind == "token":
                        answer.token(value)
                    elif kind in ("done", "error"):
                        ended = True
                        failure = value if kind == "error" else None
        except (OSError, HTTPException) as exc:
            if not ended:
                failure = f"no_terminal_event: {type(exc).__name__}"
        except (ValueError, KeyError, TypeError, AttributeError):
            failure = "malformed_event"
        answer.report(self, self.flow, failure)


class EventSourceUser(StreamUser):
    """What a browser's EventSource does: create the stream, then GET its events."""

    flow = "/v1/streams"

    @task
    def answer(self) -> None:
        answer = Answer()
        created = self.request("POST", "/v1/streams", 201, json=self.body())
        if created is None:
            return
        events_url = created.json()["events_url"]
        name = "/v1/streams/[id]/events"
        response = self.request(
            "GET", events_url, 200, name=name, headers=STREAM_HEADERS, stream=True
        )
        if response is not None:
            self.read(response, answer, gateway_event)


class ApiStreamUser(StreamUser):
    """The seed's endpoint, answered in SSE: `POST /api/stream` with `Accept: text/event-stream`."""

    flow = "/api/stream"

    @task
    def answer(self) -> None:
        answer = Answer()
        body = self.body()
        response = self.request(
            "POST", "/api/stream", 200, json=body, headers=STREAM_HEADERS, stream=True
        )
        if response is not None:
            self.read(response, answer, gateway_event)


class ChatCompletionsUser(StreamUser):
    """OpenAI's streaming chat completions. Off unless `--chat-completions` or named.

    OpenAI requires a `model`: `--model`, else the first one the gateway's
    `GET /v1/models` lists (its `upstream.model`).
    """

    flow = "/v1/chat/completions"
    model = ""

    def on_start(self) -> None:
        self.model = self.options.model
        if not self.model:
            response = self.request("GET", "/v1/models", 200)
            self.model = response.json()["data"][0]["id"] if response is not None else "sim-1"

    def body(self) -> dict[str, Any]:
        body = {**super().body(), "model": self.model}
        return {**body, "stream": True, "stream_options": {"include_usage": True}}

    @task
    def answer(self) -> None:
        answer = Answer()
        body = self.body()
        response = self.request(
            "POST", "/v1/chat/completions", 200, json=body, headers=STREAM_HEADERS, stream=True
        )
        if response is not None:
            self.read(response, answer, openai_event)
