"""The in-memory layer: feature ids, a geometry array, typed attributes and a spatial index."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import shapely

from layers.errors import UnknownFeature
from layers.models import Bounds, FieldType, LayerSchema

# Columns every stored feature carries besides its schema fields.
SOURCE = "source"  # which import (dataset) the feature came from
VERSION = "_version"  # bumped on every change of the feature
UPDATED = "_updated"  # UTC time of the last change
SYSTEM_COLUMNS = (SOURCE, VERSION, UPDATED)

_DTYPES: dict[FieldType, Any] = {
    FieldType.STRING: pd.StringDtype(na_value=pd.NA),
    FieldType.INTEGER: pd.Int64Dtype(),
    FieldType.FLOAT: pd.Float64Dtype(),
    FieldType.BOOLEAN: pd.BooleanDtype(),
    FieldType.DATE: "datetime64[ms]",
    FieldType.DATETIME: "datetime64[ms, UTC]",
}


def dtype_of(ftype: FieldType) -> Any:
    """The pandas dtype a field type is held in."""
    return _DTYPES[ftype]


def coerce(values: Any, ftype: FieldType) -> pd.Series:
    """`values` as a Series of the dtype for `ftype`; raises ValueError/TypeError when impossible."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    s = s.reset_index(drop=True)
    if ftype is FieldType.DATE:
        out = pd.to_datetime(s, errors="raise")
        if getattr(out.dt, "tz", None) is not None:
            out = out.dt.tz_convert("UTC").dt.tz_localize(None)
        return out.dt.normalize().astype("datetime64[ms]")
    if ftype is FieldType.DATETIME:
        return pd.to_datetime(s, errors="raise", utc=True).astype("datetime64[ms, UTC]")
    if ftype is FieldType.INTEGER and s.dtype.kind == "f":
        frac = s.dropna() % 1
        if (frac != 0).any():
            raise ValueError("non-integer values in an integer field")
    return s.astype(_DTYPES[ftype])


def empty_attrs(schema: LayerSchema, n: int = 0) -> pd.DataFrame:
    """An all-null attribute table of `n` rows for `schema`, system columns included."""
    cols: dict[str, pd.Series] = {
        f.name: pd.Series([None] * n, dtype=object).astype(dtype_of(f.type)) for f in schema.fields
    }
    cols[SOURCE] = pd.Series([None] * n, dtype=object).astype(dtype_of(FieldType.STRING))
    cols[VERSION] = pd.Series(np.ones(n, dtype=np.int64))
    cols[UPDATED] = pd.Series(
        np.full(n, np.datetime64("NaT"), dtype="datetime64[ms]")
    ).dt.tz_localize("UTC")
    return pd.DataFrame(cols)


def json_value(v: Any) -> Any:
    """A plain JSON value for one attribute value (NA/NaN -> None, dates -> ISO strings)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float | np.floating):
        f = float(v)
        return None if math.isnan(f) else (int(f) if f.is_integer() and abs(f) < 2**53 else f)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, pd.Timestamp):
        if v.tzinfo is None and v == v.normalize():
            return v.date().isoformat()
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, dt.date | dt.datetime):
        return v.isoformat()
    return v


def _json_list(values: Any) -> list:
    """JSON values of a pandas array; Arrow-backed strings straight through Arrow (already
    str or None, and several times faster than their own `tolist`)."""
    if isinstance(values, pd.arrays.ArrowStringArray):
        return values.__arrow_array__().to_pylist()
    return [json_value(v) for v in values.tolist()]


@dataclass(eq=False)
class Layer:
    """A vector layer held in memory: row `i` is feature `ids[i]` with `geometry[i]` (lon/lat).

    `attrs` has one column per schema field plus the system columns `source`, `_version` and
    `_updated`, on a 0..n-1 RangeIndex aligned with `ids` and `geometry`.
    """

    schema: LayerSchema
    ids: np.ndarray
    geometry: np.ndarray
    attrs: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.geometry) != n or len(self.attrs) != n:
            raise ValueError("ids, geometry and attrs must have the same length")
        self.ids = np.asarray(self.ids, dtype=object)
        self.geometry = np.asarray(self.geometry, dtype=object)
        if not isinstance(self.attrs.index, pd.RangeIndex) or self.attrs.index.start != 0:
            self.attrs = self.attrs.reset_index(drop=True)

    @classmethod
    def empty(cls, schema: LayerSchema) -> Layer:
        """A layer with no features."""
        return cls(
            schema, np.array([], dtype=object), np.array([], dtype=object), empty_attrs(schema)
        )

    @property
    def name(self) -> str:
        """The collection id."""
        return self.schema.name

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def tree(self) -> shapely.STRtree:
        """STRtree over `geometry`; query results are row numbers."""
        return shapely.STRtree(self.geometry)

    @cached_property
    def _arrays(self) -> dict[str, Any]:
        """Each attribute column's array, looked up once (like `tree`, this assumes the layer is
        not changed in place once served: an edit makes a new `Layer`)."""
        return {c: self.attrs[c].array for c in self.attrs.columns}

    @cached_property
    def row_of(self) -> pd.Index:
        """Index from feature id to row number."""
        return pd.Index(self.ids)

    @cached_property
    def bounds(self) -> Bounds | None:
        """Bounds of all features, or None for an empty layer."""
        if len(self) == 0:
            return None
        b = shapely.bounds(self.geometry)
        with np.errstate(invalid="ignore"):
            minx, miny = np.nanmin(b[:, 0]), np.nanmin(b[:, 1])
            maxx, maxy = np.nanmax(b[:, 2]), np.nanmax(b[:, 3])
        if np.isnan(minx):
            return None
        return Bounds(float(minx), float(miny), float(maxx), float(maxy))

    @cached_property
    def geometry_types(self) -> list[str]:
        """The distinct geometry types present, sorted."""
        if len(self) == 0:
            return []
        first = np.unique(shapely.get_type_id(self.geometry), return_index=True)[1]
        return sorted(g.geom_type for g in self.geometry[first] if g is not None)

    def row(self, fid: str) -> int:
        """Row number of feature `fid`; `UnknownFeature` when absent."""
        try:
            loc = self.row_of.get_loc(fid)
        except KeyError:
            raise UnknownFeature(self.name, fid) from None
        if not isinstance(loc, int | np.integer):
            raise UnknownFeature(self.name, fid)
        return int(loc)

    def take(self, rows: Sequence[int] | np.ndarray) -> Layer:
        """A new layer of the given rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return Layer(
            self.schema,
            self.ids[rows],
            self.geometry[rows],
            self.attrs.iloc[rows].reset_index(drop=True),
            dict(self.meta),
        )

    def query(self, geometry: Any, predicate: str | None = "intersects") -> np.ndarray:
        """Sorted row numbers of features meeting `geometry` (or its bbox when predicate is None)."""
        if len(self) == 0:
            return np.array([], dtype=np.int64)
        return np.sort(self.tree.query(geometry, predicate=predicate)).astype(np.int64)

    def query_bbox(self, bounds: Iterable[float]) -> np.ndarray:
        """Sorted row numbers of features whose geometry intersects the box."""
        return self.query(shapely.box(*bounds), predicate="intersects")

    def properties(self, rows: Sequence[int] | np.ndarray, *, system: bool = False) -> list[dict]:
        """JSON-ready property dicts for `rows`; system columns only when asked."""
        names = self.schema.field_names + ([*SYSTEM_COLUMNS] if system else [SOURCE])
        rows = np.asarray(rows, dtype=np.int64)
        # Column by column: taking rows of each array is several times faster than iloc on
        # the frame (a page of items is serialised on every request).
        arrays = self._arrays
        cols = [_json_list(arrays[c].take(rows)) for c in names]
        return [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]

    def features(self, rows: Sequence[int] | np.ndarray, *, system: bool = False) -> list[dict]:
        """GeoJSON Feature dicts (lon/lat) for `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        props = self.properties(rows, system=system)
        geoms = shapely.to_geojson(self.geometry[rows]) if len(rows) else []
        return [
            {
                "type": "Feature",
                "id": fid,
                "geometry": json.loads(g) if g is not None else None,
                "properties": p,
            }
            for fid, g, p in zip(self.ids[rows].tolist(), geoms, props, strict=True)
        ]
