"""A built-in OpenAI-compatible upstream, so the gateway works offline.

It speaks the chat completions wire format (`POST /v1/chat/completions`,
stream and non-stream, and `GET /v1/models`) and answers with deterministic,
readable text derived from the prompt. It is also the upstream of the tests,
load tests and benchmarks, so each request can choose how it behaves with a
directive, either inside the last user message (which works through the
gateway) or in an `X-Simulator` header; both hold `key=value` pairs:

    [[sim tokens=20 delay_ms=50 fault=drop after=5]]

    tokens=N         answer length in tokens
    delay_ms=N       pause before each token
    echo=1           answer with the last user message itself (minus the directive)
    chunk=N          characters per token when echoing (default 3)
    size=N           characters per generated token (volume tests)
    tools=1          call a tool instead of answering: the answer text becomes
                     the call's `{"text": ...}` arguments, streamed in pieces
    reasoning=N      think first: N reasoning deltas before the answer, under
                     `reasoning_content` (or `reasoning_name=reasoning`)
    calls=N          with tools=1: N parallel tool calls (indexes 0..N-1), one
                     after the other, each with its arguments in pieces
    utf8=1           write non-ASCII characters in the stream's JSON as raw UTF-8
                     (as llama.cpp does), U+2028 and all, instead of `\\u` escapes
    status=N         fail before streaming with HTTP N (400, 401, 429, 500, ...)
    retry_after=S    the Retry-After of a 429 (default 1)
    times=N, key=K   fail with `status` only the first N requests that carry key K
    fault=F          after `after` tokens (default 0): drop (connection cut),
                     stall (silence until the client leaves), malformed (a
                     broken JSON chunk), no_finish ([DONE] without a
                     finish_reason), eof (clean end without either)

What one request may ask for is capped (`simulator.max_tokens`, `max_size`,
`max_answer_chars`, `max_token_delay`): a directive beyond a cap is refused with
400 before any work is done.

Inside the gateway (`/simulator`), with `auth.mode` other than `none`, the
simulator answers only the gateway itself: its upstream client sends a key
derived from the events URL token secret (`simulator_key`); anyone else gets
401, so the mount is never an open, unauthenticated upstream.

Every well-formed request is recorded in `Simulator.requests` (newest last) so tests can
see how it ended: `completed`, `client_gone` (the client closed the
connection), `fault` or `rejected`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import secrets
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.config import Settings, SimulatorSettings

__all__ = ["Scenario", "SimRequest", "Simulator", "simulator_key"]

Fault = Literal["drop", "stall", "malformed", "no_finish", "eof"]
Outcome = Literal["running", "completed", "client_gone", "fault", "rejected"]

_DIRECTIVE = re.compile(r"\[\[sim\b([^\]]*)\]\]")
_WORDS = (
    "the river carries light across quiet stones while a small boat waits near "
    "the bank and every evening the wind brings news from distant hills where "
    "old trees keep their stories in the bark of patient branches and children "
    "learn to read the clouds before the rain arrives over open fields"
).split()


class _Rejected(Exception):
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
    def parse(cls, text: str, defaults: SimulatorSettings) -> Scenario:
        scenario = cls(tokens=defaults.tokens, delay=defaults.token_delay)
        for pair in text.split():
            name, _, value = pair.partition("=")
            try:
                scenario._set(name, value)
            except (ValueError, KeyError):
                raise _Rejected(400, f"bad simulator directive: {pair!r}") from None
        scenario._check(defaults)
        return scenario

    def _check(self, caps: SimulatorSettings) -> None:
        """Refuse what would cost more than the caps allow, before any work is done."""
        size = self.size or 16  # a generated word is shorter
        if self.tokens > caps.max_tokens:
            raise _Rejected(400, f"tokens: at most {caps.max_tokens}")
        if self.size is not None and self.size > caps.max_size:
            raise _Rejected(400, f"size: at most {caps.max_size}")
        if self.tokens * size > caps.max_answer_chars:
            raise _Rejected(400, f"tokens x size: at most {caps.max_answer_chars} characters")
        if self.delay > caps.max_token_delay:
            raise _Rejected(400, f"delay_ms: at most {caps.max_token_delay * 1000:g}")

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


class Simulator:
    """The simulator's state and its Starlette app (`Simulator.app`)."""

    def __init__(
        self, settings: SimulatorSettings | None = None, api_key: str | None = None
    ) -> None:
        """`api_key`: when given, requests without `Authorization: Bearer <api_key>` get 401."""
        self.settings = settings or SimulatorSettings()
        self._api_key = api_key
        self.requests: deque[SimRequest] = deque(maxlen=10_000)
        self._failures: Counter[str] = Counter()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def find(self, text: str) -> list[SimRequest]:
        """The recorded requests whose prompt contains `text`."""
        return [r for r in self.requests if text in r.prompt]

    def _authorized(self, request: Request) -> bool:
        if self._api_key is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {self._api_key}".encode())

    async def _models(self, request: Request) -> Response:
        if not self._authorized(request):
            return _UNAUTHORIZED.response()
        model = {"id": "sim-1", "object": "model", "created": 0, "owned_by": "sse-gateway"}
        return JSONResponse({"object": "list", "data": [model]})

    async def _completions(self, request: Request) -> Response | _StreamingAnswer:
        if not self._authorized(request):
            return _UNAUTHORIZED.response()
        try:
            body = await request.json()
            record = self._record(body, request.headers.get("x-simulator", ""))
            record.headers = dict(request.headers)
            record.body = body
            self._maybe_fail(record)
        except _Rejected as exc:
            return exc.response()
        except ValueError:
            return _Rejected(400, "the body is not valid JSON").response()
        text = _answer(record.prompt, record.scenario)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        tokens = text if limit is None else text[: int(limit)]
        finish = "length" if len(tokens) < len(text) else "stop"
        model = str(body["model"])
        calls = _tool_calls(body, record) if record.scenario.tools else []
        if calls and finish == "stop":
            finish = "tool_calls"
        if not record.stream:
            record.tokens_sent, record.outcome = len(tokens), "completed"
            return JSONResponse(_completion(model, "".join(tokens), finish, record, calls))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _StreamingAnswer(record, model, tokens, finish, include_usage, calls)

    def _record(self, body: Any, header: str) -> SimRequest:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise _Rejected(400, "'messages' must be a list")
        if not isinstance(body.get("model"), str):
            raise _Rejected(400, "'model' is required")
        user = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        content = user[-1].get("content") if user else ""
        prompt = content if isinstance(content, str) else ""
        directive = _DIRECTIVE.search(prompt)
        spec = header + " " + (directive.group(1) if directive else "")
        scenario = Scenario.parse(spec, self.settings)
        if directive:
            prompt = prompt[: directive.start()] + prompt[directive.end() :]
        record = SimRequest(prompt, scenario, stream=bool(body.get("stream")))
        self.requests.append(record)
        return record

    def _maybe_fail(self, record: SimRequest) -> None:
        scenario = record.scenario
        if scenario.status is None:
            return
        if scenario.times is not None:
            key = scenario.key or ""
            if self._failures[key] >= scenario.times:
                return
            self._failures[key] += 1
        headers = {"Retry-After": f"{scenario.retry_after:g}"} if scenario.status == 429 else {}
        record.outcome = "rejected"
        raise _Rejected(scenario.status, f"simulated HTTP {scenario.status}", headers)


_UNAUTHORIZED = _Rejected(401, "this simulator answers only the gateway it runs in")


def simulator_key(settings: Settings) -> str:
    """The key the gateway's upstream client sends to its own `/simulator`: derived from
    the events URL token secret, so every worker of one gateway agrees on it; a random
    one per process when that secret is unset."""
    secret = settings.auth.token_secret
    if secret is None:
        return secrets.token_urlsafe(32)
    message = b"sse-gateway simulator key"
    return hmac.new(secret.get_secret_value().encode(), message, "sha256").hexdigest()


def _answer(prompt: str, scenario: Scenario) -> list[str]:
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


def _reasoning(prompt: str, scenario: Scenario) -> list[str]:
    """The `reasoning=N` deltas: other words than the answer's, from the same prompt."""
    return _answer("reasoning: " + prompt, Scenario(tokens=scenario.reasoning, delay=0))


def _tool_calls(body: dict[str, Any], record: SimRequest) -> list[dict[str, str]]:
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


def _usage(record: SimRequest) -> dict[str, Any]:
    prompt_tokens = len(record.prompt.split())
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": record.tokens_sent,
        "total_tokens": prompt_tokens + record.tokens_sent,
    }
    if record.scenario.reasoning:
        reasoning = min(record.scenario.reasoning, record.tokens_sent)
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _completion(
    model: str, content: str, finish: str, record: SimRequest, calls: list[dict[str, str]]
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if record.scenario.reasoning:
        reasoning = "".join(_reasoning(record.prompt, record.scenario))
        message[record.scenario.reasoning_name] = reasoning
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
        "usage": _usage(record),
    }


class _StreamingAnswer:
    """The streamed answer, written as raw ASGI so faults can cut the connection."""

    def __init__(
        self,
        record: SimRequest,
        model: str,
        tokens: list[str],
        finish: str,
        include_usage: bool,
        calls: list[dict[str, str]],
    ) -> None:
        self.record = record
        self.calls = calls
        self.tokens = tokens
        self.finish = finish
        self.include_usage = include_usage
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_sim",
        }
        self._head = json.dumps(head)[:-1] + ', "choices": ['
        self._tail = "]" + (', "usage": null}' if include_usage else "}")

    def _chunk(self, delta: str, finish: str | None = None) -> bytes:
        choice = (
            f'{{"index": 0, "delta": {delta}, "logprobs": null, '
            f'"finish_reason": {json.dumps(finish)}}}'
        )
        return f"data: {self._head}{choice}{self._tail}\n\n".encode()

    def _deltas(self) -> list[str]:
        """Every delta of the answer: the reasoning ones, then the content ones, or with
        `tools=1` the pieces of each call in turn."""
        scenario = self.record.scenario
        name = scenario.reasoning_name
        deltas = [self._json({name: text}) for text in _reasoning(self.record.prompt, scenario)]
        if not self.calls:
            return deltas + [self._json({"content": token}) for token in self.tokens]
        for index in range(len(self.calls)):
            deltas += [
                self._call_delta(index, piece, token) for piece, token in enumerate(self.tokens)
            ]
        return deltas

    def _call_delta(self, index: int, piece: int, token: str) -> str:
        """A piece of call `index`'s arguments (the first piece also names the call,
        the last closes the JSON)."""
        arguments = self._json(token)[1:-1]
        if piece == 0:
            arguments = '{"text": "' + arguments
        if piece == len(self.tokens) - 1:
            arguments += '"}'
        call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if piece == 0:
            call = {"index": index, "id": self.calls[index]["id"], "type": "function"}
            call["function"] = {"name": self.calls[index]["name"], "arguments": arguments}
        return self._json({"tool_calls": [call]})

    def _json(self, value: Any) -> str:
        """JSON text, with non-ASCII characters escaped unless `utf8=1` asks for them raw."""
        return json.dumps(value, ensure_ascii=not self.record.scenario.utf8)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        async with anyio.create_task_group() as race:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.record.outcome = "client_gone"
                race.cancel_scope.cancel()

            race.start_soon(watch_disconnect)
            complete = False
            complete = await self._write(send)
            race.cancel_scope.cancel()
        if complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # Otherwise return without finishing: the server cuts the connection.

    async def _write(self, send: Send) -> bool:
        """Send the answer; returns whether the response may end normally."""
        record, scenario = self.record, self.record.scenario

        async def body(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await body(self._chunk('{"role": "assistant", "content": "", "refusal": null}'))
        for index, delta in enumerate(self._deltas()):
            if scenario.fault and index == scenario.after:
                break
            if scenario.delay:
                await anyio.sleep(scenario.delay)
            await body(self._chunk(delta))
            record.tokens_sent += 1
        else:
            if scenario.fault is None:
                await body(self._chunk("{}", self.finish))
                if self.include_usage:
                    usage = {"usage": _usage(record)}
                    await body(f"data: {self._head}], {json.dumps(usage)[1:]}\n\n".encode())
                await body(b"data: [DONE]\n\n")
                record.outcome = "completed"
                return True
        record.outcome = "fault"
        if scenario.fault == "stall":
            await anyio.sleep_forever()
        if scenario.fault == "malformed":
            await body(b'data: {"choices": [{"index": 0, "delta": {"content": "\n\n')
        if scenario.fault == "no_finish":
            await body(b"data: [DONE]\n\n")
        return scenario.fault != "drop"
