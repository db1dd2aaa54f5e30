// The layer panel: every layer the caller may see, grouped as the style's metadata groups them,
// with readable titles, counts and the legend of each (drawn from the same style), per-network
// toggles shared by pipes and valves, and the terrain rasters. What is switched off is kept in
// the URL (#off=lights,net:gas).

import { el, getJSON, formatNumber } from "./api.js";
import { t, pick } from "./i18n.js";
import { getHash, setHash } from "./state.js";

const NETWORK_LAYERS = ["pipes", "valves"];

export function swatch(entry) {
  // A small SVG of one legend entry: line, dash, circle, ring, fill or mark.
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", "22");
  svg.setAttribute("height", "14");
  svg.setAttribute("aria-hidden", "true");
  svg.classList.add("swatch");
  const add = (tag, attrs) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    svg.append(n);
    return n;
  };
  const c = entry.colour, s = entry.stroke || "none";
  switch (entry.swatch) {
    case "line":
      if (entry.stroke) add("line", { x1: 1, y1: 7, x2: 21, y2: 7, stroke: s, "stroke-width": 6, "stroke-linecap": "round" });
      add("line", { x1: 1, y1: 7, x2: 21, y2: 7, stroke: c, "stroke-width": entry.stroke ? 3.5 : 3, "stroke-linecap": "round" });
      break;
    case "dash":
      add("line", { x1: 1, y1: 7, x2: 21, y2: 7, stroke: c, "stroke-width": 2, "stroke-dasharray": "4 2" });
      break;
    case "circle":
    case "ring": {
      const r = (entry.size || 10) / 2;
      add("circle", { cx: 11, cy: 7, r, fill: c, stroke: s, "stroke-width": entry.swatch === "ring" ? 2.5 : 1.5 });
      break;
    }
    case "fill":
      add("rect", { x: 2, y: 2, width: 18, height: 10, fill: c, stroke: s, "stroke-width": 1.2 });
      break;
    case "mark":
      add("circle", { cx: 11, cy: 7, r: 5.5, fill: "#fff", stroke: entry.stroke || "#999", "stroke-width": 2 });
      add("text", { x: 11, y: 10.5, "text-anchor": "middle", "font-size": 10, "font-weight": "bold", fill: c })
        .textContent = entry.text || "";
      break;
  }
  return svg;
}

export class LayerPanel {
  constructor(map, root) {
    this.map = map;
    this.root = root;
    this.baseFilters = {};
    this.off = new Set((getHash("off") || "").split(",").filter(Boolean));
  }

  async build() {
    // (Again, after the caller changed: what the server now lists for it.)
    const style = this.map.getStyle();
    const meta = style.metadata || {};
    this.baseFilters = {};
    const built = (this.builds = (this.builds || 0) + 1);
    for (const layer of style.layers) {
      if (NETWORK_LAYERS.includes(layer["source-layer"])) this.baseFilters[layer.id] = layer.filter || null;
    }
    let collections = [];
    try {
      collections = (await getJSON("collections")).collections;
    } catch (e) {
      collections = [];
    }
    if (built !== this.builds) return; // the caller changed meanwhile: a newer build is on its way
    this.info = Object.fromEntries(collections.map((c) => [c.id, c]));
    this.meta = meta;
    this.render();
    this.apply();
  }

  layerIds(collection) {
    return this.map.getStyle().layers.filter((l) => l["source-layer"] === collection).map((l) => l.id);
  }

  render() {
    const meta = this.meta;
    const legend = meta["twin:legend"] || {};
    const nets = meta["twin:networks"] || {};
    this.root.replaceChildren();
    for (const group of meta["twin:groups"] || []) {
      const body = el("div", { class: "group-body" });
      const details = el("details", { class: "group", open: true, dataset: { group: group.id } },
        el("summary", {}, pick(group.title)), body);
      for (const name of group.collections) {
        const info = this.info[name] || {};
        const box = el("input", { type: "checkbox", dataset: { collection: name } });
        box.checked = !this.off.has(name);
        box.addEventListener("change", () => this.toggle(name, box.checked));
        const count = info.numberOfFeatures ?? "";
        const row = el("label", { class: "layer-row" }, box,
          el("span", { class: "layer-title" }, layerTitle(name, info)),
          el("span", { class: "count", title: t("features") }, count === "" ? "" : formatNumber(count)));
        const entries = (legend[name] || []).filter((e) => !(NETWORK_LAYERS.includes(name) && e.filter));
        const keys = el("ul", { class: "legend" }, entries.map((e) => el("li", {}, swatch(e), pick(e.label))));
        body.append(el("div", { class: "layer" }, row, entries.length ? keys : null));
      }
      if (group.id === "networks") body.append(this.networkToggles(nets));
      this.root.append(details);
    }
    const rasters = this.map.getStyle().layers.filter((l) => l.type === "raster");
    if (rasters.length) {
      const body = el("div", { class: "group-body" });
      for (const layer of rasters) {
        const kind = layer.metadata?.["twin:kind"] || "hillshade";
        const box = el("input", { type: "checkbox", dataset: { raster: layer.id } });
        box.checked = !this.off.has(layer.id);
        box.addEventListener("change", () => this.toggle(layer.id, box.checked, [layer.id]));
        body.append(el("label", { class: "layer-row" }, box, el("span", { class: "layer-title" }, t(kind))));
      }
      this.root.append(el("details", { class: "group", open: true, dataset: { group: "rasters" } },
        el("summary", {}, t("basemap")), body));
    }
  }

  networkToggles(nets) {
    const list = el("ul", { class: "networks" });
    for (const [net, info] of Object.entries(nets)) {
      const box = el("input", { type: "checkbox", dataset: { network: net } });
      box.checked = !this.off.has(`net:${net}`);
      box.addEventListener("change", () => {
        if (box.checked) this.off.delete(`net:${net}`);
        else this.off.add(`net:${net}`);
        this.apply();
      });
      list.append(el("li", {}, el("label", { class: "layer-row" }, box,
        swatch({ swatch: "line", colour: info.colour }),
        swatch({ swatch: "circle", colour: info.colour, stroke: "#fff", size: 9 }),
        el("span", { class: "layer-title" }, pick(info.title)))));
    }
    return list;
  }

  toggle(name, on, ids) {
    if (on) this.off.delete(name);
    else this.off.add(name);
    this.apply(ids);
  }

  visible(collection) {
    return !this.off.has(collection);
  }

  apply() {
    const style = this.map.getStyle();
    for (const layer of style.layers) {
      const key = layer["source-layer"] || (layer.type === "raster" ? layer.id : null);
      if (!key) continue;
      const shown = !this.off.has(key);
      this.map.setLayoutProperty(layer.id, "visibility", shown ? "visible" : "none");
    }
    const hidden = [...this.off].filter((k) => k.startsWith("net:")).map((k) => k.slice(4));
    const allowed = Object.keys(this.meta["twin:networks"] || {}).filter((n) => !hidden.includes(n));
    for (const [id, base] of Object.entries(this.baseFilters)) {
      const nets = ["in", ["coalesce", ["get", "network"], ""], ["literal", ["", ...allowed]]];
      const filter = hidden.length ? (base ? ["all", base, nets] : nets) : base;
      this.map.setFilter(id, filter);
    }
    setHash({ off: [...this.off].join(",") || null });
  }
}

export function layerTitle(name, info) {
  const titles = {
    pipes: ["Pipes", "管线"], valves: ["Valves and fittings", "阀门与附属设施"], roads: ["Roads", "道路"],
    bridges: ["Bridges", "桥梁"], lights: ["Street lights", "路灯"], parks: ["Parks", "公园绿地"],
    grids: ["Management grid", "管理网格"], sites: ["Construction sites", "施工工地"], water: ["Water", "水系"],
  };
  const known = titles[name];
  if (known) return pick({ en: known[0], zh: known[1] });
  return (info && info.title) || name;
}
