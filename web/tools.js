// The tools: measure a distance or an area; draw a point, line or polygon and ask what is near
// it or meets it; the buffer of a picked asset; the dig check (conflicts with depth and
// clearance, as CSV); the isolation trace of a water or gas pipe; grid cells shaded by a
// statistic. Every answer comes from the server's query API; what it names is highlighted
// (feature state `hit`) and listed.

import { el, getJSON, postJSON, formatNumber } from "./api.js";
import { t, pick, fieldName } from "./i18n.js";
import { labelOf } from "./inspect.js";
import { layerTitle } from "./panel.js";

const R = 6371008.8; // mean Earth radius, metres

export function lengthM(coords) {
  let sum = 0;
  for (let i = 1; i < coords.length; i++) {
    const [x1, y1] = coords[i - 1].map((d) => (d * Math.PI) / 180);
    const [x2, y2] = coords[i].map((d) => (d * Math.PI) / 180);
    const h = Math.sin((y2 - y1) / 2) ** 2 + Math.cos(y1) * Math.cos(y2) * Math.sin((x2 - x1) / 2) ** 2;
    sum += 2 * R * Math.asin(Math.sqrt(h));
  }
  return sum;
}

export function areaM2(coords) {
  // Spherical excess of the ring (lon/lat), as an equal-area measure on the sphere.
  let sum = 0;
  const ring = [...coords, coords[0]];
  for (let i = 1; i < ring.length; i++) {
    const [x1, y1] = ring[i - 1].map((d) => (d * Math.PI) / 180);
    const [x2, y2] = ring[i].map((d) => (d * Math.PI) / 180);
    sum += (x2 - x1) * (2 + Math.sin(y1) + Math.sin(y2));
  }
  return Math.abs((sum * R * R) / 2);
}

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** A button that saves `csv` as the file `name`. */
function csvButton(id, name, csv) {
  return el("button", {
    type: "button", id,
    onclick: () => {
      const a = el("a", { href: URL.createObjectURL(new Blob([csv], { type: "text/csv" })), download: name });
      document.body.append(a);
      a.click();
      a.remove();
    },
  }, t("csv"));
}

export function toCsv(rows, columns) {
  return [columns.join(","), ...rows.map((r) => columns.map((c) => csvCell(r[c])).join(","))].join("\n") + "\n";
}

export const DIG_COLUMNS = ["collection", "id", "label", "distance_m", "depth_m", "dig_depth_m", "clearance_m", "reached"];

export class Tools {
  constructor(map, inspector, root) {
    this.map = map;
    this.inspector = inspector;
    this.root = root;
    this.hits = [];
    this.coords = [];
    this.mode = null;
    this.tool = null;
    this.addLayers();
  }

  addLayers() {
    // What the tools draw, over the server's style (again after the style is loaded anew).
    const map = this.map;
    if (map.getSource("twin-draw")) return;
    map.addSource("twin-draw", { type: "geojson", data: empty() });
    map.addSource("twin-result", { type: "geojson", data: empty() });
    map.addLayer({ id: "twin-result-fill", type: "fill", source: "twin-result", paint: { "fill-color": "#7b2cbf", "fill-opacity": 0.12 } });
    map.addLayer({ id: "twin-result-line", type: "line", source: "twin-result", paint: { "line-color": "#7b2cbf", "line-width": 2, "line-dasharray": [2, 1] } });
    map.addLayer({ id: "twin-draw-fill", type: "fill", source: "twin-draw", filter: ["==", ["geometry-type"], "Polygon"], paint: { "fill-color": "#000", "fill-opacity": 0.08 } });
    map.addLayer({ id: "twin-draw-line", type: "line", source: "twin-draw", paint: { "line-color": "#111", "line-width": 2 } });
    map.addLayer({ id: "twin-draw-point", type: "circle", source: "twin-draw", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-radius": 4, "circle-color": "#fff", "circle-stroke-color": "#111", "circle-stroke-width": 2 } });
  }

  // -- drawing ----------------------------------------------------------------------------

  get drawing() {
    return this.mode !== null;
  }

  startDrawing(mode) {
    this.mode = mode;
    this.coords = [];
    this.map.doubleClickZoom.disable();
    this.map.getCanvas().style.cursor = "crosshair";
    this.redraw();
  }

  stopDrawing() {
    this.mode = null;
    this.map.doubleClickZoom.enable();
    this.map.getCanvas().style.cursor = "";
  }

  geometry() {
    const c = this.coords;
    if (!c.length) return null;
    if (this.drawnMode === "point" || c.length === 1) return { type: "Point", coordinates: c[0] };
    if (this.drawnMode === "polygon" && c.length >= 3) return { type: "Polygon", coordinates: [[...c, c[0]]] };
    return { type: "LineString", coordinates: c };
  }

  addPoint(lngLat) {
    const p = [lngLat.lng, lngLat.lat];
    if (this.mode === "point") this.coords = [p];
    else this.coords.push(p);
    this.drawnMode = this.mode;
    this.redraw();
    if (this.mode === "point") this.finish();
  }

  redraw() {
    const features = this.coords.map((c) => ({ type: "Feature", geometry: { type: "Point", coordinates: c }, properties: {} }));
    const g = this.geometry();
    if (g && g.type !== "Point") features.push({ type: "Feature", geometry: g, properties: {} });
    this.map.getSource("twin-draw").setData({ type: "FeatureCollection", features });
    if (this.onDraw) this.onDraw();
  }

  finish() {
    this.stopDrawing();
    if (this.onFinish) this.onFinish();
  }

  // -- results ----------------------------------------------------------------------------

  setHits(features) {
    for (const h of this.hits) this.map.setFeatureState({ source: "twin", sourceLayer: h.collection, id: h.id }, { hit: false });
    this.hits = (features || []).filter((f) => f.collection).map((f) => ({ collection: f.collection, id: f.id }));
    for (const h of this.hits) this.map.setFeatureState({ source: "twin", sourceLayer: h.collection, id: h.id }, { hit: true });
  }

  showArea(geometry) {
    const data = geometry ? { type: "FeatureCollection", features: [{ type: "Feature", geometry, properties: {} }] } : empty();
    this.map.getSource("twin-result").setData(data);
  }

  reset() {
    this.stopDrawing();
    this.coords = [];
    this.drawnMode = null;
    this.redraw();
    this.setHits([]);
    this.showArea(null);
    this.map.removeFeatureState({ source: "twin", sourceLayer: "grids" });
    this.pipePick = null;
    if (this.onMoved) this.map.off("moveend", this.onMoved);
    this.onMoved = null;
  }

  close() {
    this.reset();
    this.closeCard();
  }

  closeCard() {
    this.onDraw = this.onFinish = null;
    this.tool = null;
    this.root.hidden = true;
    this.root.replaceChildren();
    for (const b of document.querySelectorAll("#toolbar button")) b.setAttribute("aria-pressed", "false");
  }

  forget() {
    // The caller changed and the style goes, and with it what the tools drew and found (the
    // map's style is not asked: it may still be loading).
    this.stopDrawing();
    this.coords = [];
    this.drawnMode = null;
    this.hits = [];
    this.pipePick = null;
    if (this.onMoved) this.map.off("moveend", this.onMoved);
    this.onMoved = null;
    this.closeCard();
  }

  card(name, ...children) {
    this.reset();
    this.onDraw = null; // `onFinish` was just set by this tool's drawControls, if it draws
    this.tool = name;
    for (const b of document.querySelectorAll("#toolbar button")) b.setAttribute("aria-pressed", b.dataset.tool === name ? "true" : "false");
    const close = el("button", { type: "button", class: "close", title: t("close"), "aria-label": t("close"), onclick: () => this.close() }, "×");
    this.root.replaceChildren(close, el("h2", {}, t(name)), ...children);
    this.root.hidden = false;
    this.root.dataset.tool = name;
  }

  results(title, features, extra) {
    const out = el("div", { class: "results", id: "tool-results" });
    out.append(el("h3", {}, `${title}: ${features.length}`));
    if (extra) out.append(extra);
    const list = el("ul", { class: "result-list" });
    for (const f of features) {
      list.append(el("li", { dataset: { collection: f.collection, id: f.id } },
        el("button", { type: "button", onclick: () => this.inspector.open(f.collection, f.id) },
          el("span", { class: "pick-layer" }, layerTitle(f.collection)), " ", labelOf(f.properties, f.id),
          f.distance_m !== undefined ? el("span", { class: "muted" }, ` ${formatNumber(f.distance_m)} m`) : null)));
    }
    out.append(list);
    return out;
  }

  drawControls(modes, run) {
    const buttons = el("div", { class: "row" }, modes.map((m) => el("button", {
      type: "button", dataset: { draw: m }, onclick: () => this.startDrawing(m),
    }, t(m))), el("button", { type: "button", dataset: { action: "finish" }, onclick: () => this.finish() }, t("finish")));
    this.onFinish = run;
    return [el("p", { class: "muted" }, t("drawHint")), buttons];
  }

  status(text) {
    let out = this.root.querySelector(".results");
    if (!out) this.root.append((out = el("div", { class: "results" })));
    out.replaceChildren(el("p", { class: "muted" }, text));
  }

  fail(e) {
    this.status(String(e.message || e));
  }

  // -- the tools --------------------------------------------------------------------------

  measure() {
    const readout = el("p", { class: "readout", id: "measure-readout" }, "—");
    this.card("measure", ...this.drawControls(["line", "polygon"], () => {}), readout);
    this.onDraw = () => {
      const c = this.coords;
      const parts = [`${t("length")}: ${formatNumber(lengthM(c), 1)} m`];
      if (this.drawnMode === "polygon" && c.length >= 3) {
        parts[0] = `${t("length")}: ${formatNumber(lengthM([...c, c[0]]), 1)} m`;
        parts.push(`${t("area")}: ${formatNumber(areaM2(c), 0)} m²`);
      }
      readout.textContent = parts.join(" · ");
    };
    this.startDrawing("line");
  }

  distanceInput(value) {
    return el("input", { type: "number", min: 0, max: 5000, step: 1, value, id: "tool-distance", "aria-label": t("distance") });
  }

  near() {
    const dist = this.distanceInput(50);
    const run = async () => {
      const g = this.geometry();
      if (!g) return;
      const [lon, lat] = g.type === "Point" ? g.coordinates : g.coordinates[0];
      try {
        const fc = await getJSON("query/near", { lon, lat, radius: dist.value, limit: 500 });
        window.twin.lastAnswer = fc;
        this.setHits(fc.features);
        this.root.querySelector(".results")?.remove();
        this.root.append(this.results(t("results"), fc.features));
      } catch (e) { this.fail(e); }
    };
    this.card("near", el("label", {}, t("distance"), " ", dist), ...this.drawControls(["point"], run));
    this.startDrawing("point");
  }

  intersects() {
    const dist = this.distanceInput(0);
    const run = async () => {
      const g = this.geometry();
      if (!g) return;
      const body = { geometry: g, buffer_m: Number(dist.value) || 0, limit: 1000 };
      window.twin.lastRequest = body;
      try {
        const fc = await postJSON("query/intersects", body);
        window.twin.lastAnswer = fc;
        this.setHits(fc.features);
        this.showArea(fc.area);
        this.root.querySelector(".results")?.remove();
        this.root.append(this.results(t("results"), fc.features));
      } catch (e) { this.fail(e); }
    };
    this.card("intersects", el("label", {}, t("distance"), " ", dist), ...this.drawControls(["point", "line", "polygon"], run));
    this.startDrawing("polygon");
  }

  buffer() {
    const dist = this.distanceInput(25);
    const picked = el("p", { class: "muted", id: "buffer-asset" }, t("pickAsset"));
    const run = async () => {
      const sel = this.inspector.selected;
      if (!sel) return this.status(t("pickAsset"));
      picked.textContent = `${layerTitle(sel.collection)} ${sel.id}`;
      try {
        const fc = await getJSON("query/buffer", { collection: sel.collection, id: sel.id, distance: dist.value, limit: 1000 });
        window.twin.lastAnswer = fc;
        this.setHits(fc.features);
        this.showArea(fc.buffer);
        this.root.querySelector(".results")?.remove();
        this.root.append(this.results(t("results"), fc.features));
      } catch (e) { this.fail(e); }
    };
    this.card("buffer", el("label", {}, t("distance"), " ", dist), picked,
      el("div", { class: "row" }, el("button", { type: "button", dataset: { action: "run" }, onclick: run }, t("run"))));
  }

  dig() {
    const depth = el("input", { type: "number", min: 0, max: 200, step: 0.1, value: 2, id: "dig-depth", "aria-label": t("depth") });
    const clearance = this.distanceInput(1);
    const run = async () => {
      const g = this.geometry();
      if (!g) return;
      const dig = Number(depth.value) || 0;
      const body = { geometry: g, buffer_m: Number(clearance.value) || 0, dig_depth_m: dig, limit: 1000 };
      window.twin.lastRequest = body;
      try {
        const fc = await postJSON("query/intersects", body);
        window.twin.lastAnswer = fc;
        this.setHits(fc.features);
        this.showArea(fc.area);
        const rows = fc.features.map((f) => {
          const d = f.properties?.depth_m;
          return {
            collection: f.collection, id: f.id, label: labelOf(f.properties, f.id), distance_m: f.distance_m,
            depth_m: d ?? "", dig_depth_m: dig,
            clearance_m: typeof d === "number" ? Math.round((d - dig) * 1000) / 1000 : "",
            reached: f.reached === undefined ? "" : f.reached,
          };
        });
        const csv = toCsv(rows, DIG_COLUMNS);
        window.twin.lastCsv = csv;
        const heads = [t("collection"), t("asset"), t("distance"), fieldName("depth_m"), t("clearance"), t("reaches")];
        const table = el("table", { class: "attrs conflicts" }, el("tr", {}, heads.map((h) => el("th", {}, h))));
        for (const r of rows) {
          table.append(el("tr", { class: r.reached === true ? "reached" : "" }, el("td", {}, layerTitle(r.collection)), el("td", {}, r.label),
            el("td", {}, `${formatNumber(r.distance_m)} m`), el("td", {}, r.depth_m === "" ? "—" : `${r.depth_m} m`),
            el("td", {}, r.clearance_m === "" ? "—" : `${r.clearance_m} m`), el("td", {}, r.reached === true ? "⚠" : r.reached === false ? "✓" : "")));
        }
        const download = csvButton("dig-csv", "dig-check.csv", csv);
        this.root.querySelector(".results")?.remove();
        this.root.append(el("div", { class: "results", id: "tool-results" },
          el("h3", {}, `${t("conflicts")}: ${rows.length}`), download, table));
      } catch (e) { this.fail(e); }
    };
    this.card("dig", el("label", {}, t("depth"), " ", depth), el("label", {}, t("buffer"), " (m) ", clearance),
      ...this.drawControls(["polygon", "line"], run));
    this.startDrawing("polygon");
  }

  isolate() {
    this.card("isolate", el("p", { class: "muted" }, t("pickPipe")));
    this.pipePick = async (collection, id, network) => {
      if (collection !== "pipes") return false;
      if (network === "sewer" || network === "storm") return this.trace(id);
      try {
        const answer = await getJSON(`collections/pipes/items/${encodeURIComponent(id)}/isolation`);
        window.twin.lastAnswer = answer;
        const valves = answer.valves_to_close.features;
        const pipes = answer.pipes.features;
        this.setHits([...valves, ...pipes]);
        this.showArea(null);
        const affected = answer.affected.features;
        this.root.querySelector(".results")?.remove();
        const box = el("div", { class: "results", id: "tool-results" },
          el("p", { class: "readout" }, `${t("pipesCut")}: ${pipes.length} · ${t("length")} ${formatNumber(answer.length_m)} m`));
        const v = this.results(t("valvesToClose"), valves);
        v.id = "isolation-valves";
        box.append(v, this.results(t("affected"), affected));
        this.root.append(box);
      } catch (e) { this.fail(e); }
      return true;
    };
  }

  async trace(id) {
    // Gravity pipes have no valves: where a spill there flows, and what drains into it.
    try {
      const [down, up] = await Promise.all(["downstream", "upstream"].map((d) =>
        getJSON(`collections/pipes/items/${encodeURIComponent(id)}/${d}`)));
      window.twin.lastAnswer = { downstream: down, upstream: up };
      this.setHits([...down.pipes.features, ...up.pipes.features]);
      this.root.querySelector(".results")?.remove();
      this.root.append(el("div", { class: "results", id: "tool-results" },
        el("p", { class: "readout" }, `${t("downstream")}: ${down.pipes.features.length} · ${formatNumber(down.length_m)} m`),
        el("p", { class: "readout" }, `${t("upstream")}: ${up.pipes.features.length} · ${formatNumber(up.length_m)} m`)));
    } catch (e) { this.fail(e); }
    return true;
  }

  table() {
    // What is in view of one layer, as a table: sortable by any column, exported as CSV.
    const names = (this.map.getStyle().metadata?.["twin:layers"] || []);
    const which = el("select", { id: "table-layer" }, names.map((n) => el("option", { value: n }, layerTitle(n))));
    const run = async () => {
      const b = this.map.getBounds();
      const bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => v.toFixed(6)).join(",");
      try {
        const fc = await getJSON(`collections/${which.value}/items`, { bbox, limit: 1000 });
        window.twin.lastAnswer = fc;
        this.renderTable(which.value, fc);
      } catch (e) { this.fail(e); }
    };
    which.addEventListener("change", run);
    this.card("table", el("label", {}, t("collection"), " ", which));
    this.onMoved = () => this.tool === "table" && run();
    this.map.on("moveend", this.onMoved);
    run();
  }

  renderTable(collection, fc, sortBy = null, descending = false) {
    const columns = ["id", ...new Set(fc.features.flatMap((f) => Object.keys(f.properties || {})))];
    const value = (f, c) => (c === "id" ? f.id : f.properties?.[c]);
    const rows = [...fc.features];
    if (sortBy) {
      rows.sort((a, b) => {
        const x = value(a, sortBy), y = value(b, sortBy);
        const order = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
        return descending ? -order : order;
      });
    }
    const csv = toCsv(rows.map((f) => Object.fromEntries(columns.map((c) => [c, value(f, c)]))), columns);
    window.twin.lastTableCsv = csv;
    const head = el("tr", {}, columns.map((c) => el("th", {}, el("button", {
      type: "button", class: "link", dataset: { column: c },
      onclick: () => this.renderTable(collection, fc, c, sortBy === c ? !descending : false),
    }, fieldName(c) + (sortBy === c ? (descending ? " ▼" : " ▲") : "")))));
    const table = el("table", { class: "attrs wide", id: "attribute-table" }, head);
    for (const f of rows.slice(0, 500)) {
      table.append(el("tr", { dataset: { id: f.id }, onclick: () => this.inspector.open(collection, f.id) },
        columns.map((c) => el("td", {}, value(f, c) === null || value(f, c) === undefined ? "" : String(value(f, c))))));
    }
    const download = csvButton("table-csv", `${collection}.csv`, csv);
    this.root.querySelector(".results")?.remove();
    this.root.append(el("div", { class: "results", id: "tool-results" },
      el("h3", {}, `${fc.numberReturned} / ${fc.numberMatched ?? fc.numberReturned} ${t("features")}`), download,
      el("div", { class: "table-scroll" }, table)));
  }

  stats() {
    const level = el("select", { id: "stats-level" }, ["district", "street", "community", "cell"].map((l) => el("option", { value: l, selected: l === "community" }, t("levels")[l])));
    const year = new Date().getFullYear() - 30;
    const choices = {
      lampsOut: { collections: "lights", filter: "status = 'fault'" },
      oldPipes: { collections: "pipes", filter: `install_year < ${year}` },
      openSites: { collections: "sites" },
      pipeLength: { collections: "pipes" },
    };
    const what = el("select", { id: "stats-what" }, Object.keys(choices).map((k) => el("option", { value: k }, t(k))));
    const run = async () => {
      const c = choices[what.value];
      try {
        const fc = await getJSON("query/stats", { level: level.value, ...c });
        window.twin.lastAnswer = fc;
        this.map.removeFeatureState({ source: "twin", sourceLayer: "grids" });
        const key = (p) => Object.keys(p).find((k) => k.startsWith(`${c.collections}_`) && (what.value !== "pipeLength" || k.includes("length")));
        const values = fc.features.map((f) => Number(f.properties[key(f.properties)] || 0));
        const top = Math.max(1e-9, ...values);
        fc.features.forEach((f, i) => this.map.setFeatureState({ source: "twin", sourceLayer: "grids", id: f.id }, { shaded: true, shade: values[i] / top }));
        const rows = fc.features.map((f, i) => ({ f, v: values[i] })).sort((a, b) => b.v - a.v);
        const table = el("table", { class: "attrs" });
        for (const { f, v } of rows.slice(0, 30)) {
          table.append(el("tr", {}, el("th", {}, el("button", { type: "button", class: "link", onclick: () => this.inspector.open("grids", f.id) }, f.properties.name || f.id)), el("td", {}, formatNumber(v))));
        }
        this.root.querySelector(".results")?.remove();
        this.root.append(el("div", { class: "results", id: "tool-results" }, el("h3", {}, `${fc.features.length} ${t("cells")}`), table));
      } catch (e) { this.fail(e); }
    };
    level.addEventListener("change", run);
    what.addEventListener("change", run);
    this.card("stats", el("label", {}, t("level"), " ", level), el("label", {}, t("statistic"), " ", what));
    run();
  }
}

function empty() {
  return { type: "FeatureCollection", features: [] };
}

export { pick };
