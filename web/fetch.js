// The seed's way to stream: POST /api/stream answers with the raw text,
// read chunk by chunk from the response body. Simpler than EventSource,
// but a dropped connection loses the answer (see app.js for resuming).

import { errorMessage, request } from "./client.js";

const form = document.querySelector("#composer");
const input = document.querySelector("#prompt");
const sendButton = document.querySelector("#send");
const answer = document.querySelector("#answer");
const status = document.querySelector("#status");

function show(state, note) {
  answer.parentElement.dataset.state = state;
  status.textContent = note;
}

async function send(message) {
  answer.textContent = "";
  show("waiting", "Thinking…");

  let response;
  try {
    // With auth on, the key or token the chat page signed in with (this tab).
    response = await request("POST", "/api/stream", { message });
  } catch {
    return show("error", "Cannot reach the gateway.");
  }
  if (!response.ok) {
    // Failures before the first token are HTTP errors with a JSON body.
    return show("error", await errorMessage(response));
  }

  // Network chunks may end in the middle of a multi-byte character: a
  // streaming decoder keeps the partial bytes until the rest arrives.
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  show("streaming", "");
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      answer.append(decoder.decode(value, { stream: true })); // text, never HTML
    }
    answer.append(decoder.decode()); // whatever is left at the end
  } catch {
    // The gateway cuts the response when the answer fails midway.
    return show("error", "The connection broke: the answer is incomplete.");
  }
  show("done", "Finished");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (sendButton.disabled || !input.value.trim()) return;
  sendButton.disabled = true;
  try {
    await send(input.value);
  } finally {
    sendButton.disabled = false;
  }
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});
