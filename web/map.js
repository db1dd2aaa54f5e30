// The planners' web map: the server's own MapLibre style (labels drawn with local fonts),
// a grouped layer panel with legend and counts, click-to-inspect, search, tools and the live
// twin. Everything is served by twin itself; nothing comes from another host. Every request
// goes as the caller (the key of this tab's session, `key.js`): what the server answers is what
// that key may see, and when the key changes the style, panel and all come again.

import { getKey, keyRejected, keyedSession, sameOrigin, url } from "./api.js";
import { t, lang, setLang } from "./i18n.js";
import { Inspector } from "./inspect.js";
import { KeyControl } from "./key.js";
import { LiveFeed } from "./live.js";
import { LayerPanel } from "./panel.js";
import { SearchBox } from "./search.js";
import { getHash, setHash } from "./state.js";
import { Tools } from "./tools.js";

window.twin = { asof: getHash("asof") };
const startedWithView = Boolean(getHash("view")); // a shared link's view wins over fitting the data
let live = null;
let tools = null;
let generation = 0; // of the caller: one more each time the key changes
window.twin.rebuilds = 0;

function transformRequest(resource, kind) {
  let out = { url: resource };
  if (window.twin.asof && kind === "Tile" && resource.includes("/tiles/WebMercatorQuad/")) {
    // The time slider: tiles of the twin as recorded at an earlier instant (`asof`).
    const u = new URL(resource);
    u.searchParams.set("asof", window.twin.asof);
    out = { url: u.href };
  } else if (live) {
    out = live.request(resource, kind) || out;
  }
  if (sameOrigin(out.url)) {
    // As the caller: its key, and never an answer the browser cached for another caller.
    const key = getKey();
    if (key) out.headers = { Authorization: `Bearer ${key}` };
    if (keyedSession()) out.cache = "no-cache";
  }
  return out;
}

const map = new maplibregl.Map({
  container: "map",
  style: url("style.json"),
  hash: "view",
  attributionControl: { compact: false },
  localIdeographFontFamily: "'Noto Sans CJK SC', 'Noto Sans SC', 'Source Han Sans SC', 'PingFang SC', 'Microsoft YaHei', sans-serif",
  transformRequest,
});
map.addControl(new maplibregl.NavigationControl(), "bottom-right");
map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-left");
window.twinMap = map; // for tests and the console

const inspector = new Inspector(map, null, document.getElementById("inspect"));
const panel = new LayerPanel(map, document.getElementById("layer-groups"));
window.twin.inspector = inspector;
window.twin.panel = panel;

function fitToData() {
  const source = map.getSource("twin");
  const bounds = source && source.bounds;
  if (bounds && !startedWithView) map.fitBounds(bounds, { padding: 30, duration: 0 });
}

map.on("load", async () => {
  const gen = generation;
  fitToData();
  tools = new Tools(map, inspector, document.getElementById("tool"));
  window.twin.tools = tools;
  for (const button of document.querySelectorAll("#toolbar button[data-tool]")) {
    button.addEventListener("click", () => {
      if (tools.tool === button.dataset.tool) tools.close();
      else tools[button.dataset.tool]();
    });
  }
  map.on("click", async (e) => {
    if (tools.drawing) return tools.addPoint(e.lngLat);
    if (tools.pipePick) {
      // Pressure mains (water, gas, heat) are isolated by valves; sewers and storm drains are not.
      const pipes = inspector.featuresAt(e.point).filter((f) => f.sourceLayer === "pipes");
      const pipe = pipes.find((f) => !["sewer", "storm"].includes(f.properties.network)) || pipes[0];
      if (pipe && (await tools.pipePick("pipes", pipe.id, pipe.properties.network))) return;
    }
    inspector.click(e.point);
  });
  map.on("dblclick", (e) => {
    if (tools.drawing) {
      e.preventDefault();
      tools.finish();
    }
  });
  new SearchBox(map, inspector, document.getElementById("search"), document.getElementById("search-results"));
  live = new LiveFeed(map, inspector, document.getElementById("live"));
  live.start();
  await panel.build();
  const sel = getHash("sel");
  if (sel && sel.includes("/")) {
    const at = sel.indexOf("/");
    inspector.open(sel.slice(0, at), sel.slice(at + 1)).catch(() => inspector.clear());
  }
  if (gen === generation) window.twin.ready = true; // (else once the new caller's style is in)
});

map.on("error", (e) => {
  // The key was refused (expired, revoked) on a style, TileJSON, tile or glyph request.
  if (e.error?.status === 401) return keyRejected(getKey());
  // Tile and style problems are told once on the console, not for every tile.
  if (!window.twin.mapError) console.warn("map:", e.error?.message || e);
  window.twin.mapError = e.error?.message || String(e);
});

// -- the caller ---------------------------------------------------------------------------

function rebuild() {
  // The caller changed: what was shown for the one before goes, and the style (so the layers,
  // legend and panel), the collections and the event stream come again from the server.
  window.twin.ready = false;
  generation += 1;
  inspector.forget();
  tools?.forget();
  live?.stop();
  map.setStyle(url("style.json"), { diff: false });
}

map.on("style.load", async () => {
  if (!tools) return; // the first style: the map's "load" sets everything up
  const gen = generation;
  tools.addLayers();
  live.start();
  await panel.build();
  if (gen !== generation) return; // the caller changed again meanwhile
  window.twin.rebuilds += 1;
  window.twin.ready = true;
});

const byId = (id) => document.getElementById(id);
window.twin.key = new KeyControl({
  button: byId("key-button"),
  state: byId("key-state"),
  form: byId("key-form"),
  input: byId("key-input"),
  forget: byId("key-forget"),
  message: byId("key-message"),
}, rebuild);

function setAsOf(value) {
  // `value`: an ISO instant, or null for now (the live twin).
  window.twin.asof = value;
  setHash({ asof: value });
  const input = document.getElementById("asof");
  input.value = value ? toLocalInput(new Date(value)) : "";
  showPast(value);
  const source = map.getSource("twin");
  if (source) source.setUrl(url("tiles/WebMercatorQuad/tilejson.json"));
}

function showPast(value) {
  document.body.classList.toggle("past", Boolean(value));
  const badge = document.getElementById("asof-badge");
  badge.hidden = !value;
  badge.textContent = value ? `${t("asof")} ${toLocalInput(new Date(value)).replace("T", " ")} · ${t("now")} ↻` : "";
}

function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

document.getElementById("asof").addEventListener("change", (e) => {
  setAsOf(e.target.value ? new Date(e.target.value).toISOString() : null);
});
document.getElementById("asof-now").addEventListener("click", () => setAsOf(null));
document.getElementById("asof-badge").addEventListener("click", () => setAsOf(null));
if (window.twin.asof) {
  document.getElementById("asof").value = toLocalInput(new Date(window.twin.asof));
  showPast(window.twin.asof);
}
window.twin.setAsOf = setAsOf;

document.getElementById("lang").addEventListener("click", () => {
  setLang(lang === "zh" ? "en" : "zh");
  setHash({ lang });
  panel.render();
  if (inspector.selected) inspector.open(inspector.selected.collection, inspector.selected.id);
});
document.getElementById("collapse").addEventListener("click", () => {
  const collapsed = document.body.classList.toggle("panel-collapsed");
  document.getElementById("collapse").setAttribute("aria-expanded", collapsed ? "false" : "true");
  setTimeout(() => map.resize(), 0);
});
document.addEventListener("keydown", (e) => {
  // Escape closes the open tool, else the open feature.
  if (e.key !== "Escape" || e.target.id === "search") return;
  const tools = window.twin.tools;
  if (tools && tools.tool) tools.close();
  else inspector.clear();
});
setLang(lang);
window.twin.t = t;
