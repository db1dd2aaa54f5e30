"""Per-layer arrays prepared once for tiling: EPSG:3857 bounds, importance, ids, properties.

A `Layer` is replaced (never changed in place) when its data changes, so the arrays are
kept with each `Layer` (`Layer.derived`) and vanish with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely

from layers.layer import Layer, same_values
from layers.models import FieldType
from tiles.encode import Properties
from tiles.generalise import PRIORITY_FIELD, importance
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
    order: np.ndarray
    """Rows from the most to the least important (the inverse of `rank`)."""
    ordered_bounds: np.ndarray
    """`mbounds` in `order`, contiguous: low-zoom tiles scan it instead of querying the tree."""
    ordered_size: np.ndarray
    """Largest side of each bounding box (EPSG:3857 metres) in `order`; -1 for points/missing."""
    has_points: bool
    """Whether any feature is a point or multipoint (clustered below the detail zoom)."""
    point_rows: np.ndarray
    """Rows of the points and multipoints."""
    point_x: np.ndarray
    """EPSG:3857 x of each of `point_rows` (its box centre)."""
    point_y: np.ndarray
    """EPSG:3857 y of each of `point_rows`."""

    @classmethod
    def build(
        cls,
        mbounds: np.ndarray,
        dimension: np.ndarray,
        rank: np.ndarray,
        ids: np.ndarray,
        properties: Properties,
    ) -> PreparedLayer:
        """The prepared layer, with the importance-ordered arrays derived from `rank`."""
        order = np.empty(len(rank), dtype=np.int64)
        order[rank] = np.arange(len(rank))
        ob = np.ascontiguousarray(mbounds[order])
        size = np.maximum(ob[:, 2] - ob[:, 0], ob[:, 3] - ob[:, 1])
        size = np.where(dimension[order] >= 1, np.nan_to_num(size, nan=-1.0), -1.0)
        point_rows = np.flatnonzero(dimension == 0)
        pb = mbounds[point_rows]
        return cls(
            mbounds,
            dimension,
            rank,
            ids,
            properties,
            order,
            ob,
            size,
            len(point_rows) > 0,
            point_rows,
            (pb[:, 0] + pb[:, 2]) / 2,
            (pb[:, 1] + pb[:, 3]) / 2,
        )


def tile_columns(
    layer: Layer, rows: np.ndarray | None = None, only: Sequence[str] | None = None
) -> dict[str, pd.Series]:
    """The property columns written to tiles: `id`, then every schema field (dates as ISO
    text); of the `rows` given only (on a 0..len(rows)-1 index), and the columns `only`."""
    ids = layer.ids if rows is None else layer.ids[rows]
    cols: dict[str, pd.Series] = {}
    if only is None or ID_PROPERTY in only:
        cols[ID_PROPERTY] = pd.Series(ids, dtype=object).astype("string")
    for f in layer.schema.fields:
        if only is not None and f.name not in only:
            continue
        s = layer.attrs[f.name]
        if rows is not None:
            s = s.iloc[rows].reset_index(drop=True)
        if f.type is FieldType.DATE:
            s = s.dt.strftime("%Y-%m-%d").astype("string")
        elif f.type is FieldType.DATETIME:
            s = s.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").str.replace(".000000Z", "Z").astype("string")
        cols[f.name] = s
    return cols


def _geometry_arrays(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:3857 bounds and dimension (-1: missing or empty) of geometries."""
    b = shapely.bounds(geoms) if len(geoms) else np.empty((0, 4))
    x0, y0 = to_mercator(b[:, 0], b[:, 1])
    x1, y1 = to_mercator(b[:, 2], b[:, 3])
    dimension = np.where(
        shapely.get_num_coordinates(geoms) > 0, shapely.get_dimensions(geoms), -1
    ).astype(np.int8)
    return np.column_stack([x0, y0, x1, y1]), dimension


def _numeric_ids(fids: np.ndarray) -> np.ndarray:
    ids = pd.Series(fids, dtype=object).astype("string")
    numeric = ids.str.fullmatch(_NUMERIC_ID).fillna(False).to_numpy(bool)
    out = np.full(len(fids), -1, dtype=np.int64)
    if numeric.any():
        out[numeric] = ids[numeric].astype("int64").to_numpy()
    return out


def _prepare(layer: Layer) -> PreparedLayer:
    mbounds, dimension = _geometry_arrays(layer.geometry)
    return PreparedLayer.build(
        mbounds=mbounds,
        dimension=dimension,
        rank=importance(layer, mbounds),
        ids=_numeric_ids(layer.ids),
        properties=Properties.from_columns(tile_columns(layer)),
    )


def _patched(base: PreparedLayer, layer: Layer) -> PreparedLayer | None:
    """The arrays of a layer whose rows changed in place (`Layer.patched`) from those of the
    layer it was made from: only the changed rows' properties (and, when they moved, bounds)
    are worked out; the importance order is kept unless what it rests on changed."""
    patch = layer.origin
    if patch is None or not patch.same_geometry:
        return None
    rows = patch.rows
    props = base.properties
    codes = props.codes.copy()
    # Only the columns that changed (a reading: one); the others' codes stand.
    changed = [j for j, k in enumerate(props.keys) if k in patch.columns]
    if changed:
        cols = tile_columns(layer, rows, [props.keys[j] for j in changed])
        codes[np.ix_(rows, np.array(changed, dtype=np.int64))] = Properties.from_columns(
            cols, table=props.table
        ).codes
    properties = Properties(props.keys, codes, props.table)
    if PRIORITY_FIELD.get(layer.name) in patch.columns:
        return PreparedLayer.build(
            base.mbounds, base.dimension, importance(layer, base.mbounds), base.ids, properties
        )
    return dataclasses.replace(base, properties=properties)


def _derive(old: Layer, base: PreparedLayer, new: Layer) -> PreparedLayer | None:
    """The arrays of `new` from those of an earlier version of the same layer: only features
    whose geometry or attributes changed are worked out again (an edit of a 1M-feature layer
    costs a few vectorised passes, not a rebuild). None when the two cannot be matched."""
    if old.schema != new.schema or not old.row_of.is_unique:
        return None
    idx = old.row_of.get_indexer(new.ids)
    matched = np.flatnonzero(idx >= 0)
    if len(matched) == 0:
        return None
    src = idx[matched]
    same_geom = np.zeros(len(new), dtype=bool)
    same_geom[matched] = shapely.equals_identical(old.geometry[src], new.geometry[matched])
    mbounds = np.empty((len(new), 4))
    dimension = np.empty(len(new), dtype=np.int8)
    keep = np.flatnonzero(same_geom)
    mbounds[keep] = base.mbounds[idx[keep]]
    dimension[keep] = base.dimension[idx[keep]]
    redo = np.flatnonzero(~same_geom)
    if len(redo):
        mbounds[redo], dimension[redo] = _geometry_arrays(new.geometry[redo])
    same_attrs = np.zeros(len(new), dtype=bool)
    ok = np.ones(len(matched), dtype=bool)
    for f in new.schema.fields:
        ok &= same_values(old.attrs[f.name].iloc[src], new.attrs[f.name].iloc[matched])
    same_attrs[matched] = ok
    props = base.properties
    codes = np.empty((len(new), len(props.keys)), dtype=np.int64)
    reuse = np.flatnonzero(same_attrs)
    codes[reuse] = props.codes[idx[reuse]]
    fresh = np.flatnonzero(~same_attrs)
    if len(fresh):
        cols = tile_columns(new, fresh)
        codes[fresh] = Properties.from_columns(cols, table=props.table).codes
    ids = np.empty(len(new), dtype=np.int64)
    ids[matched] = base.ids[src]
    unmatched = np.flatnonzero(idx < 0)
    ids[unmatched] = _numeric_ids(new.ids[unmatched])
    return PreparedLayer.build(
        mbounds=mbounds,
        dimension=dimension,
        rank=importance(new, mbounds),
        ids=ids,
        properties=Properties(props.keys, codes, props.table),
    )


def prepare(layer: Layer) -> PreparedLayer:
    """The prepared arrays of `layer`, built on first use and kept with the layer.

    When the version it replaced (`Layer.origin`, `Layer.previous`: set by the catalog) was
    prepared, only what changed is worked out again."""
    return layer.derived(PreparedLayer, lambda: _made(layer))


def _made(layer: Layer) -> PreparedLayer:
    base = layer.origin.base() if layer.origin is not None else None
    held = base.held(PreparedLayer) if base is not None else None
    got = _patched(held, layer) if held is not None else None
    earlier = layer.previous() if layer.previous is not None else None
    done = earlier.held(PreparedLayer) if earlier is not None else None
    if got is None and earlier is not None and done is not None:
        got = _derive(earlier, done, layer)
    return got if got is not None else _prepare(layer)
