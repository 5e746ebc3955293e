// How both pages talk to the gateway: the credential, requests, error messages.
//
// With auth on (docs/security.md) the credential, an API key or a JWT, is asked
// for once and kept in sessionStorage: this tab only, gone when it closes. It
// travels only in the Authorization header, never in a URL: an EventSource
// cannot send headers, so it reads the stream through the `events_url` the
// gateway returns, whose token opens that one stream only.

const STORAGE_KEY = "sse-gateway.credential";

export function credential() {
  return sessionStorage.getItem(STORAGE_KEY);
}

/** Keeps `value` for the next requests; returns false for what no header can carry. */
export function signIn(value) {
  if (!/^[\x21-\x7e]+$/.test(value)) return false; // one token of printable ASCII
  sessionStorage.setItem(STORAGE_KEY, value);
  return true;
}

export function signOut() {
  sessionStorage.removeItem(STORAGE_KEY);
}

/** `fetch(path)` with the credential, and `body` sent as JSON. */
export function request(method, path, body) {
  const headers = {};
  const key = credential();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

/** Why `response` failed: the gateway's JSON error message, or else its HTTP status
 * (a proxy in front of the gateway, such as nginx with a 502 or 504, answers with HTML). */
export async function errorMessage(response) {
  const body = await response.json().catch(() => null);
  const message = body?.error?.message;
  if (typeof message === "string") return message;
  return `The server answered HTTP ${response.status} ${response.statusText}`.trim() + ".";
}

/** Whether trying the same request again may work. */
export function retryable(status) {
  return status === 429 || status >= 500;
}
