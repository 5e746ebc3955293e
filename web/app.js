// The reference client of the sse-gateway protocol (docs/protocol.md):
// POST /v1/streams creates a stream, an EventSource reads its events.
// Plain DOM, no framework, no build step: copy what you need.

import * as client from "./client.js";

const log = document.querySelector("#log");
const form = document.querySelector("#composer");
const input = document.querySelector("#prompt");
const sendButton = document.querySelector("#send");
const stopButton = document.querySelector("#stop");
const newChatButton = document.querySelector("#new-chat");
const signInForm = document.querySelector("#sign-in");
const signInNote = document.querySelector("#sign-in-note");
const credentialInput = document.querySelector("#credential");
const signOutButton = document.querySelector("#sign-out");

/** How long a lost connection may take to come back before the page gives up:
 * the gateway's default disconnect grace, after which it cancels a stream that
 * nobody reads anyway. */
const RECONNECT_LIMIT_MS = 30_000;

/** The conversation, sent whole as `messages` so follow-ups have context. */
let messages = [];
/** The answer being streamed (its `turn`, see `ask`), or null. */
let current = null;
/** The answer that failed for want of credentials, asked again after sign-in. */
let awaitingSignIn = null;

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
  clearTimeout(turn.giveUp);
  current = null;
  setStreaming(false);
  return true;
}

/** Asks the gateway to answer `messages` and streams the answer into the log. */
async function ask() {
  const view = addMessage("assistant");
  // `text`: the answer so far; `thinking`: the reasoning's element, once there is
  // reasoning; `calls`: the tool calls streaming in, by their `index`; `giveUp`:
  // the timer that ends reconnecting.
  const turn = {
    view, id: null, source: null, text: "", thinking: null, calls: new Map(), giveUp: undefined,
  };
  current = turn;
  setStreaming(true);
  setState(view, "waiting", "Thinking…");

  let created;
  try {
    const response = await client.request("POST", "/v1/streams", { messages });
    if (response.status === 401) return askForCredentials(turn);
    if (!response.ok) {
      const message = await client.errorMessage(response);
      return fail(turn, message, client.retryable(response.status));
    }
    created = await response.json();
  } catch {
    return fail(turn, "Cannot reach the gateway.", true);
  }
  if (current !== turn) {
    // Stopped while the stream was being created.
    cancel(created.id);
    return;
  }
  turn.id = created.id;

  // With auth on, `events_url` carries a token for this stream only: the
  // credential itself never goes into a URL.
  const source = new EventSource(created.events_url);
  turn.source = source;

  source.addEventListener("open", () => {
    clearTimeout(turn.giveUp);
    turn.giveUp = undefined;
    if (view.article.dataset.state === "reconnecting") setState(view, "streaming");
  });

  source.addEventListener("reasoning", (event) => {
    const { text } = JSON.parse(event.data);
    streaming(turn);
    follow(() => thinkingOf(turn).append(text)); // a text node: safe for any text
  });

  source.addEventListener("token", (event) => {
    const { text } = JSON.parse(event.data);
    turn.text += text;
    streaming(turn);
    follow(() => view.body.append(text));
  });

  source.addEventListener("tool_call", (event) => {
    const delta = JSON.parse(event.data);
    streaming(turn);
    let call = turn.calls.get(delta.index);
    if (!call) {
      call = { ...addToolCall(turn), name: "", arguments: "" };
      turn.calls.set(delta.index, call);
    }
    if (delta.name) call.name = delta.name; // with the call's first delta
    call.arguments += delta.arguments ?? "";
    call.title.textContent = call.name;
    follow(() => call.args.append(delta.arguments ?? "")); // raw until complete
  });

  source.addEventListener("done", (event) => {
    if (!settle(turn)) return;
    const { finish_reason, usage, tool_calls } = JSON.parse(event.data);
    showToolCalls(turn, tool_calls ?? [...turn.calls.values()]);
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
      // gateway replays what we missed, so the text just carries on. But
      // it would try forever: give up after a while and offer Retry.
      setState(view, "reconnecting", "Reconnecting…");
      turn.giveUp ??= setTimeout(() => {
        cancel(turn.id);
        fail(turn, "Gave up reconnecting: the gateway cannot be reached.", true);
      }, RECONNECT_LIMIT_MS);
    } else {
      fail(turn, "Lost the connection to the gateway.", true);
    }
  });
}

function streaming(turn) {
  if (turn.view.article.dataset.state !== "streaming") setState(turn.view, "streaming");
}

/** The reasoning's text, in a "Thinking" block above the answer (made on first use). */
function thinkingOf(turn) {
  if (!turn.thinking) {
    const details = document.createElement("details");
    details.className = "thinking";
    details.open = true;
    const summary = document.createElement("summary");
    summary.textContent = "Thinking";
    turn.thinking = document.createElement("div");
    turn.thinking.className = "text";
    details.append(summary, turn.thinking);
    turn.view.body.before(details);
  }
  return turn.thinking;
}

/** A tool call's place below the answer: its name and its arguments. */
function addToolCall(turn) {
  const box = document.createElement("section");
  box.className = "tool-call";
  const heading = document.createElement("p");
  heading.className = "tool-heading";
  const title = document.createElement("code");
  heading.append("Tool call: ", title);
  const args = document.createElement("pre");
  args.className = "tool-args";
  box.append(heading, args);
  follow(() => turn.view.meta.before(box));
  return { box, title, args };
}

/** Replaces the streamed tool calls with the complete ones, arguments pretty-printed. */
function showToolCalls(turn, calls) {
  for (const call of turn.calls.values()) call.box.remove();
  for (const { name, arguments: args } of calls) {
    const view = addToolCall(turn);
    view.title.textContent = name ?? "";
    view.args.textContent = pretty(args ?? "");
  }
}

/** JSON arguments indented; anything else (a model may emit broken JSON) as it came. */
function pretty(args) {
  try {
    return JSON.stringify(JSON.parse(args), null, 2);
  } catch {
    return args;
  }
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
    retry.addEventListener("click", () => askAgain(turn));
    view.meta.append(" ", retry);
  }
}

/** Replaces the failed answer of `turn` with a new one (`messages` still ends with
 * the question). */
function askAgain(turn) {
  if (current) return;
  turn.view.article.remove();
  ask();
  input.focus();
}

/** The gateway wants credentials (or refused the ones we sent): asks for them. */
function askForCredentials(turn) {
  if (current !== turn) return; // stopped meanwhile
  const refused = client.credential() !== null;
  client.signOut();
  showSignedIn();
  fail(turn, "Sign in to continue.", false);
  awaitingSignIn = turn;
  signInNote.textContent = refused
    ? "The gateway refused that key or token: enter another."
    : "This gateway needs an API key or a token.";
  signInForm.hidden = false;
  credentialInput.focus();
}

function showSignedIn() {
  signOutButton.hidden = client.credential() === null;
}

function cancel(id) {
  // Closing the EventSource alone would leave the upstream running until
  // the gateway's disconnect grace runs out; DELETE stops it now.
  client.request("DELETE", `/v1/streams/${encodeURIComponent(id)}`).catch(() => {});
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

signInForm.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!client.signIn(credentialInput.value.trim())) {
    signInNote.textContent = "A key or token is one word of letters, digits and punctuation.";
    return;
  }
  credentialInput.value = "";
  signInForm.hidden = true;
  showSignedIn();
  const turn = awaitingSignIn;
  awaitingSignIn = null;
  if (turn?.view.article.isConnected) askAgain(turn);
  else input.focus();
});

signOutButton.addEventListener("click", () => {
  client.signOut();
  showSignedIn();
  input.focus();
});

showSignedIn();
