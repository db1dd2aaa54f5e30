// The server's API as the map uses it: every URL relative to the server the map came from, and
// every request to it made as the caller (the API key of this browser tab's session, if any).

export const base = new URL("..", document.baseURI);

const KEY = "twin-key"; // sessionStorage: this tab's key, gone when the tab closes; never in a URL
const KEYED = "twin-keyed"; // sessionStorage: a key was used in this tab (the browser may cache as it)

export function getKey() {
  try {
    return sessionStorage.getItem(KEY) || null;
  } catch (e) {
    return null; // storage refused (a locked-down browser): anonymous
  }
}

export function setKey(key) {
  // `key`: the caller's API key, or null to forget it (back to anonymous).
  try {
    if (key) {
      sessionStorage.setItem(KEY, key);
      sessionStorage.setItem(KEYED, "1");
    } else sessionStorage.removeItem(KEY);
  } catch (e) {
    // storage refused: nothing kept
  }
}

export function keyedSession() {
  // Whether a key was used in this tab: answers cached for one caller must not be shown to
  // another, so from then on the map revalidates what it asks the server for.
  try {
    return Boolean(getKey() || sessionStorage.getItem(KEYED));
  } catch (e) {
    return false;
  }
}

export function sameOrigin(resource) {
  try {
    return new URL(resource, document.baseURI).origin === location.origin;
  } catch (e) {
    return false;
  }
}

export function withKey(headers, resource, key = getKey()) {
  // `headers` and, for a request to this server, `Authorization: Bearer <key>` (never to another host).
  const out = { ...(headers || {}) };
  if (key && sameOrigin(resource)) out.Authorization = `Bearer ${key}`;
  return out;
}

const rejectedListeners = new Set();

export function onKeyRejected(listener) {
  // `listener(key)` is called when the server answers 401 to a request made with the current key.
  rejectedListeners.add(listener);
}

export function keyRejected(key) {
  // The server refused `key` (bad, expired or revoked): told once, and only while it is still
  // the key in use (a late answer to a key already replaced changes nothing).
  if (!key || key !== getKey()) return;
  for (const listener of rejectedListeners) listener(key);
}

export async function send(href, init = {}) {
  // `fetch` of a URL of this server as the caller; a 401 is told to `onKeyRejected` listeners.
  const key = getKey();
  const r = await fetch(href, { ...init, headers: withKey(init.headers, href, key) });
  if (r.status === 401) keyRejected(key);
  return r;
}

export function url(path, params) {
  const u = new URL(path.replace(/^\//, ""), base);
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null) u.searchParams.set(k, v);
  return u.href;
}

export function itemPath(collection, id) {
  return `collections/${encodeURIComponent(collection)}/items/${encodeURIComponent(id)}`;
}

async function answer(r) {
  if (r.ok) return r.json();
  const body = await r.json().catch(() => ({}));
  throw new Error(body.description || `${r.status}`);
}

export async function getJSON(path, params) {
  return answer(await send(url(path, params), { headers: { Accept: "application/json" } }));
}

export async function postJSON(path, data) {
  return answer(await send(url(path), {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(data),
  }));
}

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function formatNumber(v, digits = 1) {
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? v.toLocaleString() : v.toLocaleString(undefined, { maximumFractionDigits: digits });
}
