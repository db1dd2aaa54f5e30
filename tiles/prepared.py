"""Per-layer arrays prepared once for tiling: EPSG:3857 bounds, importance, ids, properties.

A `Layer` is replaced (never changed in place) when its data changes, so the arrays are
cached per `Layer` object and vanish with it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely

from layers.layer import Layer
from layers.models import FieldType
from tiles.encode import Properties
from tiles.generalise import importance
from tiles.grid import to_mercator

ID_PROPERTY = "id"
"""Every tile feature carries its feature id as the string property `id` (MapLibre's
`promoteId`); ids that are plain non-negative integers are also the MVT feature id."""

COUNT_PROPERTY = "point_count"
"""Cluster points (below the detail zoom) carry the number of points they stand for."""

_NUMERIC_ID = r"0|[1-9][0-9]{0,17}"


@dataclass(frozen=True)
class PreparedLayer:
    """What tiling needs of one layer, row-aligned with it."""

    mbounds: np.ndarray
    """Bounds of every feature in EPSG:3857, shape (n, 4); NaN for missing geometries."""
    dimension: np.ndarray
    """Geometry dimension per row: 0 point, 1 line, 2 polygon, -1 missing or empty."""
    rank: np.ndarray
    """Importance rank per row, 0 = most important (see `generalise.importance`)."""
    ids: np.ndarray
    """Numeric MVT feature id per row, -1 where the id is not a plain integer."""
    properties: Properties
    """`id` then the schema fields, as value numbers."""


_cache: weakref.WeakKeyDictionary[Layer, PreparedLayer] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def tile_columns(layer: Layer) -> dict[str, pd.Series]:
    """The property columns written to tiles: `id`, then every schema field (dates as ISO text)."""
    cols: dict[str, pd.Series] = {ID_PROPERTY: pd.Series(layer.ids, dtype=object).astype("string")}
    for f in layer.schema.fields:
        s = layer.attrs[f.name]
        if f.type is FieldType.DATE:
            s = s.dt.strftime("%Y-%m-%d").astype("string")
        elif f.type is FieldType.DATETIME:
            s = s.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").str.replace(".000000Z", "Z").astype("string")
        cols[f.name] = s
    return cols


def _prepare(layer: Layer) -> PreparedLayer:
    geoms = layer.geometry
    n = len(geoms)
    b = shapely.bounds(geoms) if n else np.empty((0, 4))
    x0, y0 = to_mercator(b[:, 0], b[:, 1])
    x1, y1 = to_mercator(b[:, 2], b[:, 3])
    mbounds = np.column_stack([x0, y0, x1, y1])
    dimension = np.where(
        shapely.is_missing(geoms) | shapely.is_empty(geoms), -1, shapely.get_dimensions(geoms)
    ).astype(np.int8)
    ids = pd.Series(layer.ids, dtype=object).astype("string")
    numeric = ids.str.fullmatch(_NUMERIC_ID).fillna(False).to_numpy(bool)
    num_ids = np.full(n, -1, dtype=np.int64)
    if numeric.any():
        num_ids[numeric] = ids[numeric].astype("int64").to_numpy()
    return PreparedLayer(
        mbounds=mbounds,
        dimension=dimension,
        rank=importance(layer, mbounds),
        ids=num_ids,
        properties=Properties.from_columns(tile_columns(layer)),
    )


def prepare(layer: Layer) -> PreparedLayer:
    """The prepared arrays of `layer`, built on first use and kept while the layer lives."""
    got = _cache.get(layer)
    if got is None:
        with _lock:
            got = _cache.get(layer)
            if got is None:
                got = _cache[layer] = _prepare(layer)
    return got
