"""The browser frontend (`web/`) end to end: real headless Chromium, a real gateway.

Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright. Every wait is
on a DOM condition with a timeout. Where a test needs the network to misbehave
(a dropped connection, bytes arriving one at a time) the browser talks to the
gateway through `Proxy`, a small TCP relay on 127.0.0.1 that the test controls.
Event kinds the gateway cannot produce yet (`reasoning`, `tool_call`) come from
`ScriptedGateway`, whose events URL sends what the test writes, one event at a time.

`UPDATE_SCREENSHOT=1 pytest tests/test_web.py -k screenshot` rewrites
docs/screenshot.png.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import jwt
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Playwright,
    Request,
    expect,
    sync_playwright,
)
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from gateway.auth import hash_key
from gateway.config import SimulatorSettings
from gateway.simulator import Simulator
from gateway.web import DEFAULT_DIRECTORY, WebMount
from tests.helpers import GatewayServer, SimServer, marker, root_handler, run_server, wait_until

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot.png"

expect.set_options(timeout=10_000)

StartGateway = Callable[..., GatewayServer]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@dataclass
class Tab:
    """A fresh page and what it did: requests, console errors, dialogs."""

    page: Page
    requests: list[Request] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    #: Tests that make the network fail on purpose expect Chromium to log it.
    allow_console_errors: bool = False

    def urls(self, method: str = "GET", contains: str = "") -> list[str]:
        return [r.url for r in self.requests if r.method == method and contains in r.url]

    def posted(self, path: str) -> list[Any]:
        return [r.post_data_json for r in self.requests if r.method == "POST" and path in r.url]


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    context.set_default_timeout(10_000)
    page = context.new_page()
    tab = Tab(page)
    page.on("request", lambda request: tab.requests.append(request))
    page.on("pageerror", lambda error: tab.page_errors.append(str(error)))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            tab.console_errors.append(message.text)

    def on_dialog(dialog: Dialog) -> None:
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("console", on_console)
    page.on("dialog", on_dialog)
    yield tab
    context.close()
    assert tab.page_errors == []
    assert tab.dialogs == []
    if not tab.allow_console_errors:
        assert tab.console_errors == []


class Proxy:
    """A TCP relay on 127.0.0.1 in front of `target` that a test can cut, hold or slow.

    - `cut()` closes every open connection, as a network drop would;
    - `hold()` keeps new connections waiting (unanswered) until `release()`;
    - `refuse()` closes new connections at once, as a stopped gateway would,
      until `release()`;
    - `byte_delay` set: server-to-browser bytes are sent one at a time, with
      that pause between them, so reads end inside multi-byte characters.
    """

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.byte_delay: float | None = None
        #: What the browser sent, one buffer per connection.
        self.received: list[bytearray] = []
        self._open = threading.Event()
        self._open.set()
        self._refusing = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def cut(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def hold(self) -> None:
        self._open.clear()

    def refuse(self) -> None:
        self._refusing.set()

    def release(self) -> None:
        self._refusing.clear()
        self._open.set()

    def close(self) -> None:
        self._closed.set()
        self._open.set()
        self.cut()
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        with client:
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.add(client)
            try:
                while not self._open.wait(0.05):
                    if self._closed.is_set():
                        return
                if self._refusing.is_set():
                    return
                upstream = socket.create_connection(self._target, timeout=5)
                with upstream:
                    upstream.settimeout(None)
                    received = bytearray()
                    with self._lock:
                        self._sockets.add(upstream)
                        self.received.append(received)
                    if self._closed.is_set():
                        return
                    forward = threading.Thread(
                        target=self._pump, args=(client, upstream, received, False), daemon=True
                    )
                    forward.start()
                    self._pump(upstream, client, None, True)
                    forward.join(5)
            except OSError:
                pass
            finally:
                with self._lock:
                    self._sockets.discard(client)
                    if upstream is not None:
                        self._sockets.discard(upstream)

    def _pump(
        self, src: socket.socket, dst: socket.socket, record: bytearray | None, downstream: bool
    ) -> None:
        try:
            while data := src.recv(65536):
                if record is not None:
                    record += data
                delay = self.byte_delay if downstream else None
                if delay is None:
                    dst.sendall(data)
                    continue
                for index in range(len(data)):
                    dst.sendall(data[index : index + 1])
                    time.sleep(delay)
        except OSError:
            pass
        finally:
            _shutdown(src)
            _shutdown(dst)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy() -> Iterator[Callable[[str], Proxy]]:
    proxies: list[Proxy] = []

    def start(target: str) -> Proxy:
        proxies.append(Proxy(target))
        return proxies[-1]

    yield start
    for p in proxies:
        p.close()


class ScriptedGateway:
    """The gateway's surface as the chat page sees it (`web/`, `POST /v1/streams`, one
    events URL), with events the test writes one at a time: for event kinds the real
    gateway does not produce yet (`reasoning`, `tool_call`). Ids count up across kinds."""

    def __init__(self) -> None:
        self._frames: queue.Queue[bytes | None] = queue.Queue()
        self._last_id = 0
        self.app = Starlette(
            routes=[
                Route("/v1/streams", self._create, methods=["POST"]),
                Route("/v1/streams/{id}/events", self._events),
                WebMount(DEFAULT_DIRECTORY),
            ]
        )

    def send(self, event: str, data: dict[str, Any]) -> None:
        """Writes one event; a terminal one (`done`, `error`) ends the response."""
        self._last_id += 1
        frame = f"id: {self._last_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"
        self._frames.put(frame.encode())
        if event in ("done", "error"):
            self.close()

    def close(self) -> None:
        self._frames.put(None)

    async def _create(self, request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"id": "s1", "events_url": "/v1/streams/s1/events"}, status_code=201)

    async def _events(self, request: StarletteRequest) -> StreamingResponse:
        async def frames() -> AsyncIterator[bytes]:
            while (frame := await anyio.to_thread.run_sync(self._frames.get)) is not None:
                yield frame

        return StreamingResponse(frames(), media_type="text/event-stream")


@contextlib.contextmanager
def scripted_gateway() -> Iterator[tuple[ScriptedGateway, str]]:
    """A `ScriptedGateway` served on 127.0.0.1, and its URL."""
    scripted = ScriptedGateway()
    with run_server(scripted.app) as url:
        try:
            yield scripted, url
        finally:
            scripted.close()  # a response still waiting for events ends, so the server can stop


# -- helpers -------------------------------------------------------------------


def type_message(page: Page, text: str) -> None:
    """Types `text` into the message box, Shift+Enter between lines."""
    box = page.get_by_role("textbox", name="Message")
    box.focus()
    for index, line in enumerate(text.split("\n")):
        if index:
            page.keyboard.press("Shift+Enter")
        if line:
            page.keyboard.insert_text(line)
    expect(box).to_have_value(text)


def send(page: Page, text: str) -> None:
    type_message(page, text)
    page.keyboard.press("Enter")


def last_answer(page: Page) -> Any:
    return page.locator(".message.assistant").last


def wait_for_state(page: Page, state: str) -> Any:
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", state)
    return answer


def answer_text(page: Page) -> str:
    # The answer's own text (`:scope >`): a Thinking block holds a `.text` too.
    text: str = last_answer(page).locator(":scope > .text").text_content() or ""
    return text


# -- the chat page --------------------------------------------------------------


def test_answer_grows_token_by_token_and_equals_the_upstream_text(
    gateway: StartGateway, simulator: SimServer, tab: Tab
) -> None:
    page = tab.page
    page.goto(gateway().url)
    # Record the answer's text at every DOM change while it streams.
    page.evaluate(
        """() => {
            window.seen = [];
            new MutationObserver(() => {
                const answer = document.querySelector(".message.assistant");
                if (answer && answer.dataset.state === "streaming")
                    window.seen.push(answer.querySelector(".text").textContent);
            }).observe(document.querySelector("#log"),
                       {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )
    m = marker()
    spoken = f"Echo {m}:  two  spaces,\ttab\nsecond line\n\n  indented <b>not bold</b> & done."
    send(page, f"[[sim echo=1 chunk=4 delay_ms=30]]{spoken}")

    answer = wait_for_state(page, "done")
    (record,) = simulator.sim.find(m)
    assert record.outcome == "completed"
    assert record.prompt == spoken
    assert answer_text(page) == spoken
    # Rendered with its white space and line breaks (innerText follows the CSS).
    assert answer.locator(".text").inner_text() == spoken
    assert answer.locator("b").count() == 0

    seen = page.evaluate("window.seen")
    steps = [text for i, text in enumerate(seen) if text and (i == 0 or text != seen[i - 1])]
    assert len(steps) >= 3, steps
    assert all(spoken.startswith(step) for step in steps)
    assert steps[0] != spoken

    meta = answer.locator(".meta")
    expect(meta).to_contain_text("Finished")
    expect(meta).to_contain_text(f"{record.tokens_sent} completion tokens")
    # The answer sits in a live region for screen readers.
    assert answer.evaluate("el => el.closest('[aria-live]') !== null")
    expect(page.locator("#log")).to_have_attribute("aria-busy", "false")


def test_done_closes_the_event_source(gateway: StartGateway, tab: Tab) -> None:
    # With a 50 ms retry, an EventSource left open would be back within the wait below.
    page = tab.page
    page.goto(gateway(sse={"retry_ms": 50}).url)
    send(page, "Short answer [[sim tokens=3]]")
    wait_for_state(page, "done")
    assert len(tab.urls(contains="/events")) == 1
    page.wait_for_timeout(500)  # an absence can only be observed for a while
    assert len(tab.urls(contains="/events")) == 1


def test_upstream_fault_shows_the_error_and_retry_works(
    gateway: StartGateway, simulator: SimServer, tab: Tab
) -> None:
    page = tab.page
    page.goto(gateway(upstream={"retries": 0}).url)
    m = marker()
    question = f"[[sim echo=1 status=500 times=1 key={m}]]Try again {m}"
    send(page, question)

    answer = wait_for_state(page, "error")
    expect(answer.locator(".error")).to_contain_text("500")
    retry = page.get_by_role("button", name="Retry")
    retry.focus()
    page.keyboard.press("Enter")

    wait_for_state(page, "done")
    assert answer_text(page) == f"Try again {m}"
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(page.locator(".error")).to_have_count(0)
    # The retry asked the same question, without the failed attempt.
    asked = {"messages": [{"role": "user", "content": question}]}
    assert tab.posted("/v1/streams") == [asked, asked]
    assert [r.outcome for r in simulator.sim.find(m)] == ["rejected", "completed"]


def test_a_non_retryable_error_offers_no_retry(gateway: StartGateway, tab: Tab) -> None:
    page = tab.page
    page.goto(gateway().url)
    send(page, "[[sim status=400]]Bad request")
    answer = wait_for_state(page, "error")
    expect(answer.locator(".error")).to_contain_text("400")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_stop_cancels_the_upstream_request(
    gateway: StartGateway, simulator: SimServer, tab: Tab
) -> None:
    # A long disconnect grace: only the DELETE can end the upstream in time.
    page = tab.page
    page.goto(gateway(streams={"disconnect_grace": 60}).url)
    m = marker()
    send(page, f"Long story {m} [[sim tokens=500 delay_ms=40]]")
    wait_for_state(page, "streaming")
    stop = page.get_by_role("button", name="Stop")
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    stop.click()

    answer = wait_for_state(page, "stopped")
    wait_until(lambda: simulator.sim.find(m)[0].outcome == "client_gone", timeout=10)
    (record,) = simulator.sim.find(m)
    assert 0 < record.tokens_sent < 500
    assert len(tab.urls("DELETE", "/v1/streams/")) == 1
    expect(stop).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(answer.locator(".meta")).to_have_text("Stopped")
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()


def test_a_dropped_connection_resumes_without_gap_or_duplicate(
    gateway: StartGateway, proxy: Callable[[str], Proxy], tab: Tab
) -> None:
    tab.allow_console_errors = True  # Chromium logs the cut connection
    relay = proxy(gateway(sse={"retry_ms": 100}).url)
    page = tab.page
    page.goto(relay.url)
    spoken = " ".join(f"w{i:02d}" for i in range(40))  # no two tokens alike
    send(page, f"[[sim echo=1 chunk=3 delay_ms=40]]{spoken}")

    expect(last_answer(page).locator(".text")).to_contain_text("w05")
    relay.hold()
    relay.cut()
    answer = wait_for_state(page, "reconnecting")
    expect(answer.locator(".meta")).to_have_text("Reconnecting…")
    partial = answer_text(page)
    assert spoken.startswith(partial) and partial != spoken
    relay.release()

    wait_for_state(page, "done")
    assert answer_text(page) == spoken
    assert len(tab.urls(contains="/events")) >= 2
    assert any(b"\r\nlast-event-id: " in bytes(sent).lower() for sent in relay.received)


def test_model_output_is_text_not_html(gateway: StartGateway, tab: Tab) -> None:
    page = tab.page
    page.goto(gateway().url)
    payload = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    send(page, f"[[sim echo=1 chunk=100]]{payload}")
    wait_for_state(page, "done")
    assert answer_text(page) == payload
    assert page.locator("img, script:not([src])").count() == 0
    expect(page.locator(".message.user .text")).to_have_text(f"[[sim echo=1 chunk=100]]{payload}")
    # tab's teardown checks that no dialog opened and no script error happened.


def test_conversation_is_sent_as_messages_and_new_chat_clears_it(
    gateway: StartGateway, tab: Tab
) -> None:
    page = tab.page
    page.goto(gateway().url)
    # Keyboard only: the message box has focus on load, Enter sends.
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    first = "[[sim echo=1]]First question"
    send(page, first)
    wait_for_state(page, "done")
    second = "[[sim echo=1]]And a follow-up\non two lines"
    send(page, second)
    wait_for_state(page, "done")
    expect(page.locator(".message")).to_have_count(4)
    assert tab.posted("/v1/streams")[1] == {
        "messages": [
            {"role": "user", "content": first},
            {"role": "assistant", "content": "First question"},
            {"role": "user", "content": second},
        ]
    }

    # Shift+Tab from the message box reaches "New chat"; Enter presses it.
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("button", name="New chat")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    send(page, "[[sim echo=1]]Fresh start")
    wait_for_state(page, "done")
    assert tab.posted("/v1/streams")[2] == {
        "messages": [{"role": "user", "content": "[[sim echo=1]]Fresh start"}]
    }


@pytest.mark.parametrize("width,scheme", [(360, "dark"), (1280, "light")])
def test_layout_fits_narrow_and_wide_screens_in_both_schemes(
    gateway: StartGateway, tab: Tab, width: int, scheme: str
) -> None:
    page = tab.page
    page.set_viewport_size({"width": width, "height": 640})
    page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
    page.goto(gateway().url)
    long_word = "x" * 200
    send(page, f"[[sim echo=1 chunk=50]]A long line: {long_word} " + "words " * 80)
    wait_for_state(page, "done")

    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for name in ("New chat", "Send"):
        box = page.get_by_role("button", name=name).bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= width
        assert box["y"] >= 0 and box["y"] + box["height"] <= 640
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    channels = [int(c) for c in background[background.index("(") + 1 : -1].split(",")[:3]]
    assert (sum(channels) < 150) == (scheme == "dark"), background


def test_csp_headers_and_a_clean_console(gateway: StartGateway, tab: Tab) -> None:
    page = tab.page
    url = gateway().url
    for path in ("/", "/app.js", "/client.js", "/style.css", "/fetch.html", "/fetch.js"):
        response = page.request.get(url + path)
        assert response.ok, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert page.request.get(url + "/app.js").headers["content-type"].startswith("text/javascript")

    page.goto(url)
    send(page, "[[sim tokens=5]]Hello")
    wait_for_state(page, "done")
    page.get_by_role("button", name="New chat").click()
    page.goto(url + "/fetch.html")
    send(page, "[[sim tokens=5]]Hello")
    expect(page.locator("#status")).to_have_text("Finished")
    # tab's teardown: no console error (a CSP violation is one), no page error.


# -- signing in (auth.mode api_key or jwt) ----------------------------------------

JWT_SECRET = "jwt-secret-for-the-web-tests-" + "8c1f" * 8


@pytest.fixture
def log_records() -> Iterator[list[logging.LogRecord]]:
    """Every log record of this process (the gateway runs in a thread of it), raw:
    before any formatter could mask a secret."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    with root_handler(handler, logging.DEBUG):
        yield records


def credentials(mode: str) -> tuple[dict[str, Any], str]:
    """Auth settings for `mode`, and a credential they accept."""
    if mode == "api_key":
        key = f"web-key-{marker()}"
        return {"auth": {"mode": "api_key", "api_keys": [hash_key(key)]}}, key
    token = jwt.encode(
        {"sub": "web-user", "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256"
    )
    return {"auth": {"mode": "jwt", "jwt": {"secret": JWT_SECRET}}}, token


@pytest.mark.parametrize("mode", ["api_key", "jwt"])
def test_sign_in_chat_reload_and_chat_again_without_the_credential_in_a_url(
    gateway: StartGateway, tab: Tab, log_records: list[logging.LogRecord], mode: str
) -> None:
    tab.allow_console_errors = True  # Chromium logs each 401 answer
    console: list[str] = []
    tab.page.on("console", lambda message: console.append(message.text))
    settings, secret = credentials(mode)
    page = tab.page
    page.goto(gateway(**settings).url)
    sign_in = page.locator("#sign-in")
    credential = page.get_by_label("API key or token")
    expect(sign_in).to_be_hidden()

    first = f"[[sim echo=1]]First {marker()}"
    send(page, first)
    expect(sign_in).to_be_visible()
    expect(sign_in).to_contain_text("needs an API key or a token")
    expect(last_answer(page).locator(".error")).to_have_text("Sign in to continue.")
    expect(credential).to_be_focused()

    # A wrong credential is refused and asked for again; the right one answers the question.
    credential.fill("not-the-" + secret[:20])
    page.keyboard.press("Enter")
    expect(sign_in).to_contain_text("refused that key or token")
    expect(credential).to_be_focused()
    credential.fill(secret)
    page.keyboard.press("Enter")
    expect(sign_in).to_be_hidden()
    wait_for_state(page, "done")
    assert answer_text(page) == first.removeprefix("[[sim echo=1]]")
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert secret not in page.content()

    page.reload()
    second = f"[[sim echo=1]]Second {marker()}"
    send(page, second)
    wait_for_state(page, "done")
    assert answer_text(page) == second.removeprefix("[[sim echo=1]]")
    expect(sign_in).to_be_hidden()
    assert secret not in page.content()

    # Stop works too: DELETE needs the creator's credentials.
    send(page, "[[sim tokens=500 delay_ms=20]]Long")
    wait_for_state(page, "streaming")
    with page.expect_response(lambda response: response.request.method == "DELETE") as deleted:
        page.get_by_role("button", name="Stop").click()
    wait_for_state(page, "stopped")
    assert deleted.value.status == 204

    # The fetch() example in the same tab uses the credential too.
    page.goto(page.url + "fetch.html")
    send(page, "[[sim echo=1]]Plain text")
    expect(page.locator("#status")).to_have_text("Finished")
    expect(page.locator("#answer")).to_have_text("Plain text")
    assert secret not in page.content()

    # The credential went in a header, and into no URL, log line or console message.
    posts = [r for r in tab.requests if r.method == "POST"]
    assert [r.headers.get("authorization") for r in posts] == [
        None,
        f"Bearer not-the-{secret[:20]}",
        *[f"Bearer {secret}"] * 4,
    ]
    assert deleted.value.request.headers["authorization"] == f"Bearer {secret}"
    events = tab.urls(contains="/events")
    assert len(events) == 3 and all("?token=" in url for url in events)
    assert not [url for url in tab.urls() + tab.urls("POST") + events if secret in url]
    assert log_records and not [
        r for r in log_records if secret in r.getMessage() or secret in repr(r.__dict__)
    ]
    assert not [text for text in console if secret in text]


# -- recovering from a gateway that is gone or a proxy's error page -------------------


@pytest.mark.parametrize("gone", ["unanswered", "refused"])
def test_gives_up_reconnecting_after_a_while_and_retry_works(
    gateway: StartGateway, proxy: Callable[[str], Proxy], tab: Tab, gone: str
) -> None:
    tab.allow_console_errors = True  # Chromium logs the cut connection
    relay = proxy(gateway(sse={"retry_ms": 100}).url)
    page = tab.page
    page.clock.install()  # runs in real time until the test jumps ahead
    page.goto(relay.url)
    question = "[[sim echo=1 chunk=3 delay_ms=40]]" + " ".join(f"w{i:02d}" for i in range(30))
    send(page, question)
    expect(last_answer(page).locator(".text")).to_contain_text("w03")

    # The gateway is gone: connections go unanswered, or are closed at once.
    if gone == "unanswered":
        relay.hold()
    else:
        relay.refuse()
    relay.cut()
    wait_for_state(page, "reconnecting")
    page.clock.fast_forward("00:29")
    expect(last_answer(page).locator(".meta")).to_have_text("Reconnecting…")
    # Giving up, the page asks the gateway to stop the stream (sent once it is back).
    with page.expect_request(lambda request: request.method == "DELETE"):
        page.clock.fast_forward("00:02")
    answer = wait_for_state(page, "error")
    expect(answer.locator(".error")).to_contain_text("Gave up reconnecting")

    relay.release()  # the gateway is back
    page.get_by_role("button", name="Retry").click()
    wait_for_state(page, "done")
    assert answer_text(page) == question.removeprefix("[[sim echo=1 chunk=3 delay_ms=40]]")
    expect(page.locator(".message.assistant")).to_have_count(1)


@pytest.mark.parametrize("status", [502, 504])
def test_a_proxy_error_page_is_reported_by_its_status(
    gateway: StartGateway, tab: Tab, status: int
) -> None:
    tab.allow_console_errors = True  # Chromium logs the error status
    page = tab.page
    page.goto(gateway().url)
    # What nginx answers when the gateway behind it is down or slow: HTML, not JSON.
    page.route(
        "**/v1/streams",
        lambda route: route.fulfill(
            status=status, content_type="text/html", body="<html><h1>Bad gateway</h1></html>"
        ),
    )
    send(page, "[[sim echo=1]]Behind a proxy")
    answer = wait_for_state(page, "error")
    expect(answer.locator(".error")).to_contain_text(f"HTTP {status}")
    expect(answer.locator(".error")).not_to_contain_text("Cannot reach")
    assert page.locator("h1", has_text="Bad gateway").count() == 0

    page.unroute("**/v1/streams")
    page.get_by_role("button", name="Retry").click()
    wait_for_state(page, "done")
    assert answer_text(page) == "Behind a proxy"


# -- reasoning and tool calls (scripted events) ---------------------------------------

XSS = "<img src=x onerror=alert(1)>"


def test_reasoning_then_the_answer_then_tool_calls_all_as_text(tab: Tab) -> None:
    page = tab.page
    with scripted_gateway() as (scripted, url):
        page.goto(url)
        send(page, "What is the weather in Paris?")
        answer = wait_for_state(page, "waiting")
        thinking = answer.locator("details.thinking")

        scripted.send("reasoning", {"text": "The user wants "})
        expect(thinking).to_have_attribute("open", "")
        expect(thinking.locator(".text")).to_have_text("The user wants ")
        wait_for_state(page, "streaming")
        scripted.send("reasoning", {"text": f"the weather. {XSS}"})
        expect(thinking.locator(".text")).to_have_text(f"The user wants the weather. {XSS}")
        expect(thinking.locator("summary")).to_have_text("Thinking")
        assert answer_text(page) == ""

        scripted.send("token", {"text": "Let me "})
        scripted.send("token", {"text": "check."})
        expect(answer.locator(":scope > .text")).to_have_text("Let me check.")

        call = {"city": XSS, "days": 2}
        arguments = json.dumps(call)
        scripted.send("tool_call", {"index": 0, "id": "call_1", "name": "get_weather"})
        scripted.send("tool_call", {"index": 0, "arguments": arguments[:15]})
        tool = answer.locator(".tool-call")
        expect(tool.locator("code")).to_have_text("get_weather")
        expect(tool.locator(".tool-args")).to_have_text(arguments[:15])  # raw while streaming
        scripted.send("tool_call", {"index": 0, "arguments": arguments[15:]})
        scripted.send("tool_call", {"index": 1, "id": "call_2", "name": "now", "arguments": ""})
        scripted.send("tool_call", {"index": 1, "arguments": "{}"})
        expect(tool).to_have_count(2)
        expect(tool.first.locator(".tool-args")).to_have_text(arguments)

        scripted.send(
            "done",
            {
                "finish_reason": "tool_calls",
                "usage": None,
                "tool_calls": [
                    {"id": "call_1", "name": "get_weather", "arguments": arguments},
                    {"id": "call_2", "name": "now", "arguments": "{}"},
                ],
            },
        )
        wait_for_state(page, "done")
        expect(answer.locator(".meta")).to_have_text("Finished: tool_calls")
        # Pretty-printed once complete (JSON.stringify(…, null, 2) is json.dumps(…, indent=2)).
        expect(tool).to_have_count(2)
        expect(tool.first.locator(".tool-args")).to_have_text(json.dumps(call, indent=2))
        expect(tool.nth(1).locator("code")).to_have_text("now")
        expect(tool.nth(1).locator(".tool-args")).to_have_text("{}")

    # Thinking above the answer, tool calls below it; nothing became HTML.
    order = answer.evaluate("el => [...el.children].map(c => c.className)")
    assert order == ["thinking", "text", "tool-call", "tool-call", "meta"]
    assert page.locator("img").count() == 0
    # The Thinking block folds away.
    thinking.locator("summary").click()
    expect(thinking.locator(".text")).to_be_hidden()
    expect(answer.locator(":scope > .text")).to_be_visible()
    # tab's teardown checks that no dialog opened.


def test_reasoning_and_tool_calls_from_the_real_gateway(
    gateway: StartGateway, simulator: SimServer, tab: Tab
) -> None:
    """The same page against a real gateway and the simulator's reasoning and tool modes."""
    page = tab.page
    page.goto(gateway().url)
    send(page, f"{marker()} [[sim reasoning=4 tokens=4 delay_ms=20]]")
    answer = wait_for_state(page, "done")
    assert (answer.locator("details.thinking .text").text_content() or "").strip()
    assert answer_text(page).strip()
    order = answer.evaluate("el => [...el.children].map(c => c.className)")
    assert order == ["thinking", "text", "meta"]

    m = marker()
    send(page, f"{m} [[sim reasoning=2 tools=1 echo=1]]look it up")
    answer = wait_for_state(page, "done")
    tool = answer.locator(".tool-call")
    expect(tool).to_have_count(1)
    expect(tool.locator("code")).to_have_text("answer")
    arguments = json.loads(tool.locator(".tool-args").text_content() or "")
    assert arguments == {"text": simulator.sim.find(m)[0].prompt}
    expect(answer.locator(".meta")).to_contain_text("Finished: tool_calls")


def test_a_tool_call_with_broken_json_arguments_is_shown_as_it_came(tab: Tab) -> None:
    page = tab.page
    with scripted_gateway() as (scripted, url):
        page.goto(url)
        send(page, "Call something")
        scripted.send("tool_call", {"index": 0, "id": "c", "name": "f", "arguments": '{"a": '})
        scripted.send("done", {"finish_reason": "tool_calls", "usage": None})
        answer = wait_for_state(page, "done")
    expect(answer.locator(".tool-call code")).to_have_text("f")
    expect(answer.locator(".tool-args")).to_have_text('{"a": ')


# -- fetch.html -------------------------------------------------------------------


def test_fetch_page_decodes_characters_split_across_reads(
    gateway: StartGateway, proxy: Callable[[str], Proxy], tab: Tab
) -> None:
    relay = proxy(gateway().url)
    page = tab.page
    # Watch what the page reads (without changing it), to prove reads did end
    # inside a character.
    page.add_init_script(
        """
        window.chunks = [];
        const read = ReadableStreamDefaultReader.prototype.read;
        ReadableStreamDefaultReader.prototype.read = async function () {
            const result = await read.call(this);
            if (result.value instanceof Uint8Array) window.chunks.push(Array.from(result.value));
            return result;
        };
        """
    )
    page.goto(relay.url + "/fetch.html")
    spoken = "Grüße, 世界! 🎉🚀 naïve café — ok ✓"
    relay.byte_delay = 0.002
    send(page, f"[[sim echo=1 chunk=2]]{spoken}")

    expect(page.locator("#status")).to_have_text("Finished")
    assert page.locator("#answer").text_content() == spoken
    chunks = [bytes(chunk) for chunk in page.evaluate("window.chunks")]
    assert b"".join(chunks).decode() == spoken
    ends = [sum(map(len, chunks[: i + 1])) for i in range(len(chunks) - 1)]
    body = b"".join(chunks)
    assert any(body[end] & 0xC0 == 0x80 for end in ends), "no read ended inside a character"


def test_fetch_page_shows_http_and_read_errors(gateway: StartGateway, tab: Tab) -> None:
    tab.allow_console_errors = True  # Chromium logs the 502 and the cut response
    page = tab.page
    page.goto(gateway(upstream={"retries": 0}).url + "/fetch.html")
    send(page, "[[sim status=401]]Who am I?")
    expect(page.locator("#status")).to_contain_text("401")
    expect(page.locator(".message")).to_have_attribute("data-state", "error")

    box = page.get_by_role("textbox", name="Message")
    box.fill("")
    # Spaced so the first tokens reach the page well before the cut (not in its last write).
    send(page, "[[sim fault=drop after=3 delay_ms=150]]Cut me off")
    expect(page.locator("#status")).to_contain_text("incomplete")
    expect(page.locator(".message")).to_have_attribute("data-state", "error")
    assert page.locator("#answer").text_content()


# -- the README's screenshot ------------------------------------------------------


def test_screenshot_of_a_finished_answer(gateway: StartGateway, tab: Tab, tmp_path: Path) -> None:
    # A simulator of its own, so the questions need no [[sim ...]] directive.
    simulator = Simulator(SimulatorSettings(tokens=36, token_delay=0))
    with run_server(simulator.app) as simulator_url:
        page = tab.page
        page.set_viewport_size({"width": 900, "height": 620})
        page.goto(gateway(upstream={"base_url": f"{simulator_url}/v1"}).url)
        send(page, "Tell me about the river.")
        wait_for_state(page, "done")
        send(page, "And the boat?\nKeep it short.")
        wait_for_state(page, "done")
    page.get_by_role("textbox", name="Message").blur()
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "shot.png"
    page.screenshot(path=target)
    assert target.read_bytes().startswith(b"\x89PNG")
