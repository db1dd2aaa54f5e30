// The small map of the server's HTML pages (an items page, a single item): the features the
// page lists, from its JSON data blocks, over the server's own style. A file, not an inline
// script, so that the pages run under a content security policy allowing no inline script.
(() => {
  const data = JSON.parse(document.getElementById("map-data").textContent);
  const opts = JSON.parse(document.getElementById("map-options").textContent);
  const view = opts.bounds
    ? { bounds: opts.bounds, fitBoundsOptions: { padding: 30, maxZoom: 17 } }
    : { center: [0, 0], zoom: 1 };
  const map = new maplibregl.Map({ container: "map", style: opts.style, ...view });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-left");
  window.twinMap = map;
  map.on("load", () => {
    map.addSource("shown", { type: "geojson", data });
    const color = "#d7301f";
    map.addLayer({ id: "shown-fill", type: "fill", source: "shown",
      filter: ["==", "$type", "Polygon"], paint: { "fill-color": color, "fill-opacity": 0.25 } });
    map.addLayer({ id: "shown-line", type: "line", source: "shown",
      filter: ["!=", "$type", "Point"], paint: { "line-color": color, "line-width": 3 } });
    map.addLayer({ id: "shown-point", type: "circle", source: "shown",
      filter: ["==", "$type", "Point"], paint: { "circle-color": color, "circle-radius": 6,
        "circle-stroke-color": "#fff", "circle-stroke-width": 2 } });
  });
})();
