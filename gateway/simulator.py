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

import hmac
import json
import secrets
import time
import uuid
from collections import Counter, deque
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.config import Settings, SimulatorSettings
from gateway.scenario import (
    Refused,
    Scenario,
    SimRequest,
    answer,
    completion,
    reasoning,
    tool_calls,
    usage,
)

__all__ = ["Simulator", "simulator_key"]


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
        except Refused as exc:
            return exc.response()
        except ValueError:
            return Refused(400, "the body is not valid JSON").response()
        text = answer(record.prompt, record.scenario)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        tokens = text if limit is None else text[: int(limit)]
        finish = "length" if len(tokens) < len(text) else "stop"
        model = str(body["model"])
        calls = tool_calls(body, record) if record.scenario.tools else []
        if calls and finish == "stop":
            finish = "tool_calls"
        if not record.stream:
            record.tokens_sent, record.outcome = len(tokens), "completed"
            return JSONResponse(completion(model, "".join(tokens), finish, record, calls))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _StreamingAnswer(record, model, tokens, finish, include_usage, calls)

    def _record(self, body: Any, header: str) -> SimRequest:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise Refused(400, "'messages' must be a list")
        if not isinstance(body.get("model"), str):
            raise Refused(400, "'model' is required")
        user = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        content = user[-1].get("content") if user else ""
        prompt = content if isinstance(content, str) else ""
        prompt, scenario = Scenario.of(prompt, header, self.settings)
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
        raise Refused(scenario.status, f"simulated HTTP {scenario.status}", headers)


_UNAUTHORIZED = Refused(401, "this simulator answers only the gateway it runs in")


def simulator_key(settings: Settings) -> str:
    """The key the gateway's upstream client sends to its own `/simulator`: derived from
    the events URL token secret, so every worker of one gateway agrees on it; a random
    one per process when that secret is unset."""
    secret = settings.auth.token_secret
    if secret is None:
        return secrets.token_urlsafe(32)
    message = b"sse-gateway simulator key"
    return hmac.new(secret.get_secret_value().encode(), message, "sha256").hexdigest()


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
        deltas = [self._json({name: text}) for text in reasoning(self.record.prompt, scenario)]
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
                    counts = {"usage": usage(record)}
                    await body(f"data: {self._head}], {json.dumps(counts)[1:]}\n\n".encode())
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
