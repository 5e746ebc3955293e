// What the tests share: the AI SDK's own Chat (useChat's engine) with a plain state,
// and a fetch that cuts the connection mid-stream.
import { AbstractChat, DefaultChatTransport } from "ai";

export const GATEWAY_URL = process.env.GATEWAY_URL;
export const MARKER = process.env.SIM_MARKER ?? `m${Date.now()}`;

/** The state `@ai-sdk/react`'s Chat keeps in React, kept in a plain object instead. */
class PlainChatState {
  constructor(messages = []) {
    this.status = "ready";
    this.error = undefined;
    this.messages = messages;
  }
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), this.snapshot(message), ...this.messages.slice(index + 1)];
  };
  snapshot = (thing) => structuredClone(thing);
}

/** `new Chat({ id, messages, transport })`, as `useChat` builds it. */
export class Chat extends AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new PlainChatState(messages) });
  }
}

export function transport(base = GATEWAY_URL, fetch = globalThis.fetch) {
  return new DefaultChatTransport({ api: `${base}/v1/ui/chat`, fetch });
}

/** A fetch whose POST responses break like a dropped network connection once `deltas`
 * text deltas have come through (the real request is aborted, so the gateway sees the
 * client leave); GETs (the resume) pass untouched. `cut` resolves when it happened. */
export function cuttingFetch(deltas) {
  let resolveCut;
  const cut = new Promise((resolve) => (resolveCut = resolve));
  const fetchWithCut = async (url, init = {}) => {
    if ((init.method ?? "GET") !== "POST") return fetch(url, init);
    const controller = new AbortController();
    init.signal?.addEventListener("abort", () => controller.abort());
    const response = await fetch(url, { ...init, signal: controller.signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let seen = 0;
    const body = new ReadableStream({
      async pull(stream) {
        if (seen >= deltas) {
          controller.abort();
          resolveCut();
          stream.error(new TypeError("network error"));
          return;
        }
        const { done, value } = await reader.read();
        if (done) return stream.close();
        seen += decoder.decode(value, { stream: true }).split('"text-delta"').length - 1;
        stream.enqueue(value);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  return { fetch: fetchWithCut, cut };
}

export function textOf(message) {
  return message.parts.filter((part) => part.type === "text").map((part) => part.text).join("");
}

export function userText(text) {
  return { id: `u-${Math.random().toString(36).slice(2)}`, role: "user", parts: [{ type: "text", text }] };
}

/** Poll `predicate` every 20 ms, failing after `timeout` ms. */
export async function waitFor(predicate, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
