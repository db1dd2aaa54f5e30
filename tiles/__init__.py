"""The tile engine: tile grid, generalisation, MVT and PNG encoding, cache, PMTiles export.

Pure library code (no HTTP). What the server calls:

- `tiles.grid.tile(z, x, y)` -> `Tile` (raises `tiles.errors.TileOutOfMatrix`: answer 404);
- `tiles.render.render_tile([(layer, rows_or_None), ...], tile, settings)` -> MVT bytes,
  b"" for an empty tile (answer 204);
- `tiles.cache.TileCache` (`fetch`/`get`/`put` by `TileKey`, raw and gzip bytes + ETag;
  `invalidate(collection, bounds)` is a `Catalog.subscribe` listener);
- `tiles.metadata.vector_layer(layer, settings)` -> TileJSON `vector_layers` entry;
- `tiles.raster.render_raster_tile(path, tile, style)` -> PNG bytes or None;
- `tiles.export.export_pmtiles(...)` -> a PMTiles archive for static hosting;
- `tiles.settings.TileSettings` (env prefix `TWIN_TILES_`).
"""
