// The reference client of the sse-gateway protocol (docs/protocol.md):
// POST /v1/streams creates a stream, an EventSource reads its events.
// Plain DOM, no framework, no build step: copy what you need.

const log = document.querySelector("#log");
const form = document.querySelector("#composer");
const input = document.querySelector("#prompt");
const sendButton = document.querySelector("#send");
const stopButton = document.querySelector("#stop");
const newChatButton = document.querySelector("#new-chat");

/** The conversation, sent whole as `messages` so follow-ups have context. */
let messages = [];
/** The answer being streamed: { view, id, source, text }, or null. */
let current = null;

/** Adds a message to the log; returns its parts. */
function addMessage(role, text = "") {
  const article = document.createElement("article");
  article.className = `message ${role}`;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text; // text, never HTML
  const meta = document.createElement("p");
  meta.className = "meta";
  article.append(body, meta);
  follow(() => log.append(article));
  return { article, body, meta };
}

/** Runs `change`, then keeps the log scrolled to the end if it was there. */
function follow(change) {
  const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  change();
  if (atEnd) log.scrollTop = log.scrollHeight;
}

/** Shows an answer's state: data-state for styling, a short note for people. */
function setState(view, state, note = "") {
  view.article.dataset.state = state;
  view.meta.textContent = note;
}

function setStreaming(streaming) {
  sendButton.disabled = streaming;
  stopButton.hidden = !streaming;
  // While busy, screen readers wait and then read the whole answer once,
  // instead of every token.
  log.setAttribute("aria-busy", String(streaming));
}

/** Ends the current answer (finished, failed or stopped). */
function settle(turn) {
  if (current !== turn) return false;
  turn.source?.close(); // closed, the browser does not reconnect
  current = null;
  setStreaming(false);
  return true;
}

/** Asks the gateway to answer `messages` and streams the answer into the log. */
async function ask() {
  const view = addMessage("assistant");
  const turn = { view, id: null, source: null, text: "" };
  current = turn;
  setStreaming(true);
  setState(view, "waiting", "Thinking…");

  let created;
  try {
    const response = await fetch("/v1/streams", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages }),
    });
    const body = await response.json();
    if (!response.ok) {
      const retryable = response.status === 429 || response.status >= 500;
      return fail(turn, body.error?.message ?? `HTTP ${response.status}`, retryable);
    }
    created = body;
  } catch {
    return fail(turn, "Cannot reach the gateway.", true);
  }
  if (current !== turn) {
    // Stopped while the stream was being created.
    cancel(created.id);
    return;
  }
  turn.id = created.id;

  const source = new EventSource(created.events_url);
  turn.source = source;

  source.addEventListener("open", () => {
    if (view.article.dataset.state === "reconnecting") setState(view, "streaming");
  });

  source.addEventListener("token", (event) => {
    const { text } = JSON.parse(event.data);
    turn.text += text;
    if (view.article.dataset.state !== "streaming") setState(view, "streaming");
    follow(() => view.body.append(text)); // a text node: safe for any text
  });

  source.addEventListener("done", (event) => {
    if (!settle(turn)) return;
    const { finish_reason, usage } = JSON.parse(event.data);
    messages.push({ role: "assistant", content: turn.text });
    setState(view, "done", describe(finish_reason, usage));
  });

  // Two kinds of `error`: the gateway's error event (a MessageEvent with
  // data), and the browser's own when the connection has a problem.
  source.addEventListener("error", (event) => {
    if (event.data) {
      const error = JSON.parse(event.data);
      fail(turn, error.message, error.retryable);
    } else if (source.readyState === EventSource.CONNECTING) {
      // The browser reconnects by itself and sends Last-Event-ID; the
      // gateway replays what we missed, so the text just carries on.
      setState(view, "reconnecting", "Reconnecting…");
    } else {
      fail(turn, "Lost the connection to the gateway.", true);
    }
  });
}

function describe(finishReason, usage) {
  const parts = [finishReason === "stop" ? "Finished" : `Finished: ${finishReason}`];
  if (usage) {
    parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  }
  return parts.join(" · ");
}

/** Shows why the answer failed, with a Retry button when a new try may work. */
function fail(turn, message, retryable) {
  if (!settle(turn)) return;
  const { view } = turn;
  setState(view, "error");
  const note = document.createElement("span");
  note.className = "error";
  note.textContent = message;
  view.meta.append(note);
  if (retryable) {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "retry";
    retry.textContent = "Retry";
    retry.addEventListener("click", () => {
      if (current) return;
      view.article.remove();
      ask(); // `messages` still ends with the question
      input.focus();
    });
    view.meta.append(" ", retry);
  }
}

function cancel(id) {
  // Closing the EventSource alone would leave the upstream running until
  // the gateway's disconnect grace runs out; DELETE stops it now.
  fetch(`/v1/streams/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(() => {});
}

function stop() {
  const turn = current;
  if (!turn || !settle(turn)) return;
  if (turn.id) cancel(turn.id);
  if (turn.text) messages.push({ role: "assistant", content: turn.text });
  setState(turn.view, "stopped", "Stopped");
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = input.value;
  if (current || !content.trim()) return;
  messages.push({ role: "user", content });
  addMessage("user", content);
  input.value = "";
  input.focus();
  ask();
});

input.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter is a new line; not while an IME is composing.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", () => {
  stop();
  input.focus();
});

newChatButton.addEventListener("click", () => {
  stop();
  messages = [];
  log.replaceChildren();
  input.focus();
});
