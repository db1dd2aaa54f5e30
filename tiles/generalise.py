"""Generalisation policy for dynamic tiles: what each zoom shows of a layer, and how simply.

Below `detail_zoom` (14 by default) a tile is a map, not a data dump:

- a layer appears from its asset kind's minzoom on (`minzoom`), so no 0/0/0 tile holds
  every pipe of the city;
- lines and polygons smaller than `min_size_px` are dropped (they would be sub-pixel),
  the rest simplified to `simplify_px`;
- points closer than `cluster_px` are merged into one cluster point carrying
  `point_count` (a lone point keeps its own properties);
- at most `max_features` features per layer, the most important first (`importance`):
  large-diameter pipes, major roads, big parks, busy clusters;
- and whatever the zoom, a tile over `max_bytes` sheds its least important features.

From `detail_zoom` on, every feature is there with every vertex (only the byte budget can
thin a pathological tile).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from layers.layer import Head, Layer
from layers.models import GeometryFamily, Thinning
from tiles.grid import Tile, xy_bounds
from tiles.settings import TileSettings

PIXELS_PER_TILE = 512
"""MapLibre draws a vector tile 512 px wide: a pixel is 1/512 of the tile."""

MINZOOM: dict[str, int] = {
    "grids": 0,
    "roads": 6,
    "parks": 8,
    "pipes": 8,
    "sites": 10,
    "bridges": 10,
    "valves": 12,
    "lights": 12,
}
"""From which zoom each built-in asset kind appears in tiles."""

FAMILY_MINZOOM: dict[GeometryFamily, int] = {
    GeometryFamily.POLYGON: 8,
    GeometryFamily.LINE: 8,
    GeometryFamily.POINT: 12,
    GeometryFamily.ANY: 8,
}
"""Minzoom of custom layers, by geometry family."""

ROAD_CLASS_RANK = (
    "motorway",
    "trunk",
    "primary",
    "secondary",
    "tertiary",
    "motorway_link",
    "trunk_link",
    "primary_link",
    "secondary_link",
    "tertiary_link",
    "unclassified",
    "residential",
    "living_street",
    "service",
)
"""Road classes from most to least important; others come after."""

PRIORITY_FIELD: dict[str, str] = {"pipes": "diameter_mm", "valves": "diameter_mm", "roads": "class"}
"""The attribute that ranks features of a kind before their size does."""


def minzoom(layer: Head, settings: TileSettings) -> int:
    """The lowest zoom at which `layer` appears in tiles (settings override the defaults)."""
    name = layer.name
    if name in settings.minzoom:
        return settings.minzoom[name]
    if name in MINZOOM and layer.schema.builtin:
        return MINZOOM[name]
    return FAMILY_MINZOOM[layer.schema.geometry]


def thinning(name: str, tile: Tile, settings: TileSettings) -> Thinning | None:
    """What of layer `name` a tile below the detail zoom may draw, for a store to read no
    more (None: at or past the detail zoom, everything under the tile). Generous: the tile
    itself picks its features among what is read."""
    if tile.z >= settings.detail_zoom:
        return None
    b = xy_bounds(tile)
    field = PRIORITY_FIELD.get(name)
    return Thinning(
        min_size=settings.min_size_px * pixel(b.maxx - b.minx),
        most=settings.max_features * 9 // 8 + 16,
        priority=field,
        classes=ROAD_CLASS_RANK if field == "class" else None,
    )


def pixel(tile_width: float) -> float:
    """Size of a display pixel of a tile `tile_width` wide, in the same units."""
    return tile_width / PIXELS_PER_TILE


def importance(layer: Layer, mbounds: np.ndarray) -> np.ndarray:
    """Rank of every row (0 = shown first) from its kind's priority attribute, then its size
    (bbox diagonal, EPSG:3857 `mbounds`), then its row number."""
    n = len(layer)
    size = np.hypot(mbounds[:, 2] - mbounds[:, 0], mbounds[:, 3] - mbounds[:, 1])
    size = np.nan_to_num(size, nan=0.0)
    keys: list[np.ndarray] = [np.arange(n), -size]
    field = PRIORITY_FIELD.get(layer.name)
    if field is not None and layer.schema.builtin and field in layer.attrs:
        col = layer.attrs[field]
        if field == "class":
            classes = {c: i for i, c in enumerate(ROAD_CLASS_RANK)}
            prio = col.astype(object).map(lambda c: classes.get(c, len(classes)))
            prio = prio.to_numpy(np.float64)
        else:
            prio = -pd.to_numeric(col, errors="coerce").astype("float64").fillna(-np.inf).to_numpy()
        keys.append(prio)
    order = np.lexsort(keys)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


def simplify(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Geometries simplified to `tolerance`; polygons keep their topology (stay valid). Lines
    of two points and triangles are left alone: there is nothing to take away."""
    if tolerance <= 0 or len(geoms) == 0:
        return geoms
    dim = shapely.get_dimensions(geoms)
    ncoords = shapely.get_num_coordinates(geoms)
    out = geoms.copy()
    lines = (dim == 1) & (ncoords > 2)
    polys = (dim == 2) & (ncoords > 4)
    if lines.any():
        out[lines] = shapely.simplify(geoms[lines], tolerance, preserve_topology=False)
    if polys.any():
        out[polys] = shapely.simplify(geoms[polys], tolerance, preserve_topology=True)
    return out
