// The AI SDK's own client code (the Chat behind useChat, DefaultChatTransport) against a
// real gateway in front of the simulator. Run by tests/test_ai_sdk.py, which starts the
// gateway and passes GATEWAY_URL (and SIM_MARKER, to find these requests upstream).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Chat, GATEWAY_URL, MARKER, cuttingFetch, textOf, transport, userText, waitFor } from "./chat.mjs";

assert.ok(GATEWAY_URL, "set GATEWAY_URL to a running gateway");

const TEXT = 'Hello, "world" \\ 🎉\nsecond line\r\nthird, and a long tail of words to stream';

function newChat(init = {}) {
  const finished = [];
  const chat = new Chat({
    id: `chat-${Math.random().toString(36).slice(2)}`,
    transport: transport(),
    onFinish: (event) => finished.push(event),
    ...init,
  });
  return { chat, finished };
}

test("the assembled message is the simulator's text, with finish reason and usage", async () => {
  let headers;
  const { chat, finished } = newChat({
    transport: transport(undefined, async (url, init) => {
      const response = await fetch(url, init);
      headers = response.headers;
      return response;
    }),
  });
  await chat.sendMessage({ text: `[[sim echo=1 chunk=4 delay_ms=5]]${TEXT}` });
  assert.equal(chat.status, "ready");
  assert.equal(chat.error, undefined);
  assert.equal(headers.get("x-vercel-ai-ui-message-stream"), "v1");
  assert.equal(chat.messages.length, 2);
  const answer = chat.messages[1];
  assert.equal(answer.role, "assistant");
  assert.deepEqual(
    answer.parts.map((part) => part.type),
    ["step-start", "text"],
  );
  assert.equal(answer.parts[1].text, TEXT);
  assert.equal(answer.parts[1].state, "done");
  assert.equal(finished.length, 1);
  assert.equal(finished[0].finishReason, "stop");
  assert.equal(finished[0].isError, false);
  assert.ok(answer.metadata.usage.completion_tokens > 0);
});

test("an upstream failure before the first token is the SDK's error state with the gateway's message", async () => {
  const { chat } = newChat();
  await chat.sendMessage({ text: "hi [[sim status=401]]" });
  assert.equal(chat.status, "error");
  assert.equal(chat.error.message, "The upstream answered HTTP 401.");
});

test("a failure mid-stream keeps the text so far and ends in the error state", async () => {
  const { chat, finished } = newChat();
  await chat.sendMessage({ text: "[[sim echo=1 chunk=2 fault=drop after=3]]abcdefghij" });
  assert.equal(chat.status, "error");
  assert.equal(chat.error.message, "The upstream connection was lost mid-stream.");
  assert.equal(textOf(chat.messages[1]), "abcdef");
  assert.equal(finished[0].isError, true);
});

test("a connection cut mid-stream resumes in the same chat: the whole message, once", async () => {
  const cutting = cuttingFetch(2);
  const { chat } = newChat({ transport: transport(undefined, cutting.fetch) });
  await chat.sendMessage({ text: `[[sim echo=1 chunk=3 delay_ms=30]]${TEXT}` });
  await cutting.cut;
  assert.equal(chat.status, "error"); // a disconnect, which the chat may resume
  const partial = textOf(chat.messages[1]);
  assert.ok(partial.length > 0 && partial.length < TEXT.length, partial);

  await chat.resumeStream();
  assert.equal(chat.status, "ready");
  assert.equal(chat.messages.length, 2);
  assert.equal(textOf(chat.messages[1]), TEXT);
});

test("after a reload, resume: true replays the running generation, then has nothing more to replay", async () => {
  const cutting = cuttingFetch(2);
  const { chat } = newChat({ transport: transport(undefined, cutting.fetch) });
  await chat.sendMessage({ text: `[[sim echo=1 chunk=3 delay_ms=30]]${TEXT}` });
  await cutting.cut;
  const user = chat.messages[0];

  // The page reloads: a new Chat with the same id and the messages the app saved.
  const reloaded = newChat({ id: chat.id, messages: [user] });
  await reloaded.chat.resumeStream();
  assert.equal(reloaded.chat.status, "ready");
  assert.equal(reloaded.chat.messages.length, 2);
  assert.equal(textOf(reloaded.chat.messages[1]), TEXT);
  assert.equal(reloaded.finished[0].finishReason, "stop");

  // That response was read to its end: another reload finds nothing to resume (204).
  const again = newChat({ id: chat.id, messages: reloaded.chat.messages });
  await again.chat.resumeStream();
  assert.equal(again.chat.status, "ready");
  assert.equal(again.chat.messages.length, 2);
  assert.equal(again.finished.length, 0);
});

test("resuming a chat the gateway never saw is a 204: the chat stays as it was", async () => {
  const { chat, finished } = newChat({ messages: [userText("hello")] });
  await chat.resumeStream();
  assert.equal(chat.status, "ready");
  assert.equal(chat.messages.length, 1);
  assert.equal(finished.length, 0);
  const response = await fetch(`${GATEWAY_URL}/v1/ui/chat/${encodeURIComponent("no/such chat")}/stream`);
  assert.equal(response.status, 204);
});

test("the stop endpoint ends the generation; the message keeps its text and the chat is ready", async () => {
  const { chat, finished } = newChat();
  const sending = chat.sendMessage({ text: `${MARKER}-stop [[sim tokens=400 delay_ms=25]]` });
  await waitFor(() => chat.messages.length === 2 && textOf(chat.messages[1]).length > 0);
  const response = await fetch(`${GATEWAY_URL}/v1/ui/chat/${encodeURIComponent(chat.id)}/stream`, {
    method: "DELETE",
  });
  assert.equal(response.status, 204);
  await sending;
  assert.equal(chat.status, "ready");
  assert.equal(chat.error, undefined);
  assert.ok(textOf(chat.messages[1]).split(" ").length < 400);
  assert.equal(finished[0].isError, false);
  // Stopped, so a reload has nothing to resume.
  const reloaded = newChat({ id: chat.id, messages: chat.messages });
  await reloaded.chat.resumeStream();
  assert.equal(reloaded.finished.length, 0);
});

test(
  "reasoning arrives as a reasoning part before the text",
  async () => {
    const { chat } = newChat();
    await chat.sendMessage({ text: "[[sim reasoning=1 tokens=4]]" });
    const types = chat.messages[1].parts.map((part) => part.type);
    assert.deepEqual(types, ["step-start", "reasoning", "text"]);
    assert.ok(chat.messages[1].parts[1].text.length > 0);
  },
);

test(
  "a tool call arrives as a tool part with its parsed input and finish reason tool-calls",
  async () => {
    const { chat, finished } = newChat();
    await chat.sendMessage({ text: "[[sim echo=1 tools=1]]the input" });
    const part = chat.messages[1].parts.find((p) => p.type === "tool-answer");
    assert.equal(part.state, "input-available");
    assert.deepEqual(part.input, { text: "the input" });
    assert.equal(finished[0].finishReason, "tool-calls");
  },
);
