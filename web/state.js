// What the URL keeps besides the view (MapLibre keeps `view=zoom/lat/lon` in the same hash):
// layers switched off, the selected feature, the language.

export function getHash(key) {
  return new URLSearchParams(location.hash.slice(1)).get(key);
}

export function setHash(values) {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const [k, v] of Object.entries(values)) {
    if (v === null || v === undefined || v === "") params.delete(k);
    else params.set(k, v);
  }
  const text = params.toString().replace(/%2F/g, "/").replace(/%2C/g, ",").replace(/%3A/g, ":");
  history.replaceState(history.state, "", `${location.pathname}${location.search}#${text}`);
}
