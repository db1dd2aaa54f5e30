// The live twin: the map follows GET /events (Server-Sent Events). Each change names its
// collection and its box before and after; only the vector tiles those boxes touch are fetched
// again (revalidated past the browser's cache), so a lamp that fails shows its fault mark
// without a reload, and an open feature panel is refreshed.

import { url } from "./api.js";

const AGAIN_MS = 1300; // the server's TWIN_TILES_REFRESH_S (1 s), and a little more

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
    const source = new EventSource(url("events"));
    source.addEventListener("open", () => this.setBadge(true));
    source.addEventListener("error", () => this.setBadge(false));
    source.addEventListener("change", (e) => {
      let data;
      try {
        data = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      for (const change of Array.isArray(data) ? data : [data]) this.apply(change);
    });
    this.source = source;
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
