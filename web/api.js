// The server's API as the map uses it: every URL relative to the server the map came from.

export const base = new URL("..", document.baseURI);

export function url(path, params) {
  const u = new URL(path.replace(/^\//, ""), base);
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null) u.searchParams.set(k, v);
  return u.href;
}

export function itemPath(collection, id) {
  return `collections/${encodeURIComponent(collection)}/items/${encodeURIComponent(id)}`;
}

export async function getJSON(path, params) {
  const r = await fetch(url(path, params), { headers: { Accept: "application/json" } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.description || `${r.status}`);
  return body;
}

export async function postJSON(path, data) {
  const r = await fetch(url(path), {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(data),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.description || `${r.status}`);
  return body;
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
