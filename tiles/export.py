"""Seed a PMTiles v3 archive with the same tiles `render_tile` serves, for static hosting."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer

from layers.models import Bounds
from tiles.cache import pack
from tiles.errors import InvalidTileRequest
from tiles.grid import MAXZOOM, Tile, covering, lonlat_bounds
from tiles.metadata import vector_layer
from tiles.render import LayerRequest, render_tile
from tiles.settings import TileSettings


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote."""

    path: Path
    tiles: int
    """Tiles written (empty tiles are left out, as PMTiles readers expect)."""
    bytes: int
    per_zoom: dict[int, int]


def _occupied(layers: Sequence[LayerRequest], t: Tile) -> bool:
    """Whether any feature's bounding box meets the tile (else none of its children can)."""
    box = shapely.box(*lonlat_bounds(t))
    for layer, rows in layers:
        if len(layer) == 0:
            continue
        hits = layer.tree.query(box)
        if rows is not None:
            hits = np.intersect1d(hits, rows)
        if len(hits):
            return True
    return False


def export_pmtiles(
    path: str | Path,
    layers: Sequence[LayerRequest],
    *,
    minzoom: int = 0,
    maxzoom: int = 14,
    settings: TileSettings | None = None,
    name: str = "twin",
    progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Write every non-empty tile of zooms minzoom..maxzoom over the layers to `path`
    (gzip-compressed MVT, the file replaced atomically). `progress(z, tiles_written)` is
    called after each zoom."""
    settings = settings or TileSettings()
    if not 0 <= minzoom <= maxzoom <= MAXZOOM:
        raise InvalidTileRequest(f"zooms must satisfy 0 <= minzoom <= maxzoom <= {MAXZOOM}")
    bounds = Bounds.union(lyr.bounds for lyr, _ in layers)
    if bounds is None:
        raise InvalidTileRequest("nothing to export: the collections hold no features")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    per_zoom: dict[int, int] = {}
    written = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer = Writer(f)
            frontier = [t for t in covering(bounds, range(minzoom, minzoom + 1))]
            for z in range(minzoom, maxzoom + 1):
                frontier = [t for t in frontier if _occupied(layers, t)]
                count = 0
                for t in sorted(frontier, key=lambda t: zxy_to_tileid(t.z, t.x, t.y)):
                    raw = render_tile(layers, t, settings)
                    if raw:
                        writer.write_tile(zxy_to_tileid(t.z, t.x, t.y), pack(raw, 9).data)
                        count += 1
                per_zoom[z] = count
                written += count
                if progress is not None:
                    progress(z, count)
                frontier = [
                    Tile(2 * t.x + dx, 2 * t.y + dy, z + 1)
                    for t in frontier
                    for dx in (0, 1)
                    for dy in (0, 1)
                ]
            if written == 0:
                raise InvalidTileRequest("nothing to export: every tile in the zoom range is empty")
            lo = min(z for z, n in per_zoom.items() if n)
            hi = max(z for z, n in per_zoom.items() if n)
            header = {
                "tile_type": TileType.MVT,
                "tile_compression": Compression.GZIP,
                "min_lon_e7": int(bounds.minx * 1e7),
                "min_lat_e7": int(bounds.miny * 1e7),
                "max_lon_e7": int(bounds.maxx * 1e7),
                "max_lat_e7": int(bounds.maxy * 1e7),
                "center_zoom": lo,
                "center_lon_e7": int((bounds.minx + bounds.maxx) / 2 * 1e7),
                "center_lat_e7": int((bounds.miny + bounds.maxy) / 2 * 1e7),
            }
            metadata = {
                "name": name,
                "format": "pbf",
                "minzoom": lo,
                "maxzoom": hi,
                "bounds": list(bounds),
                "vector_layers": [vector_layer(lyr, settings).tilejson() for lyr, _ in layers],
            }
            writer.finalize(header, metadata)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportReport(target, written, target.stat().st_size, per_zoom)
