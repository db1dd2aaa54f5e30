// The search box: suggestions from GET /search as one types (ids, names, streets), arrow keys
// and Enter to choose; a choice zooms to the hit and opens it.

import { el, getJSON } from "./api.js";
import { layerTitle } from "./panel.js";

export class SearchBox {
  constructor(map, inspector, input, list) {
    this.map = map;
    this.inspector = inspector;
    this.input = input;
    this.list = list;
    this.hits = [];
    this.active = -1;
    this.asked = 0;
    input.addEventListener("input", () => this.changed());
    input.addEventListener("keydown", (e) => this.key(e));
    input.addEventListener("blur", () => setTimeout(() => this.close(), 150));
  }

  changed() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.suggest(this.input.value), 120);
  }

  async suggest(q) {
    const ask = ++this.asked;
    if (!q.trim()) return this.close();
    let hits = [];
    try {
      hits = (await getJSON("search", { q, limit: 8 })).features;
    } catch (e) {
      hits = [];
    }
    if (ask !== this.asked) return; // a newer query is on its way
    this.hits = hits;
    this.active = hits.length ? 0 : -1;
    this.render();
  }

  render() {
    this.list.replaceChildren(...this.hits.map((h, i) => el("li", {
      role: "option",
      id: `search-hit-${i}`,
      "aria-selected": i === this.active ? "true" : "false",
      class: i === this.active ? "active" : "",
      dataset: { collection: h.collection, id: h.id },
      onmousedown: (e) => { e.preventDefault(); this.choose(i); },
    }, el("span", { class: "hit-label" }, h.label,
      !h.label.toLowerCase().includes(h.properties.matched) ? el("small", { class: "hit-matched" }, ` ${h.properties.matched}`) : null),
    el("span", { class: "hit-layer" }, layerTitle(h.collection) + (h.properties.features > 1 ? ` ×${h.properties.features}` : "")))));
    this.list.hidden = !this.hits.length;
    this.input.setAttribute("aria-expanded", this.hits.length ? "true" : "false");
    if (this.active >= 0) this.input.setAttribute("aria-activedescendant", `search-hit-${this.active}`);
  }

  key(e) {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      if (!this.hits.length) return;
      e.preventDefault();
      const n = this.hits.length;
      this.active = (this.active + (e.key === "ArrowDown" ? 1 : n - 1)) % n;
      this.render();
    } else if (e.key === "Enter") {
      e.preventDefault();
      if (this.hits.length) this.choose(Math.max(this.active, 0));
      else this.suggest(this.input.value).then(() => this.hits.length && this.choose(0));
    } else if (e.key === "Escape") {
      this.close();
    }
  }

  close() {
    this.list.hidden = true;
    this.input.setAttribute("aria-expanded", "false");
  }

  choose(i) {
    const hit = this.hits[i];
    if (!hit) return;
    this.close();
    this.input.value = hit.label;
    if (hit.bbox) {
      const [w, s, e, n] = hit.bbox;
      this.map.fitBounds([[w, s], [e, n]], { padding: 80, maxZoom: 18, duration: 600 });
    }
    this.inspector.open(hit.collection, hit.id);
    window.twin.lastSearch = hit;
  }
}
