"""The in-memory layer: feature ids, a geometry array, typed attributes and a spatial index."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import shapely

from layers.errors import UnknownFeature
from layers.models import Bounds, FieldType, LayerSchema, Match, feature_etag, utc_stamp

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

T = TypeVar("T")


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


def json_text(value: Any) -> str:
    """Compact JSON text of a plain JSON value (as `json_value` gives), non-finite numbers as
    ``null`` (JSON has none)."""
    if isinstance(value, str):
        return _quote(value)
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@lru_cache(maxsize=1024)
def object_template(names: tuple[str, ...]) -> str:
    """`{"name":%s,...}`: a JSON object to fill (with `%`) with one value text per name."""
    return "{" + ",".join(json_text(n).replace("%", "%%") + ":%s" for n in names) + "}"


# The C string escaper `json.dumps(..., ensure_ascii=False)` uses: the same text, ~10× faster.
_quote = json.encoder.encode_basestring

# A column with at most this share of distinct values (or this many) is held as codes into its
# distinct values' JSON, made once: then any rows' JSON is two array look-ups.
_DISTINCT_SHARE = 4
_DISTINCT_MIN = 1024


class JsonColumn:
    """One attribute column ready to give the JSON values and JSON texts of any of its rows.

    Built once per column of a served layer (a layer is not changed in place). Columns with few
    distinct values keep codes into those values' JSON; others convert only the rows asked for,
    straight from their numpy or Arrow data. Both give exactly `json_value` / `json_text` of
    each value.
    """

    def __init__(self, array: Any, *, max_distinct: int | None = None) -> None:
        n = len(array)
        self.array = array
        self._codes: np.ndarray | None = None
        self._index: pd.Index | None = None
        self._kind = _kind(array)
        self._limit = (
            max(_DISTINCT_MIN, n // _DISTINCT_SHARE) if max_distinct is None else max_distinct
        )
        if self._kind != "object" and n:
            codes, uniques = pd.factorize(array, use_na_sentinel=True)
            if len(uniques) <= self._limit:
                values = [json_value(u) for u in uniques]
                self._uniques = uniques
                # Code -1 (missing) picks the last entry.
                self._values = np.array([*values, None], dtype=object)
                self._texts = np.array([*map(json_text, values), "null"], dtype=object)
                self._codes = codes.astype(np.int64 if len(uniques) >= 2**31 else np.int32)
                return
        self._read(array)

    def _read(self, array: Any) -> None:
        if self._kind in ("float", "int", "bool"):
            self._data = array.to_numpy(dtype=array.dtype.numpy_dtype, na_value=_FILL[self._kind])
            self._mask = np.asarray(pd.isna(array)) if self._kind != "float" else None
        elif self._kind == "arrow":
            self._arrow = array.__arrow_array__().combine_chunks()

    def _lookup(self) -> pd.Index:
        """The distinct values as an index, to number the values of changed rows."""
        if self._index is None:
            self._index = pd.Index(self._uniques)
        return self._index

    def patched(self, array: Any, rows: np.ndarray) -> JsonColumn:
        """The column `array`, which differs from this one's at most in `rows`: only those
        rows are read (a batch of readings changes a thousand rows of a 100k column), the
        rest is this one's. Gives what `JsonColumn(array)` gives."""
        kind = _kind(array)
        if len(array) != len(self.array) or kind != self._kind or kind == "object":
            return JsonColumn(array)
        out = copy.copy(self)
        out.array = array
        rows = np.asarray(rows, dtype=np.int64)
        changed = array.take(rows)
        if self._codes is not None:
            local, uniques = pd.factorize(changed, use_na_sentinel=True)
            known = self._lookup().get_indexer(uniques) if len(uniques) else local[:0]
            fresh = np.flatnonzero(known < 0)
            held = len(self._uniques)
            if held + len(fresh) > self._limit:  # too many distinct values: read it all
                return JsonColumn(array, max_distinct=self._limit)
            if len(fresh):
                known[fresh] = held + np.arange(len(fresh))
                added = [json_value(u) for u in uniques.take(fresh)]
                out._uniques = _concat(self._uniques, uniques.take(fresh))
                out._index = None
                out._values = np.array([*self._values[:-1], *added, None], dtype=object)
                out._texts = np.array(
                    [*self._texts[:-1], *map(json_text, added), "null"], dtype=object
                )
            codes = self._codes.copy()
            codes[rows] = np.append(known, -1)[local]  # -1 (missing) stays -1
            out._codes = codes
            return out
        if kind in ("float", "int", "bool"):
            out._data = self._data.copy()
            fill = _FILL[kind]
            out._data[rows] = changed.to_numpy(dtype=array.dtype.numpy_dtype, na_value=fill)
            if self._mask is not None:
                out._mask = self._mask.copy()
                out._mask[rows] = np.asarray(pd.isna(changed))
        else:
            out._read(array)
        return out

    def values(self, rows: np.ndarray) -> list[Any]:
        """`json_value` of each row's value."""
        if self._codes is not None:
            return self._values[self._codes[rows]].tolist()
        kind = self._kind
        if kind == "arrow":
            return self._arrow.take(rows).to_pylist()
        if kind == "float":
            return [_number(v) for v in self._data[rows].tolist()]
        if kind in ("int", "bool"):
            vals = self._data[rows].tolist()
            assert self._mask is not None
            return [None if m else v for v, m in zip(vals, self._mask[rows].tolist(), strict=True)]
        return _json_list(self.array.take(rows))

    def texts(self, rows: np.ndarray) -> list[str]:
        """`json_text` of each row's value."""
        if self._codes is not None:
            return self._texts[self._codes[rows]].tolist()
        kind = self._kind
        if kind == "arrow":
            return ["null" if v is None else _quote(v) for v in self._arrow.take(rows).to_pylist()]
        if kind == "float":
            return [_number_text(v) for v in self._data[rows].tolist()]
        if kind == "int":
            return ["null" if v is None else str(v) for v in self.values(rows)]
        if kind == "bool":
            return ["null" if v is None else ("true" if v else "false") for v in self.values(rows)]
        return [json_text(v) for v in _json_list(self.array.take(rows))]


_FILL: dict[str, Any] = {"float": np.nan, "int": 0, "bool": False}


def _concat(a: Any, b: Any) -> Any:
    """Two numpy or pandas arrays of one type, one after the other."""
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    return type(a)._concat_same_type([a, b])


def _kind(array: Any) -> str:
    """How a column's values are read fast: float, int, bool, arrow (strings), other (dates:
    through pandas, values are typed) or object (anything: never factorised, as 1, 1.0 and
    True would merge)."""
    if isinstance(array, pd.arrays.ArrowStringArray):
        return "arrow"
    kind = array.dtype.kind
    if kind == "f":
        return "float"
    if kind in "iu":
        return "int"
    if kind == "b":
        return "bool"
    if kind == "O":
        return "object"
    return "other"


def _number(v: float) -> float | int | None:
    """`json_value` of a float: NaN is None, whole numbers are ints."""
    if v != v:
        return None
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


def _number_text(v: float) -> str:
    """`json_text` of a float's `json_value`."""
    if v != v or v in (math.inf, -math.inf):
        return "null"
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


@dataclass(frozen=True)
class Patch:
    """How a layer was made from an earlier one by changing some rows in place (`patched`):
    what its derived data may take from the earlier layer's."""

    base: weakref.ref[Layer]
    rows: np.ndarray
    """The rows that changed (same positions, same ids in both)."""
    same_geometry: bool
    columns: frozenset[str]
    """The attribute columns whose values changed in those rows."""


def _set_rows(array: Any, rows: np.ndarray, values: Any) -> Any:
    """A copy of a pandas array with `values` (an array of its dtype) at `rows` (distinct).
    Arrow-backed strings are gathered from the old and the new values (setting them in
    place makes Arrow rebuild the column twice over: ~2x the time)."""
    if isinstance(array, pd.arrays.ArrowStringArray) and isinstance(
        values, pd.arrays.ArrowStringArray
    ):
        old = array.__arrow_array__().combine_chunks()
        new = values.__arrow_array__().combine_chunks().cast(old.type)
        take = np.arange(len(old))
        take[rows] = len(old) + np.arange(len(rows))
        both = pa.concat_arrays([old, new])
        return pd.arrays.ArrowStringArray(pa.chunked_array([both.take(pa.array(take))]))
    out = array.copy()
    out[rows] = values
    return out


def same_values(old: pd.Series, new: pd.Series) -> np.ndarray:
    """Row-wise equality of two aligned columns, nulls equal to nulls."""
    a, b = old.reset_index(drop=True), new.reset_index(drop=True)
    both_null = (a.isna() & b.isna()).to_numpy(bool)
    eq = (a == b).astype("boolean").fillna(False).to_numpy(bool)
    return eq | both_null


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
    _derived: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)
    _derived_lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    origin: Patch | None = field(default=None, init=False, repr=False)
    """Set when this layer is an earlier one with rows changed in place (`patched`)."""
    previous: weakref.ref[Layer] | None = field(default=None, init=False, repr=False)
    """The version of the same collection this one replaced, while it lives (set by the
    catalog): derived data may be worked out from its."""
    seq: int = field(default=0, init=False, repr=False)
    """The newest change-log entry this layer holds, when known (read whole from a store, or
    kept in step by the catalog): an entry up to it is in it already."""

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

    def derived(self, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`, made once per `key` and kept with this layer, so it goes when the layer
        goes (like `tree`, this assumes the layer is not changed in place once served: an edit
        makes a new `Layer`). Threads asking for the same thing at once wait for one `make`."""
        try:
            return self._derived[key]
        except KeyError:
            pass
        with self._derived_lock:
            if key not in self._derived:
                self._derived[key] = make()
            return self._derived[key]

    def held(self, key: Hashable) -> Any:
        """What `derived` made for `key`, if it has (None otherwise): made nothing."""
        return self._derived.get(key)

    def boxes(self) -> np.ndarray:
        """Each feature's bounds, `(n, 4)` (NaN for an empty geometry)."""
        return self.derived("boxes", lambda: shapely.bounds(self.geometry))

    def json_column(self, name: str) -> JsonColumn:
        """The attribute column `name` ready to give JSON values and texts of any rows."""
        return self.derived(("json", name), lambda: self._json_made(name))

    def _json_made(self, name: str) -> JsonColumn:
        array = self.attrs[name].array
        patch = self.origin
        base = patch.base() if patch is not None else None
        held = base.held(("json", name)) if base is not None else None
        if patch is not None and isinstance(held, JsonColumn):
            return held.patched(array, patch.rows)  # only the rows that changed are read
        return JsonColumn(array)

    def floats(self, name: str) -> np.ndarray:
        """A numeric attribute column as float64, NaN where missing (made once, read-only)."""

        def make() -> np.ndarray:
            out = self.attrs[name].to_numpy(dtype=np.float64, na_value=np.nan)
            out.flags.writeable = False
            return out

        return self.derived(("floats", name), make)

    @cached_property
    def row_of(self) -> pd.Index:
        """Index from feature id to row number."""
        return pd.Index(self.ids)

    @cached_property
    def row_numbers(self) -> dict[Any, int]:
        """Feature id -> row number, for looking up a few ids at a time (a thousand readings:
        ~10x `row_of.get_indexer`, which first makes an index of the ids asked for)."""
        n = len(self.ids)
        # Backwards, so that an id held twice maps to its first row.
        return dict(zip(self.ids[::-1].tolist(), range(n - 1, -1, -1), strict=True))

    def rows_of(self, ids: Iterable[Any]) -> np.ndarray:
        """The row number of each of `ids`, -1 for an id not held (an id held twice: its
        first row)."""
        get = self.row_numbers.get
        return np.fromiter((get(fid, -1) for fid in ids), dtype=np.int64)

    @cached_property
    def id_set(self) -> frozenset[str]:
        """The feature ids, for membership tests one at a time (20x a pandas Index's)."""
        return frozenset(self.ids.tolist())

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

    def etag(self, row: int) -> str:
        """The ETag of row `row`'s feature as stored: its version and when it was recorded."""
        updated = utc_stamp(self.attrs[UPDATED].iloc[row])
        return feature_etag(int(self.attrs[VERSION].iloc[row]), updated)

    def matching(self, match: Match) -> np.ndarray:
        """Whether each feature is one `match` matches (`Store.window`)."""
        if match.field not in self.attrs:
            raise ValueError(f"{self.name} has no field {match.field!r}")
        col = self.attrs[match.field]
        values = [v for v in match.values if v is not None]
        hit = col.astype(object).astype(str).isin(values) & col.notna()
        if len(values) < len(match.values):
            hit |= col.isna()
        return hit.to_numpy(dtype=bool)

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

    def without_fields(self, names: Iterable[str]) -> Layer:
        """A new layer of the same rows without the fields `names` (gone from its schema and
        its table)."""
        gone = set(names)
        schema = dataclasses.replace(
            self.schema, fields=tuple(f for f in self.schema.fields if f.name not in gone)
        )
        kept = [c for c in self.attrs.columns if c not in gone]
        return Layer(schema, self.ids, self.geometry, self.attrs[kept], dict(self.meta))

    @classmethod
    def concat(cls, parts: Sequence[Layer]) -> Layer:
        """The features of `parts` (one schema) one after another."""
        first = parts[0]
        return cls(
            first.schema,
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.geometry for p in parts]),
            pd.concat([p.attrs for p in parts], ignore_index=True),
            dict(first.meta),
        )

    def patched(self, current: Layer, gone: Iterable[str] = ()) -> Layer:
        """A new layer: this one with the features of `current` (same schema and columns) in
        place of those of the same ids, the others of `current` appended in its order, and the
        features `gone` removed; the layer's order stays the store's (an update keeps its row,
        a new feature comes last)."""
        n = len(self)
        pos = self.row_of.get_indexer(current.ids) if n else np.full(len(current), -1)
        gone = list(gone)
        if n and len(pos) and (pos >= 0).all() and not gone and current.schema == self.schema:
            return self._updated_in_place(current, pos)
        take = np.arange(n)
        known = pos >= 0
        take[pos[known]] = n + np.flatnonzero(known)
        keep = np.ones(n, dtype=bool)
        drop = self.row_of.get_indexer(list(gone)) if n else np.array([], dtype=np.int64)
        keep[drop[drop >= 0]] = False
        take = np.concatenate([take[keep], n + np.flatnonzero(~known)])
        both = pd.concat([self.attrs, current.attrs], ignore_index=True)
        return Layer(
            self.schema,
            np.concatenate([self.ids, current.ids])[take],
            np.concatenate([self.geometry, current.geometry])[take],
            both.iloc[take].reset_index(drop=True),
            dict(self.meta),
        )

    def _updated_in_place(self, current: Layer, rows: np.ndarray) -> Layer:
        """`patched` when every feature of `current` is one of this layer's: the new layer
        shares what did not change (unchanged columns, the geometry array, and the derived
        data of both: spatial index, JSON and float columns), and says what did (`origin`)."""
        same_geometry = bool(shapely.equals_identical(self.geometry[rows], current.geometry).all())
        geometry = self.geometry
        if not same_geometry:
            geometry = self.geometry.copy()
            geometry[rows] = current.geometry
        columns: dict[str, pd.Series] = {}
        changed: set[str] = set()
        for name in self.attrs.columns:
            old, new = self.attrs[name], current.attrs[name]
            if same_values(old.iloc[rows], new).all():
                columns[name] = old
                continue
            changed.add(name)
            col = old.copy()
            col.iloc[rows] = new.to_numpy()
            columns[name] = col
        return self._sharing(columns, geometry, rows, same_geometry, changed)

    def with_state(
        self,
        values: dict[str, tuple[np.ndarray, list[Any]]],
        counts: np.ndarray,
        stamps: np.ndarray,
    ) -> Layer:
        """A new layer: this one with values set in place (`values`: per property, distinct rows
        and their new values), the version of each row
        `counts` more and its time recorded moved on to `stamps` (ms since the epoch, where
        later). Shares the rest, like `patched`; what a batch of readings does to a layer."""
        columns = {name: self.attrs[name] for name in self.attrs.columns}
        types = {f.name: f.type for f in self.schema.fields}
        for name, (rows, new) in values.items():
            typed = coerce(pd.Series(new, dtype=object), types[name]).array
            columns[name] = pd.Series(_set_rows(columns[name].array, rows, typed), name=name)
        version = self.attrs[VERSION].to_numpy(dtype=np.int64) + counts
        updated = self.attrs[UPDATED].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        updated = np.maximum(updated, stamps)
        columns[VERSION] = pd.Series(version, name=VERSION)
        columns[UPDATED] = pd.Series(updated.astype("datetime64[ms]"), name=UPDATED).dt.tz_localize(
            "UTC"
        )
        rows = np.flatnonzero(counts)
        return self._sharing(columns, self.geometry, rows, True, {*values, VERSION, UPDATED})

    def _sharing(
        self,
        columns: dict[str, pd.Series],
        geometry: np.ndarray,
        rows: np.ndarray,
        same_geometry: bool,
        changed: set[str],
    ) -> Layer:
        """A layer of `columns` and `geometry` made from this one by changing `rows` in place,
        sharing what did not change (see `_updated_in_place`)."""
        # Series are not copied (a new column is one already; the others are shared as read only).
        attrs = pd.DataFrame(columns, copy=False)
        layer = Layer(self.schema, self.ids, geometry, attrs, dict(self.meta))
        layer.__dict__["row_of"] = self.row_of
        for name in ("id_set", "row_numbers"):
            if name in self.__dict__:
                layer.__dict__[name] = self.__dict__[name]
        if same_geometry:
            for name in ("tree", "bounds", "geometry_types"):
                if name in self.__dict__:
                    layer.__dict__[name] = self.__dict__[name]
            if "boxes" in self._derived:
                layer._derived["boxes"] = self._derived["boxes"]
        with self._derived_lock:
            for key, value in self._derived.items():
                if (
                    isinstance(key, tuple)
                    and key[0] in ("json", "floats")
                    and key[1] not in changed
                ):
                    layer._derived[key] = value
        layer.origin = Patch(weakref.ref(self), rows, same_geometry, frozenset(changed))
        return layer

    def query(self, geometry: Any, predicate: str | None = "intersects") -> np.ndarray:
        """Sorted row numbers of features meeting `geometry` (or its bbox when predicate is None)."""
        if len(self) == 0:
            return np.array([], dtype=np.int64)
        return np.sort(self.tree.query(geometry, predicate=predicate)).astype(np.int64)

    def query_bbox(self, bounds: Iterable[float]) -> np.ndarray:
        """Sorted row numbers of features whose geometry intersects the box."""
        return self.query(shapely.box(*bounds), predicate="intersects")

    def property_names(self, *, system: bool = False) -> list[str]:
        """The columns features carry as properties: the schema's fields and `source` (all
        system columns when asked)."""
        return self.schema.field_names + ([*SYSTEM_COLUMNS] if system else [SOURCE])

    def properties(self, rows: Sequence[int] | np.ndarray, *, system: bool = False) -> list[dict]:
        """JSON-ready property dicts for `rows`; system columns only when asked."""
        names = self.property_names(system=system)
        rows = np.asarray(rows, dtype=np.int64)
        cols = [self.json_column(c).values(rows) for c in names]
        return [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]

    def properties_json(
        self, rows: Sequence[int] | np.ndarray, *, system: bool = False
    ) -> list[str]:
        """`properties` as compact JSON object texts (what `json.dumps` of each dict gives, with
        non-finite numbers as null), written without building the dicts."""
        names = self.property_names(system=system)
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        template = object_template(tuple(names))
        cols = [self.json_column(c).texts(rows) for c in names]
        return [template % values for values in zip(*cols, strict=True)]

    def id_texts(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        """JSON texts of the feature ids of `rows`."""
        return [
            _quote(fid) if isinstance(fid, str) else json_text(json_value(fid))
            for fid in self.ids[np.asarray(rows, dtype=np.int64)].tolist()
        ]

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


class Head(Protocol):
    """What describes a vector layer without its features: a `Layer` is one, and so is
    `LayerHead` (a layer a catalog does not hold)."""

    @property
    def name(self) -> str: ...

    @property
    def schema(self) -> LayerSchema: ...

    @property
    def meta(self) -> dict[str, Any]: ...

    @property
    def bounds(self) -> Bounds | None: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class LayerHead:
    """A vector layer as the store's list describes it (`LayerInfo`), for one a catalog does
    not hold."""

    schema: LayerSchema
    meta: dict[str, Any]
    bounds: Bounds | None
    count: int

    @property
    def name(self) -> str:
        return self.schema.name

    def __len__(self) -> int:
        return self.count
