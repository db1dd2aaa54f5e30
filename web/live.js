// The live twin: the map follows GET /events (Server-Sent Events). Each change names its
// collection and its box before and after; only the vector tiles those boxes touch are fetched
// again (revalidated past the browser's cache), so a lamp that fails shows its fault mark
// without a reload, and an open feature panel is refreshed.
//
// The stream is read with `fetch` rather than `EventSource`, which cannot send the caller's key
// (`Authorization`): the text/event-stream format is parsed here, and a dropped stream is taken
// up again with `Last-Event-ID`, so no change is missed.

import { send, url } from "./api.js";

const AGAIN_MS = 1300; // the server's TWIN_TILES_REFRESH_S (1 s), and a little more
const RETRY_MS = 3000; // before taking a dropped stream up again (the server's `retry:` wins)
const RETRY_MAX_MS = 30000; // the longest wait, after failures in a row

export class EventStreamParser {
  // The text/event-stream format (the HTML standard's "Server-sent events" parsing): `push`
  // the text as it comes, in chunks of any size; each event ends with a blank line and goes to
  // `onEvent({type, data, id})`; `lastId` and `retry` keep the last `id:` and `retry:` fields.
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.rest = "";
    this.started = false;
    this.idBuffer = null;
    this.lastId = null; // as of the last event dispatched (what a reconnection resumes after)
    this.retry = null;
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = "";
    this.hasData = false;
  }

  push(text) {
    let buffer = this.rest + text;
    if (!this.started && buffer) {
      this.started = true;
      if (buffer.charCodeAt(0) === 0xfeff) buffer = buffer.slice(1); // a byte order mark
    }
    // A CR at the end may be the first half of a CRLF: wait for what follows.
    const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    this.rest = lines.pop() + buffer.slice(cut);
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return; // a comment (the server's keep-alive pings)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") {
      this.data += `${value}\n`;
      this.hasData = true;
    } else if (field === "event") this.type = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.idBuffer = value;
    } else if (field === "retry") {
      if (/^\d+$/.test(value)) this.retry = Number(value);
    }
  }

  dispatch() {
    this.lastId = this.idBuffer;
    const event = { type: this.type || "message", data: this.data.slice(0, -1), id: this.lastId };
    const any = this.hasData;
    this.reset();
    if (any) this.onEvent(event);
  }
}

function tileRange(bbox, z) {
  const n = 2 ** z;
  const x = (lon) => Math.min(n - 1, Math.max(0, Math.floor(((lon + 180) / 360) * n)));
  const y = (lat) => {
    const r = (Math.max(-85.05, Math.min(85.05, lat)) * Math.PI) / 180;
    return Math.min(n - 1, Math.max(0, Math.floor(((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n)));
  };
  const out = [];
  for (let tx = x(bbox[0]); tx <= x(bbox[2]); tx++) {
    for (let ty = y(bbox[3]); ty <= y(bbox[1]); ty++) out.push({ x: tx, y: ty, z });
  }
  return out;
}

export class LiveFeed {
  constructor(map, inspector, badge) {
    this.map = map;
    this.inspector = inspector;
    this.badge = badge;
    this.dirty = new Set(); // "z/x/y" of tiles changed since the browser cached them
    this.applied = 0;
    this.later = new Map();
  }

  // For `transformRequest`: a tile changed since it was cached is revalidated with the server.
  request(resource, kind) {
    if (kind !== "Tile") return undefined;
    const m = resource.match(/\/tiles\/WebMercatorQuad\/(\d+)\/(\d+)\/(\d+)/);
    if (!m) return undefined;
    const key = `${m[1]}/${m[3]}/${m[2]}`; // z/x/y (the URL has row before column)
    if (!this.dirty.has(key)) return undefined;
    this.dirty.delete(key);
    return { url: resource, cache: "no-cache" };
  }

  refresh(tiles) {
    for (const tile of tiles) this.dirty.add(`${tile.z}/${tile.x}/${tile.y}`);
    this.map.refreshTiles("twin", tiles);
  }

  start() {
    // (Again) from now, as the caller the map now is: a stream that was open is closed.
    this.stop();
    const run = { abort: new AbortController(), lastId: null, retry: RETRY_MS };
    this.run = run;
    this.follow(run);
  }

  stop() {
    if (this.run) this.run.abort.abort();
    this.run = null;
    this.setBadge(false);
  }

  async follow(run) {
    const signal = run.abort.signal;
    let failures = 0;
    while (!signal.aborted) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (run.lastId) headers["Last-Event-ID"] = run.lastId;
        const r = await send(url("events"), { headers, signal, cache: "no-store" });
        if (r.status === 401) return; // the key is refused: the map falls back and starts anew
        if (r.status === 400 && run.lastId) run.lastId = null; // a resume point it does not know
        if (!r.ok || !r.body) {
          r.body?.cancel().catch(() => {});
          throw new Error(`events: ${r.status}`);
        }
        failures = 0;
        this.setBadge(true);
        await this.read(r.body, run);
      } catch (e) {
        if (signal.aborted) return;
        failures += 1;
      }
      if (signal.aborted) return;
      this.setBadge(false);
      const wait = Math.min(RETRY_MAX_MS, run.retry * 2 ** Math.max(0, failures - 1));
      await new Promise((done) => {
        const timer = setTimeout(done, wait);
        signal.addEventListener("abort", () => { clearTimeout(timer); done(); }, { once: true });
      });
    }
  }

  async read(body, run) {
    // Until the stream ends (or is dropped, which throws).
    const parser = new EventStreamParser((event) => {
      if (event.type === "change") this.changed(event.data);
    });
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        parser.push(value);
        if (parser.lastId !== null) run.lastId = parser.lastId;
        if (parser.retry !== null) run.retry = parser.retry;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  changed(text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch (err) {
      return;
    }
    for (const change of Array.isArray(data) ? data : [data]) this.apply(change);
  }

  setBadge(on) {
    if (!this.badge) return;
    this.badge.classList.toggle("on", on);
    this.badge.dataset.live = on ? "on" : "off";
  }

  apply(change) {
    const src = this.map.getSource("twin");
    if (!src || window.twin.asof) return; // the map shows a past instant: nothing to follow
    const boxes = [change.old_bbox, change.new_bbox].filter(Boolean);
    const zoom = Math.floor(this.map.getZoom());
    const max = src.maxzoom ?? 22;
    const min = src.minzoom ?? 0;
    const tiles = [];
    if (!boxes.length || change.kind === "layer") {
      src.reload?.();
    } else {
      for (const z of new Set([zoom - 1, zoom, zoom + 1].map((v) => Math.max(min, Math.min(max, v))))) {
        for (const box of boxes) tiles.push(...tileRange(box, z));
      }
      this.refresh(tiles);
      // The server may serve a tile under changes as it held it and draw it anew in the
      // background (at most once a second): look again once that is done (a 304 if not).
      for (const tile of tiles) this.later.set(`${tile.z}/${tile.x}/${tile.y}`, tile);
      clearTimeout(this.timer);
      this.timer = setTimeout(() => {
        const again = [...this.later.values()];
        this.later.clear();
        this.refresh(again);
      }, AGAIN_MS);
    }
    this.applied += 1;
    window.twin.liveApplied = this.applied;
    if (change.collection && change.id !== undefined && change.id !== null) this.inspector.refreshIfShown(change.collection, change.id);
  }
}
