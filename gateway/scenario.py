"""What the built-in simulator answers: the directive a request carries and the answer
it makes from it (text, reasoning, tool calls, usage), as plain data.

`gateway.simulator` serves these answers over HTTP; keeping them apart keeps each
module about one thing, and lets tests build answers without a server.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.responses import JSONResponse

from gateway.config import SimulatorSettings

__all__ = [
    "Refused",
    "Scenario",
    "SimRequest",
    "answer",
    "completion",
    "reasoning",
    "tool_calls",
    "usage",
]

Fault = Literal["drop", "stall", "malformed", "no_finish", "eof"]
Outcome = Literal["running", "completed", "client_gone", "fault", "rejected"]

_DIRECTIVE = re.compile(r"\[\[sim\b([^\]]*)\]\]")
_WORDS = (
    "the river carries light across quiet stones while a small boat waits near "
    "the bank and every evening the wind brings news from distant hills where "
    "old trees keep their stories in the bark of patient branches and children "
    "learn to read the clouds before the rain arrives over open fields"
).split()


class Refused(Exception):
    """A request the simulator answers with an OpenAI-style error."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        body = {"error": {"message": self.message, "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass
class Scenario:
    tokens: int
    delay: float
    echo: bool = False
    utf8: bool = False
    reasoning: int = 0
    reasoning_name: Literal["reasoning_content", "reasoning"] = "reasoning_content"
    calls: int = 1
    tools: bool = False
    chunk: int = 3
    size: int | None = None
    status: int | None = None
    retry_after: float = 1.0
    times: int | None = None
    key: str | None = None
    fault: Fault | None = None
    after: int = 0

    @classmethod
    def of(cls, prompt: str, header: str, defaults: SimulatorSettings) -> tuple[str, Scenario]:
        """The prompt without its `[[sim ...]]` directive, and the scenario that directive
        and the `X-Simulator` header ask for."""
        directive = _DIRECTIVE.search(prompt)
        scenario = cls.parse(header + " " + (directive.group(1) if directive else ""), defaults)
        if directive:
            prompt = prompt[: directive.start()] + prompt[directive.end() :]
        return prompt, scenario

    @classmethod
    def parse(cls, text: str, defaults: SimulatorSettings) -> Scenario:
        scenario = cls(tokens=defaults.tokens, delay=defaults.token_delay)
        for pair in text.split():
            name, _, value = pair.partition("=")
            try:
                scenario._set(name, value)
            except (ValueError, KeyError):
                raise Refused(400, f"bad simulator directive: {pair!r}") from None
        scenario._check(defaults)
        return scenario

    def _check(self, caps: SimulatorSettings) -> None:
        """Refuse what would cost more than the caps allow, before any work is done."""
        size = self.size or 16  # a generated word is shorter
        if self.tokens > caps.max_tokens:
            raise Refused(400, f"tokens: at most {caps.max_tokens}")
        if self.size is not None and self.size > caps.max_size:
            raise Refused(400, f"size: at most {caps.max_size}")
        if self.tokens * size > caps.max_answer_chars:
            raise Refused(400, f"tokens x size: at most {caps.max_answer_chars} characters")
        if self.delay > caps.max_token_delay:
            raise Refused(400, f"delay_ms: at most {caps.max_token_delay * 1000:g}")

    def _set(self, name: str, value: str) -> None:
        if name == "delay_ms":
            self.delay = float(value) / 1000
        elif name in ("echo", "tools", "utf8"):
            setattr(self, name, value not in ("0", "false"))
        elif name == "fault":
            if value not in ("drop", "stall", "malformed", "no_finish", "eof"):
                raise ValueError(value)
            self.fault = value  # type: ignore[assignment]
        elif name == "reasoning_name":
            if value not in ("reasoning_content", "reasoning"):
                raise ValueError(value)
            self.reasoning_name = value  # type: ignore[assignment]
        elif name == "key":
            self.key = value
        elif name == "retry_after":
            self.retry_after = float(value)
        elif name in ("tokens", "chunk", "size", "status", "times", "after", "reasoning", "calls"):
            number = int(value)
            if number < 0 or (name in ("chunk", "calls") and number == 0):
                raise ValueError(value)
            setattr(self, name, number)
        else:
            raise KeyError(name)


@dataclass
class SimRequest:
    prompt: str
    scenario: Scenario
    stream: bool
    tokens_sent: int = 0
    outcome: Outcome = "running"
    headers: dict[str, str] = field(default_factory=dict)
    #: The request body as received (every field the gateway passed on).
    body: dict[str, Any] = field(default_factory=dict)


def answer(prompt: str, scenario: Scenario) -> list[str]:
    """The answer as a list of token texts."""
    if scenario.echo:
        step = scenario.chunk
        return [prompt[i : i + step] for i in range(0, len(prompt), step)]
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    tokens: list[str] = []
    sentence = 0
    for index in range(scenario.tokens):
        word = rng.choice(_WORDS)
        if scenario.size:
            word = (word + " ") * (scenario.size // (len(word) + 1) + 1)
            word = word[: scenario.size - 1]
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        if (sentence >= 6 and rng.random() < 0.25) or index == scenario.tokens - 1:
            word += "."
            sentence = 0
        tokens.append(word if index == 0 else " " + word)
    return tokens


def reasoning(prompt: str, scenario: Scenario) -> list[str]:
    """The `reasoning=N` deltas: other words than the answer's, from the same prompt."""
    return answer("reasoning: " + prompt, Scenario(tokens=scenario.reasoning, delay=0))


def tool_calls(body: dict[str, Any], record: SimRequest) -> list[dict[str, str]]:
    """The id and function name of each call `tools=1` makes: the tools offered, in
    turn (`answer` when none is)."""
    tools = body.get("tools") or []
    digest = hashlib.sha256(record.prompt.encode()).hexdigest()[:24]
    calls = []
    for index in range(record.scenario.calls):
        tool = tools[index % len(tools)] if tools else None
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        call_id = f"call_{digest}" if index == 0 else f"call_{digest}_{index}"
        calls.append({"id": call_id, "name": name if isinstance(name, str) else "answer"})
    return calls


def usage(record: SimRequest) -> dict[str, Any]:
    prompt_tokens = len(record.prompt.split())
    counts: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": record.tokens_sent,
        "total_tokens": prompt_tokens + record.tokens_sent,
    }
    if record.scenario.reasoning:
        thought = min(record.scenario.reasoning, record.tokens_sent)
        counts["completion_tokens_details"] = {"reasoning_tokens": thought}
    return counts


def completion(
    model: str, content: str, finish: str, record: SimRequest, calls: list[dict[str, str]]
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if record.scenario.reasoning:
        thought = "".join(reasoning(record.prompt, record.scenario))
        message[record.scenario.reasoning_name] = thought
    if calls:
        arguments = json.dumps({"text": content})
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": arguments},
            }
            for call in calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage(record),
    }
