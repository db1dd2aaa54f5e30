// The planners' web map: the server's own MapLibre style, a layer panel, click-to-inspect.
// Everything is served by twin itself; nothing comes from a CDN.
"use strict";

const base = new URL("..", document.baseURI);
const startedWithView = Boolean(location.hash); // a shared link's view wins over fitting the data
const map = new maplibregl.Map({
  container: "map",
  style: new URL("style.json", base).href,
  hash: true,
  attributionControl: { compact: false },
});
map.addControl(new maplibregl.NavigationControl(), "top-left");
map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-left");
window.twinMap = map; // for tests and the console

let selected = null;

function fitToData() {
  const source = map.getSource("twin");
  const bounds = source && source.bounds;
  if (bounds && !startedWithView) map.fitBounds(bounds, { padding: 20, duration: 0 });
}

function buildLayerPanel() {
  const list = document.getElementById("layer-list");
  const groups = new Map();
  for (const layer of map.getStyle().layers) {
    const key = layer["source-layer"] || layer.source;
    if (!key) continue;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(layer.id);
  }
  for (const [name, ids] of groups) {
    const li = document.createElement("li");
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.collection = name;
    box.addEventListener("change", () => {
      for (const id of ids) map.setLayoutProperty(id, "visibility", box.checked ? "visible" : "none");
    });
    label.append(box, document.createTextNode(name));
    li.append(label);
    list.append(li);
  }
}

function inspect(feature) {
  const table = document.getElementById("inspect-table");
  table.replaceChildren();
  const rows = [["collection", feature.sourceLayer], ...Object.entries(feature.properties)];
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v === null || v === undefined ? "" : String(v);
  }
  document.getElementById("inspect").hidden = false;
}

map.on("load", () => {
  fitToData();
  buildLayerPanel();
});

map.on("click", (e) => {
  const hits = map.queryRenderedFeatures(e.point).filter((f) => f.source === "twin");
  if (selected) map.setFeatureState(selected, { selected: false });
  selected = null;
  if (!hits.length) return;
  const f = hits[0];
  selected = { source: "twin", sourceLayer: f.sourceLayer, id: f.id };
  map.setFeatureState(selected, { selected: true });
  inspect(f);
});
