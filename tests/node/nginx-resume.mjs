// Run by tests/test_ai_sdk.py with NGINX_URL (the shipped deploy/nginx.conf in front of
// two gateways on one Redis) and GATEWAY_A / GATEWAY_B (the two gateways themselves).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Chat, cuttingFetch, textOf, transport } from "./chat.mjs";

const { NGINX_URL, GATEWAY_A, GATEWAY_B } = process.env;
const TEXT = "sent through nginx to one instance, resumed on the other, and whole exactly once";

async function streamsStarted(gateway) {
  const metrics = await (await fetch(`${gateway}/metrics`)).text();
  return Number(metrics.match(/^gateway_streams_started_total (\S+)$/m)[1]);
}

test("a chat cut mid-stream behind nginx resumes on the other instance", async () => {
  const cutting = cuttingFetch(2);
  const chat = new Chat({ id: `chat-${Date.now()}`, transport: transport(NGINX_URL, cutting.fetch) });
  await chat.sendMessage({ text: `[[sim echo=1 chunk=3 delay_ms=50]]${TEXT}` });
  await cutting.cut;
  const partial = textOf(chat.messages[1]);
  assert.ok(partial.length > 0 && partial.length < TEXT.length, partial);

  const started = [await streamsStarted(GATEWAY_A), await streamsStarted(GATEWAY_B)];
  assert.deepEqual(started.toSorted(), [0, 1]);
  const other = started[0] === 1 ? GATEWAY_B : GATEWAY_A;

  // The page reloads and its resume GET lands on the instance that is not generating.
  const reloaded = new Chat({ id: chat.id, messages: [chat.messages[0]], transport: transport(other) });
  await reloaded.resumeStream();
  assert.equal(reloaded.status, "ready");
  assert.equal(reloaded.messages.length, 2);
  assert.equal(textOf(reloaded.messages[1]), TEXT);
});
