// Click and inspect: a click lists every feature drawn there (lamps on pipes, pipes under
// bridges, the grid cells it falls in), one is picked and shown: attributes with readable names
// and units, the latest readings and history from the live twin, links to its JSON and page.

import { el, getJSON, itemPath, url } from "./api.js";
import { t, fieldName, unitOf, pick } from "./i18n.js";
import { layerTitle } from "./panel.js";
import { setHash } from "./state.js";

// Points before lines before areas: what sits on top is listed first.
const RANK = { lights: 0, valves: 1, pipes: 2, bridges: 3, roads: 4, sites: 5, parks: 6, water: 7, grids: 8 };
const LABELS = ["name", "code", "permit_id", "pipe_id", "valve_id", "light_id", "park_id", "site_id"];

export function labelOf(props, id) {
  for (const k of LABELS) if (props && props[k]) return String(props[k]);
  return String(id);
}

export class Inspector {
  constructor(map, panel, root) {
    this.map = map;
    this.panel = panel;
    this.root = root;
    this.selected = null;
    this.queryables = {};
  }

  featuresAt(point) {
    const box = [[point.x - 5, point.y - 5], [point.x + 5, point.y + 5]];
    const seen = new Map();
    for (const f of this.map.queryRenderedFeatures(box)) {
      if (f.source !== "twin" || f.id === undefined) continue;
      const key = `${f.sourceLayer}\u0000${f.id}`;
      if (!seen.has(key)) seen.set(key, f);
    }
    return [...seen.values()].sort((a, b) => (RANK[a.sourceLayer] ?? 9) - (RANK[b.sourceLayer] ?? 9)
      || String(a.properties.level || "").localeCompare(String(b.properties.level || "")));
  }

  click(point) {
    const hits = this.featuresAt(point);
    if (!hits.length) return this.clear();
    if (hits.length === 1) return this.open(hits[0].sourceLayer, hits[0].id);
    this.showList(hits);
  }

  showList(hits) {
    this.select(null);
    const list = el("ul", { class: "pick-list", id: "pick-list" });
    for (const f of hits) {
      const item = el("li", {}, el("button", {
        type: "button",
        dataset: { collection: f.sourceLayer, id: f.id },
        onclick: () => this.open(f.sourceLayer, f.id),
        onmouseenter: () => this.highlight({ collection: f.sourceLayer, id: f.id }),
        onmouseleave: () => this.highlight(this.selected),
      }, el("span", { class: "pick-layer" }, layerTitle(f.sourceLayer)), " ", labelOf(f.properties, f.id)));
      list.append(item);
    }
    this.show(el("h2", {}, `${hits.length} ${t("here")}`), list);
  }

  highlight(sel) {
    if (this.lit) this.map.setFeatureState({ source: "twin", sourceLayer: this.lit.collection, id: this.lit.id }, { selected: false });
    this.lit = sel;
    if (sel) this.map.setFeatureState({ source: "twin", sourceLayer: sel.collection, id: sel.id }, { selected: true });
  }

  select(sel) {
    this.selected = sel;
    this.highlight(sel);
    setHash({ sel: sel ? `${sel.collection}/${sel.id}` : null });
  }

  clear() {
    this.select(null);
    this.root.hidden = true;
    this.root.replaceChildren();
  }

  forget() {
    // The caller changed: nothing shown or known for the one before stays (the map's style is
    // not asked: it may still be loading).
    this.queryables = {};
    this.selected = null;
    this.lit = null;
    this.root.hidden = true;
    this.root.replaceChildren();
    setHash({ sel: null });
  }

  show(...children) {
    const close = el("button", { type: "button", class: "close", title: t("close"), "aria-label": t("close"), onclick: () => this.clear() }, "×");
    this.root.replaceChildren(close, ...children);
    this.root.hidden = false;
  }

  async fields(collection) {
    if (!this.queryables[collection]) {
      try {
        this.queryables[collection] = (await getJSON(`collections/${collection}/queryables`)).properties || {};
      } catch (e) {
        this.queryables[collection] = {};
      }
    }
    return this.queryables[collection];
  }

  async open(collection, id) {
    this.select({ collection, id });
    const path = itemPath(collection, id);
    const [feature, history, fields] = await Promise.all([
      getJSON(path, window.twin.asof ? { asof: window.twin.asof } : undefined),
      getJSON(`${path}/history`).catch(() => null),
      this.fields(collection),
    ]);
    if (!this.selected || this.selected.id !== id) return; // another pick came meanwhile
    const table = el("table", { class: "attrs", id: "inspect-table" });
    table.append(el("tr", {}, el("th", {}, t("collection")), el("td", {}, `${layerTitle(collection)} (${collection})`)));
    table.append(el("tr", {}, el("th", {}, t("id")), el("td", {}, String(id))));
    for (const [k, v] of Object.entries(feature.properties || {})) {
      const unit = unitOf(k);
      const text = v === null || v === undefined ? "—" : typeof v === "boolean" ? (v ? "✓" : "✗") : `${v}${unit ? ` ${unit}` : ""}`;
      const described = fields[k]?.description;
      table.append(el("tr", {}, el("th", { title: described || k, dataset: { field: k } }, fieldName(k)), el("td", {}, text)));
    }
    const parts = [
      el("h2", {}, labelOf(feature.properties, id)),
      el("p", { class: "links" },
        el("a", { href: url(path), target: "_blank", rel: "noopener" }, t("json")), " · ",
        el("a", { href: url(path, { f: "html" }), target: "_blank", rel: "noopener" }, t("html"))),
      table,
    ];
    if (collection === "grids") parts.push(await this.hierarchy(feature));
    if (history) parts.push(...historyParts(history));
    this.show(...parts);
    this.root.dataset.collection = collection;
    this.root.dataset.id = id;
  }

  async hierarchy(cell) {
    // A grid cell's place in the hierarchy: the cells above it (district > street >
    // community > cell) and those right under it, each a link.
    const p = cell.properties || {};
    const chain = [];
    let code = p.parent_code;
    for (let i = 0; code && i < 4; i++) {
      const up = (await getJSON("collections/grids/items", { code, limit: 1 }).catch(() => null))?.features?.[0];
      if (!up) break;
      chain.unshift(up);
      code = up.properties.parent_code;
    }
    const under = p.code ? (await getJSON("collections/grids/items", { parent_code: p.code, limit: 200 }).catch(() => null))?.features || [] : [];
    const link = (f) => el("button", { type: "button", class: "link", dataset: { id: f.id }, onclick: () => this.open("grids", f.id) },
      f.properties.name || f.properties.code || f.id);
    const box = el("div", { class: "hierarchy", id: "grid-hierarchy" });
    const path = el("p", { class: "crumbs" });
    for (const f of chain) path.append(link(f), " › ");
    path.append(el("strong", {}, p.name || p.code || cell.id));
    box.append(el("h3", {}, t("hierarchy")), path);
    if (under.length) {
      box.append(el("p", { class: "muted" }, `${under.length} × ${t("levels")[under[0].properties.level] || ""}`),
        el("ul", { class: "children" }, under.map((f) => el("li", {}, link(f)))));
    }
    return box;
  }

  refreshIfShown(collection, id) {
    if (this.selected && this.selected.collection === collection && String(this.selected.id) === String(id)) {
      this.open(collection, id);
    }
  }
}

function historyParts(history) {
  const out = [];
  const readings = history.readings || [];
  out.push(el("h3", {}, t("readings")));
  if (!readings.length) out.push(el("p", { class: "muted" }, t("noReadings")));
  else {
    const table = el("table", { class: "attrs readings" },
      el("tr", {}, el("th", {}, t("time")), el("th", {}, t("property")), el("th", {}, t("value"))));
    for (const r of readings.slice(-8).reverse()) {
      table.append(el("tr", {}, el("td", {}, String(r.time || "").replace("T", " ").replace(/\.\d+Z$/, "Z")),
        el("td", {}, fieldName(r.property || "")), el("td", {}, String(r.value))));
    }
    out.push(table);
  }
  const versions = history.versions || [];
  out.push(el("h3", {}, `${t("history")}: ${versions.length} ${t("versions")}`));
  const list = el("ol", { class: "versions" });
  for (const v of versions.slice(-5)) {
    list.append(el("li", {}, `${String(v.recorded_from || "").slice(0, 19).replace("T", " ")}`,
      v.ended_why ? ` — ${v.ended_why}` : ""));
  }
  out.push(list);
  return out;
}

export { pick };
