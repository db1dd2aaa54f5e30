"""The embedded store: one GeoPackage file (plus COG rasters) in a store directory.

Writes go through SQLite transactions, so an import lands whole or not at all, whatever
happens mid-way (a bad record, an exception, a killed process). The file stays a valid
GeoPackage 1.3 that GDAL and QGIS open directly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import struct
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from rasterio.errors import RasterioError

from layers import gpkg_live as live
from layers.errors import PreconditionFailed, StoreError, Uncompiled, UnknownCollection
from layers.layer import SOURCE, UPDATED, VERSION, Layer, coerce, dtype_of, empty_attrs
from layers.life import temporal_extent
from layers.models import (
    Access,
    Bounds,
    Change,
    ChangeKind,
    Field,
    FieldType,
    GeometryFamily,
    ImportRecord,
    LayerSchema,
    Match,
    Observed,
    Reading,
    Readings,
    StateRun,
    Thinning,
    WriteResult,
    utc_stamp,
)
from layers.raster import bounds_at, copy_remote, lonlat_bounds
from layers.schemas import check_name
from layers.search import Hit, search_layers
from layers.store import LayerInfo, RasterInfo, WriteMode
from layers.where import Where

GPKG_FILE = "twin.gpkg"
PAGE_SIZE = 32768  # bytes, for new store files
CACHE_KIB = 65536  # SQLite page cache per connection
_ROWS_PER_INSERT = 200
_CHUNK = 50_000  # features encoded and written at a time
_MAX_PARAMS = 30_000  # under SQLite's limit of 32,766 bound parameters per statement
_IDS_PER_READ = 20_000  # ids bound in one SELECT ... IN (...): under SQLite's 32,766
HISTORY_ROWS = 200_000
"""Readings moved into the indexed history per transaction by `settle`."""
FEED_FEATURES_MAX = 10_000
"""A write changing more features than this is one `LAYER` entry of the change log (followers
reload the collection) instead of one entry per feature."""
RASTER_DIR = "rasters"
SRS_ID = 4326
GEOM = "geom"
HASH = "_hash"

_SQL_TYPES = {
    FieldType.STRING: "TEXT",
    FieldType.INTEGER: "INTEGER",
    FieldType.FLOAT: "REAL",
    FieldType.BOOLEAN: "BOOLEAN",
    FieldType.DATE: "DATE",
    FieldType.DATETIME: "DATETIME",
}
# Envelope sizes by the envelope-indicator bits of a GeoPackage geometry header.
_ENVELOPE = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}

_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
    'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,'
    'AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)

_BOOTSTRAP = (
    f"""
PRAGMA application_id = 1196444487;
PRAGMA user_version = 10300;
CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES
  ('Undefined cartesian SRS', -1, 'NONE', -1, 'undefined', 'undefined cartesian coordinate reference system'),
  ('Undefined geographic SRS', 0, 'NONE', 0, 'undefined', 'undefined geographic coordinate reference system'),
  ('WGS 84 geodetic', 4326, 'EPSG', 4326, '{_WGS84_WKT}', 'longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid');
CREATE TABLE IF NOT EXISTS gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
  srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
CREATE TABLE IF NOT EXISTS twin_layers (
  name TEXT PRIMARY KEY, kind TEXT NOT NULL, schema TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{{}}');
CREATE TABLE IF NOT EXISTS twin_files (
  layer TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (layer, name));
CREATE TABLE IF NOT EXISTS twin_imports (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, time DATETIME NOT NULL,
  user TEXT NOT NULL, source TEXT NOT NULL, mode TEXT NOT NULL,
  added INTEGER NOT NULL, updated INTEGER NOT NULL, unchanged INTEGER NOT NULL,
  removed INTEGER NOT NULL, rejected INTEGER NOT NULL, repaired INTEGER NOT NULL,
  details TEXT NOT NULL DEFAULT '{{}}');
CREATE TABLE IF NOT EXISTS twin_changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, id TEXT, kind TEXT NOT NULL,
  old_min_x REAL, old_min_y REAL, old_max_x REAL, old_max_y REAL,
  new_min_x REAL, new_min_y REAL, new_max_x REAL, new_max_y REAL,
  user TEXT NOT NULL, time DATETIME NOT NULL, why TEXT NOT NULL, properties TEXT,
  n INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS twin_readings (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, id TEXT NOT NULL,
  property TEXT NOT NULL, time DATETIME NOT NULL, value TEXT NOT NULL,
  received DATETIME NOT NULL, user TEXT NOT NULL, applied INTEGER);
CREATE INDEX IF NOT EXISTS twin_readings_feature ON twin_readings (collection, id, time);
CREATE TABLE IF NOT EXISTS twin_versions (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, id TEXT NOT NULL,
  version INTEGER NOT NULL, valid_from DATETIME NOT NULL, valid_to DATETIME NOT NULL, geom BLOB,
  properties TEXT NOT NULL, source TEXT, first_fid INTEGER, user TEXT NOT NULL,
  why TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS twin_versions_feature ON twin_versions (collection, id);
CREATE INDEX IF NOT EXISTS twin_versions_time ON twin_versions (collection, valid_to);
CREATE TABLE IF NOT EXISTS twin_state (
  collection TEXT NOT NULL, id TEXT NOT NULL, property TEXT NOT NULL, time DATETIME NOT NULL,
  value TEXT, live INTEGER NOT NULL DEFAULT 0, seq INTEGER, n INTEGER NOT NULL DEFAULT 0,
  recorded DATETIME, PRIMARY KEY (collection, id, property));
"""
    + live.SCHEMA
)


def _now() -> dt.datetime:
    t = dt.datetime.now(dt.UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _q(name: str) -> str:
    """A quoted SQL identifier (names are checked identifiers, quoting is belt and braces)."""
    return '"' + name.replace('"', '""') + '"'


_CHANGE_COLUMNS = (
    "collection, id, kind, old_min_x, old_min_y, old_max_x, old_max_y, "
    "new_min_x, new_min_y, new_max_x, new_max_y, user, time, why, properties"
)


def feature_boxes(geoms: np.ndarray) -> list[tuple[float | None, ...]]:
    """Each geometry's bounds as four numbers (four None for a missing or empty one)."""
    b = shapely.bounds(geoms) if len(geoms) else np.empty((0, 4))
    return [tuple(None if v != v else v for v in row) for row in b.tolist()]


@dataclass(frozen=True)
class _Log:
    """Change-log entries of one write, inside its transaction."""

    db: sqlite3.Connection
    name: str
    user: str
    stamp: str
    why: str

    def layer(self) -> None:
        """One entry for the whole collection."""
        self.db.execute(
            f"INSERT INTO twin_changes ({_CHANGE_COLUMNS}) VALUES "
            "(?, NULL, 'layer', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ?, ?, ?, NULL)",
            (self.name, self.user, self.stamp, self.why),
        )

    def features(
        self,
        kind: ChangeKind,
        ids: list[str],
        old: list[tuple[float | None, ...]] | None = None,
        new: list[tuple[float | None, ...]] | None = None,
        properties: list[Any] | None = None,
    ) -> None:
        """One entry per feature, with its boxes before and after and the properties that
        changed (`geometry` among them when it moved; none given: all of them): their names,
        or `{name: value}` when the entry sets them (a reading)."""
        none = (None,) * 4
        self.db.executemany(
            f"INSERT INTO twin_changes ({_CHANGE_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    self.name,
                    fid,
                    kind.value,
                    *(old[i] if old else none),
                    *(new[i] if new else none),
                    self.user,
                    self.stamp,
                    self.why,
                    None if properties is None else json.dumps(properties[i]),
                )
                for i, fid in enumerate(ids)
            ),
        )


def _by_ids(db: sqlite3.Connection, sql: str, ids: list[str], *params: Any) -> list[tuple]:
    """Rows of `sql` (ending `... id IN`) for `ids`, 500 ids a statement, `params` first."""
    out: list[tuple] = []
    for lo in range(0, len(ids), 500):
        part = ids[lo : lo + 500]
        out += db.execute(f"{sql} ({', '.join('?' * len(part))})", (*params, *part)).fetchall()
    return out


def _state_times(
    db: sqlite3.Connection, keys: list[tuple[str, str, str]]
) -> dict[tuple[str, str, str], str]:
    """The time of the state recorded for each (collection, id, property) that has one."""
    out: dict[tuple[str, str, str], str] = {}
    by_layer: dict[str, list[str]] = {}
    for c, fid, _ in keys:
        by_layer.setdefault(c, []).append(fid)
    sql = "SELECT id, property, time FROM twin_state WHERE collection = ? AND id IN"
    for c, fids in by_layer.items():
        rows = _by_ids(db, sql, list(dict.fromkeys(fids)), c)
        out.update(((c, fid, p), t) for fid, p, t in rows)
    return out


def _stored(db: sqlite3.Connection, name: str, ids: list[str], cols: str) -> list[tuple]:
    """Rows `id, <cols>` of the stored features of `ids`."""
    return _by_ids(db, f"SELECT id, {cols} FROM {_q(name)} WHERE id IN", ids)


def _changed(
    db: sqlite3.Connection, name: str, ids: list[str], fields: Sequence[Field], new: list[list[Any]]
) -> tuple[list[tuple], list[list[str]]]:
    """For each feature of `ids`: the box of its stored geometry, and the properties whose
    `new` values (as `columns` gives them: geometry blobs, then one list per field) differ
    from those served (the stored row with the live state readings set laid over it;
    `geometry` first)."""
    names = [f.name for f in fields]
    cols = ", ".join([GEOM, *(_q(n) for n in names)])
    stored = {r[0]: list(r[1:]) for r in _stored(db, name, ids, cols)}
    at = {n: i + 1 for i, n in enumerate(names)}
    types = {f.name: f.type for f in fields}
    for fid, prop, value, _, _ in live.live_rows(db, name, ids):
        if fid in stored and prop in at:
            (sql,) = _sql_values(pd.Series([json.loads(value)], dtype=object), types[prop])
            stored[fid][at[prop]] = sql
    olds = [stored[fid] for fid in ids]
    boxes = feature_boxes(decode_geometries([old[0] for old in olds])) if olds else []
    labels = ["geometry", *names]
    changed = [
        [
            label
            for j, label in enumerate(labels)
            if old[j] != new[j][i] and not (old[j] is None and new[j][i] is None)
        ]
        for i, old in enumerate(olds)
    ]
    return boxes, changed


def _keep_versions(db: sqlite3.Connection, name: str, ids: list[str], log: _Log) -> None:
    """Copy the stored rows of `ids` into `twin_versions` before they change or go: each
    becomes a version valid from its `_updated` to now, ended by `log`'s who and why."""
    (schema_json,) = db.execute("SELECT schema FROM twin_layers WHERE name = ?", (name,)).fetchone()
    names = LayerSchema.from_json(json.loads(schema_json)).field_names
    # json_object takes at most 127 arguments: 60 fields a call, merged.
    parts = [
        "json_object(" + ", ".join(f"'{n}', {_q(n)}" for n in names[lo : lo + 60]) + ")"
        for lo in range(0, max(len(names), 1), 60)
    ]
    props = parts[0] if len(parts) == 1 else "json_patch(" + ", ".join(parts) + ")"
    if not names:
        props = "json_object()"
    for lo in range(0, len(ids), 500):
        part = ids[lo : lo + 500]
        db.execute(
            "INSERT INTO twin_versions (collection, id, version, valid_from, valid_to, geom, "
            "properties, source, first_fid, user, why) "
            f"SELECT ?, id, {VERSION}, {UPDATED}, ?, {GEOM}, {props}, {SOURCE}, fid, ?, ? "
            f"FROM {_q(name)} WHERE id IN ({', '.join('?' * len(part))})",
            (name, log.stamp, log.user, log.why, *part),
        )


def _check_expected(db: sqlite3.Connection, name: str, expect: dict[str, str | None]) -> None:
    """`PreconditionFailed` unless each feature of `expect` is in the state its ETag names
    (None: absent)."""
    now = live.etags(db, name, name, list(expect))
    for fid, etag in expect.items():
        held = now.get(fid)
        if etag is None and held is not None:
            raise PreconditionFailed(f"{name} already has a feature {fid!r}")
        if etag is not None and held != etag:
            state = "it was removed" if held is None else f"it is now {held}"
            raise PreconditionFailed(
                f"feature {fid!r} of {name} is not in the state {etag} any more ({state}): "
                "fetch it again and retry"
            )


def _stored_boxes(db: sqlite3.Connection, name: str, ids: list[str]) -> dict[str, tuple]:
    """The boxes of the stored geometries of `ids` (before a change)."""
    rows = _stored(db, name, ids, GEOM)
    boxes = feature_boxes(decode_geometries([r[1] for r in rows])) if rows else []
    return dict(zip((r[0] for r in rows), boxes, strict=True))


def _layer_of(schema: LayerSchema, meta: dict[str, Any], rows: list[tuple]) -> Layer:
    """A layer of stored rows `(id, geom, *fields, source, _version, _updated)`."""
    if not rows:
        return Layer(
            schema,
            np.array([], dtype=object),
            np.array([], dtype=object),
            empty_attrs(schema),
            meta,
        )
    columns = list(zip(*rows, strict=True))
    fids = np.array(columns[0], dtype=object)
    geometry = decode_geometries(list(columns[1]))
    data: dict[str, pd.Series] = {}
    for f, values in zip(schema.fields, columns[2:], strict=False):
        s = pd.Series(values, dtype=object)
        if f.type is FieldType.BOOLEAN:
            s = s.map(lambda v: None if v is None else bool(v))
        data[f.name] = coerce(s, f.type)
    n_fields = len(schema.fields)
    data[SOURCE] = pd.Series(columns[2 + n_fields], dtype=object).astype(dtype_of(FieldType.STRING))
    data[VERSION] = pd.Series(columns[3 + n_fields], dtype=np.int64)
    data[UPDATED] = pd.to_datetime(pd.Series(columns[4 + n_fields]), utc=True).astype(
        "datetime64[ms, UTC]"
    )
    return Layer(schema, fids, geometry, pd.DataFrame(data), meta)


def _version_row(schema: LayerSchema, r: tuple) -> tuple:
    """A `twin_versions` row `(id, geom, properties, source, version, valid_from, ...)` as a
    stored row: the fields from its JSON properties (null where it had none)."""
    props = json.loads(r[2])
    return (r[0], r[1], *(props.get(n) for n in schema.field_names), r[3], r[4], r[5])


_HEADER = np.dtype(
    [("magic", "S2"), ("version", "u1"), ("flags", "u1"), ("srs", "<i4"), ("envelope", "<f8", 4)]
)
_EMPTY_HEADER = struct.Struct("<2sBBi").pack(b"GP", 0, 0b10001, SRS_ID)


def encode_geometries(geoms: np.ndarray, wkb: np.ndarray | None = None) -> list[bytes | None]:
    """GeoPackage geometry blobs (header with an xy envelope + little-endian WKB).

    `wkb` may pass the geometries' 2D little-endian ISO WKB when the caller has it already.
    """
    n = len(geoms)
    if n == 0:
        return []
    if wkb is None:
        wkb = shapely.to_wkb(geoms, byte_order=1, flavor="iso", output_dimension=2)
    # Every header at once in one numpy buffer; only the concatenation is per feature.
    hdr = np.zeros(n, dtype=_HEADER)
    hdr["magic"] = b"GP"
    hdr["flags"] = 0b00011
    hdr["srs"] = SRS_ID
    hdr["envelope"] = shapely.bounds(geoms)[:, [0, 2, 1, 3]]
    raw = hdr.tobytes()
    size = _HEADER.itemsize
    out: list[bytes | None] = [
        None if w is None else raw[i * size : (i + 1) * size] + w
        for i, w in enumerate(wkb.tolist())
    ]
    for i in np.flatnonzero(shapely.is_empty(geoms)).tolist():
        if out[i] is not None:  # an empty geometry has no envelope, and says so in its flags
            out[i] = _EMPTY_HEADER + wkb[i]
    return out


def decode_geometries(blobs: list[bytes | None]) -> np.ndarray:
    """Shapely geometries from GeoPackage geometry blobs."""
    wkb = [None if b is None else b[8 + _ENVELOPE.get((b[3] >> 1) & 7, 0) :] for b in blobs]
    return shapely.from_wkb(np.array(wkb, dtype=object)) if wkb else np.array([], dtype=object)


def offered(layer: Layer, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """What every store checks and works out of a layer offered to `write`: the mode known,
    no id twice; each feature's 2D little-endian ISO WKB and its hash (what tells an update
    from an unchanged feature)."""
    if mode not in ("upsert", "replace"):
        raise ValueError(f"unknown write mode {mode!r}")
    if len(set(layer.ids.tolist())) != len(layer):
        raise StoreError(f"duplicate feature ids offered to {layer.name!r}")
    wkb = (
        shapely.to_wkb(layer.geometry, byte_order=1, flavor="iso", output_dimension=2)
        if len(layer)
        else np.array([], dtype=object)
    )
    return wkb, feature_hashes(layer, wkb)


def feature_hashes(layer: Layer, wkb: np.ndarray | None = None) -> np.ndarray:
    """A content hash per feature over its geometry and schema attributes (int64).

    `wkb` may pass the geometries' 2D little-endian WKB when the caller has it already.
    """
    if len(layer) == 0:
        return np.array([], dtype=np.int64)
    if wkb is None:
        wkb = shapely.to_wkb(layer.geometry, byte_order=1, flavor="iso", output_dimension=2)
    # categorize=False: every WKB is distinct, so factorizing them first only costs time
    # (ten times as much); the hashes are the same either way.
    h = pd.util.hash_array(np.asarray(wkb, dtype=object), categorize=False).astype(np.uint64)
    names = layer.schema.field_names
    if names:
        ha = pd.util.hash_pandas_object(layer.attrs[names], index=False).to_numpy(np.uint64)
        with np.errstate(over="ignore"):
            h = h * np.uint64(0x9E3779B97F4A7C15) ^ ha
    return h.view(np.int64)


def _sql_values(series: pd.Series, ftype: FieldType) -> list[Any]:
    """Column values as SQLite parameters (None for nulls), converted column-wise."""
    if ftype is FieldType.DATE:
        series = series.dt.strftime("%Y-%m-%d")
    elif ftype is FieldType.DATETIME:
        series = series.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    elif ftype is FieldType.BOOLEAN:
        series = series.astype("Int64")
    out: list[Any] = series.to_numpy(dtype=object, na_value=None).tolist()
    return out


def _insert_many(db: sqlite3.Connection, head: str, columns: list[list[Any]]) -> None:
    """`head` + VALUES for every row of `columns`, many rows per statement.

    Binding a few hundred rows per statement, rather than one, saves about a quarter of the
    time of a bulk insert (fewer statement steps and Python round trips).
    """
    width = len(columns)
    n = len(columns[0])
    per = max(1, min(_ROWS_PER_INSERT, _MAX_PARAMS // width))
    one = "(" + ", ".join("?" * width) + ")"
    full = n - n % per
    if full:
        many = head + ", ".join([one] * per)
        db.executemany(
            many,
            (
                tuple(chain.from_iterable(zip(*(c[i : i + per] for c in columns), strict=True)))
                for i in range(0, full, per)
            ),
        )
    if full < n:
        db.executemany(head + one, zip(*(c[full:] for c in columns), strict=True))


def _retype(db: sqlite3.Connection, table: str, column: str, old: str, ftype: FieldType) -> None:
    """Give a column a wider type (an extra attribute whose values grew: integer -> float,
    anything -> text), its values converted, so that GDAL reads the column as what it holds."""
    tmp = f"{column}__retyped"
    value = _q(column)
    if ftype is FieldType.FLOAT:
        value = f"CAST({value} AS REAL)"
    elif ftype is FieldType.STRING and old == _SQL_TYPES[FieldType.BOOLEAN]:
        value = f"CASE {value} WHEN 1 THEN 'true' WHEN 0 THEN 'false' ELSE {value} END"
    elif ftype is FieldType.STRING:
        value = f"CAST({value} AS TEXT)"
    db.execute(f"ALTER TABLE {_q(table)} ADD COLUMN {_q(tmp)} {_SQL_TYPES[ftype]}")
    db.execute(f"UPDATE {_q(table)} SET {_q(tmp)} = {value}")
    db.execute(f"ALTER TABLE {_q(table)} DROP COLUMN {_q(column)}")
    db.execute(f"ALTER TABLE {_q(table)} RENAME COLUMN {_q(tmp)} TO {_q(column)}")


class GeoPackageStore:
    """The embedded store: `<dir>/twin.gpkg` for vector layers, `<dir>/rasters/*.tif` for rasters."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.root = Path(path)
        self.location = str(self.root)
        if self.root.suffix.lower() == ".gpkg":
            raise StoreError(f"{path} is a file name; a store is a directory holding {GPKG_FILE}")
        if not self.root.exists():
            if not create:
                raise StoreError(f"no store at {self.root}")
            self.root.mkdir(parents=True)
        self.file = self.root / GPKG_FILE
        self._lock = threading.RLock()
        self._times = live.StateTimes()
        try:
            self._connect()
            with self._lock:
                # Large pages make bulk imports ~40% faster (fewer B-tree splits); a no-op on
                # an existing file, whose page size is fixed.
                self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                # The GeoPackage header is written before WAL is on, so it lands in the file
                # itself, where GDAL reads it.
                self._db.executescript(f"BEGIN IMMEDIATE; {_BOOTSTRAP}")
                try:
                    live.migrate(self._db)
                finally:
                    self._db.execute("COMMIT")
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.file}: {exc}") from None

    def _connect(self) -> None:
        self._db = sqlite3.connect(
            self.file, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

    def __repr__(self) -> str:
        return f"GeoPackageStore({self.location!r})"

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _entries(self, kind: str) -> dict[str, tuple[LayerSchema, dict]]:
        rows = self._rows("SELECT name, schema, meta FROM twin_layers WHERE kind = ?", (kind,))
        return {n: (LayerSchema.from_json(json.loads(s)), json.loads(m)) for n, s, m in rows}

    def _entry(self, name: str, scope: Access, kind: str = "vector") -> tuple[LayerSchema, dict]:
        rows = self._rows(
            "SELECT schema, meta FROM twin_layers WHERE name = ? AND kind = ?", (name, kind)
        )
        if not rows:
            raise UnknownCollection(name)
        schema = LayerSchema.from_json(json.loads(rows[0][0]))
        if schema.classification > scope:
            raise UnknownCollection(name)
        return schema, json.loads(rows[0][1])

    # -- reads ------------------------------------------------------------------------------

    def layers(self, scope: Access) -> dict[str, LayerInfo]:
        """Vector layers visible at `scope`, with counts, bounds and last change."""
        out = {}
        for name, (schema, meta) in sorted(self._entries("vector").items()):
            if schema.classification > scope:
                continue
            row = self._rows(
                "SELECT min_x, min_y, max_x, max_y, last_change FROM gpkg_contents "
                "WHERE table_name = ?",
                (name,),
            )
            (count,) = self._rows(f"SELECT count(*) FROM {_q(name)}")[0]
            b = row[0][:4] if row else (None,) * 4
            bounds = Bounds(*b) if None not in b and count else None
            out[name] = LayerInfo(schema, int(count), bounds, row[0][4] if row else None, meta)
        return out

    def rasters(self, scope: Access) -> dict[str, RasterInfo]:
        """Raster collections visible at `scope`."""
        out = {}
        for name, (schema, meta) in sorted(self._entries("raster").items()):
            if schema.classification <= scope:
                path = self.root / RASTER_DIR / f"{name}.tif"
                version, bounds = _raster_place(path)
                out[name] = RasterInfo(
                    name, schema.title, path, schema.classification, meta, bounds, version
                )
        return out

    def schema(self, name: str, scope: Access) -> LayerSchema:
        """The schema of vector layer `name`."""
        return self._entry(name, scope)[0]

    def meta(self, name: str, scope: Access) -> dict[str, Any]:
        """Free-form metadata of a layer (attribution, licence, ...)."""
        return self._entry(name, scope)[1]

    def load(self, name: str, scope: Access) -> Layer:
        """Read a whole vector layer into memory."""
        return self._read(name, scope)

    def features(self, name: str, ids: Sequence[str], scope: Access) -> Layer:
        """The stored features of `ids` (those that exist), in the layer's stored order."""
        ids = list(dict.fromkeys(ids))
        parts = [
            self._read(name, scope, ids[lo : lo + _IDS_PER_READ])
            for lo in range(0, max(len(ids), 1), _IDS_PER_READ)
        ]
        if len(parts) == 1:
            return parts[0]
        return Layer.concat(parts)

    def window(
        self,
        name: str,
        bbox: Bounds,
        scope: Access,
        thin: Thinning | None = None,
        match: Match | None = None,
    ) -> Layer:
        """The features whose box meets `bbox` (lon/lat), in the layer's stored order (read
        whole and cut: a server on this store holds its layers and never asks; `thin` is
        left to the tile, which applies it itself), only those `match` matches."""
        layer = self.load(name, scope)
        rows = np.sort(layer.query(shapely.box(*bbox), predicate=None))
        if match is not None:
            rows = rows[layer.matching(match)[rows]]
        return layer.take(rows)

    def page(self, name: str, scope: Access, limit: int, offset: int) -> tuple[Layer, int]:
        """Features `offset` to `offset + limit` of the layer in stored order, and how many
        it holds."""
        layer = self.load(name, scope)
        return layer.take(np.arange(len(layer))[offset : offset + limit]), len(layer)

    def select(
        self, name: str, scope: Access, where: Where, limit: int, offset: int
    ) -> tuple[Layer, int]:
        """Always `Uncompiled`: a server on this store holds its layers and selects from them
        in memory (as the layer read whole, or `chunks`, would)."""
        self.schema(name, scope)
        raise Uncompiled("the embedded store selects in memory")

    def chunks(
        self, name: str, scope: Access, size: int, where: Where | None = None
    ) -> Iterator[Layer]:
        """The whole layer in stored order, `size` features at a time (`where` is left to
        the caller)."""
        layer = self.load(name, scope)
        for lo in range(0, len(layer), size):
            yield layer.take(np.arange(lo, min(lo + size, len(layer))))

    def temporal(self, name: str) -> list[str | None] | None:
        """The layer's temporal extent (`layers.life.temporal_extent`)."""
        return temporal_extent(self.load(name, Access.RESTRICTED))

    def boxes(self, name: str, ids: Sequence[str]) -> np.ndarray:
        """The boxes (lon/lat, `(k, 4)`) of features `ids`, NaN for those absent or without
        geometry."""
        out = np.full((len(ids), 4), np.nan)
        got = self.features(name, list(ids), Access.RESTRICTED)
        rows = got.row_of.get_indexer(list(ids)) if len(got) else np.full(len(ids), -1)
        known = rows >= 0
        out[known] = got.boxes()[rows[known]]
        return out

    def search(
        self, layers: Mapping[str, Collection[str]], text: str, words: Sequence[str], limit: int
    ) -> list[Hit]:
        """Up to `limit` hits of the layers named, best first (each read whole, less the
        fields named, and searched in memory: a server on this store holds its layers and
        searches them itself)."""
        held = {
            name: self.load(name, Access.RESTRICTED).without_fields(hidden)
            for name, hidden in layers.items()
        }
        return search_layers(held, text, words, limit)

    def _read(self, name: str, scope: Access, ids: list[str] | None = None) -> Layer:
        """Stored features as served: their rows with their live state laid over them."""
        schema, meta = self._entry(name, scope)
        cols = [*schema.field_names, SOURCE, VERSION, UPDATED]
        sql = f"SELECT id, {GEOM}, {', '.join(_q(c) for c in cols)} FROM {_q(name)}"
        if ids is not None:
            sql += f" WHERE id IN ({', '.join('?' * len(ids))})"
        with self._transaction() as db:  # one snapshot of rows and state, settled first
            live.settle(db, history=False)
            rows = db.execute(sql + " ORDER BY fid", tuple(ids or ())).fetchall()
            state = live.live_rows(db, name, ids)
            seq = live.revision(db)
        layer = live.overlay(_layer_of(schema, meta, rows), state)
        if ids is None:
            layer.seq = seq
        return layer

    def settle(self, history: bool = True) -> int:
        """Fold the readings appended since the last time into the stored state and (with
        `history`) the indexed history (see `layers.gpkg_live`); returns how many."""
        done = 0
        with self._lock:  # what is there now; readings landing meanwhile wait for next time
            (last,) = self._db.execute("SELECT max(rowid) FROM twin_readings_new").fetchone()
        # The state in one transaction (each of its pages written once); the history in
        # large ones (see `layers.gpkg_live.settle`).
        most = HISTORY_ROWS if history else None
        while last is not None:
            with self._lock, self._transaction() as db:
                n = live.settle(db, most, last, history=history)
            if not n:
                return done
            done += n
            time.sleep(0.001)  # a writer waiting on the lock gets it now
        return done

    def versions(self, name: str, fid: str, scope: Access) -> tuple[Layer, list[tuple]]:
        """Every earlier version of feature `fid`, oldest first, as a layer of rows with the
        id repeated (`_version`, `_updated` = when it began), and for each when it ended, by
        whom and why."""
        schema, meta = self._entry(name, scope)
        cols = ", ".join(_q(c) for c in [*schema.field_names, SOURCE, VERSION, UPDATED])
        with self._transaction() as db:
            live.settle(db)
            rows = db.execute(
                "SELECT id, geom, properties, source, version, valid_from, valid_to, user, why "
                "FROM twin_versions WHERE collection = ? AND id = ? ORDER BY valid_to, seq",
                (name, fid),
            ).fetchall()
            now = db.execute(f"SELECT id, {GEOM}, {cols} FROM {_q(name)} WHERE id = ?", (fid,))
            current = now.fetchone()
            applied = live.applied_readings(db, name, fid)
        base = [(_version_row(schema, r), r[6], r[7], r[8]) for r in rows]
        if current is not None:
            base.append((tuple(current), None, None, None))
        versions = live.reading_versions(schema, base, applied)
        if current is not None:
            versions.pop()  # the current version is the feature as served
        layer = _layer_of(schema, meta, [v[0] for v in versions])
        return layer, [v[1:] for v in versions]

    def as_of(self, name: str, time: str, scope: Access, ids: list[str] | None = None) -> Layer:
        """The layer (or features `ids`) as the store recorded it at `time` (ISO, UTC): the
        current rows recorded by then, and for the features changed or removed since, the
        version valid then."""
        schema, meta = self._entry(name, scope)
        cols = [*schema.field_names, SOURCE, VERSION, UPDATED]
        where = f" AND id IN ({', '.join('?' * len(ids))})" if ids is not None else ""
        with self._transaction() as db:
            live.settle(db)
            now = db.execute(
                f"SELECT id, {GEOM}, {', '.join(_q(c) for c in cols)}, fid FROM {_q(name)} "
                f"WHERE {UPDATED} <= ?{where}",
                (time, *(ids or ())),
            ).fetchall()
            then = db.execute(
                "SELECT id, geom, properties, source, version, valid_from, first_fid FROM "
                "twin_versions WHERE collection = ? AND valid_from <= ? AND valid_to > ?" + where,
                (name, time, time, *(ids or ())),
            ).fetchall()
            one = ids[0] if ids is not None and len(ids) == 1 else None
            applied = live.applied_readings(db, name, one, time)
        order = sorted(
            [(r[-1], r[:-1]) for r in now] + [(r[-1], _version_row(schema, r)) for r in then],
            key=lambda pair: pair[0],
        )
        return live.state_at(_layer_of(schema, meta, [row for _, row in order]), applied)

    def revision(self) -> int:
        """The sequence number of the newest change-log entry (0: none yet)."""
        with self._lock:
            return live.revision(self._db)

    def log(self, since: int, limit: int = 100_000) -> list[Change | StateRun]:
        """The change log after `since`, oldest first, as written: feature entries one by one,
        the entries of a batch of readings as one `StateRun`; at most `limit` of either."""
        with self._lock:
            # From the row holding entry since + 1 (a run of readings may span it).
            (first,) = self._db.execute(
                "SELECT coalesce(max(seq), 0) FROM twin_changes WHERE seq <= ?", (since + 1,)
            ).fetchone()
            rows = self._db.execute(
                f"SELECT seq, {_CHANGE_COLUMNS}, n FROM twin_changes WHERE seq >= ? "
                "ORDER BY seq LIMIT ?",
                (first, limit),
            ).fetchall()
        kinds = {k.value: k for k in ChangeKind}
        # The entries of one write share their time, and most their properties: each text is
        # parsed once (the values are shared, read only).
        times: dict[str, dt.datetime] = {}
        parsed: dict[str, tuple[tuple[str, ...], dict[str, Any] | None]] = {}
        out: list[Change | StateRun] = []
        for r in rows:
            if r[3] == "readings":
                entries = live.run(r[0], r[12], r[13], r[15]).after(since)
                if entries.ids:
                    out.append(entries)
                continue
            if r[0] <= since:
                continue
            stamp, text = r[13], r[15]
            t = times.get(stamp)
            if t is None:
                t = times[stamp] = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            props: tuple[str, ...] | None = None
            state = None
            if text is not None:
                got = parsed.get(text)
                if got is None:
                    value = json.loads(text)
                    got = parsed[text] = (tuple(value), value if isinstance(value, dict) else None)
                props, state = got
            old = None if None in r[4:8] else Bounds(*r[4:8])
            new = old if r[8:12] == r[4:8] else None if None in r[8:12] else Bounds(*r[8:12])
            out.append(
                Change(r[0], r[1], r[2], kinds[r[3]], old, new, r[12], t, r[14], props, state)
            )
        return out

    def changes(self, since: int, limit: int = 100_000) -> list[Change]:
        """Change-log entries after `since`, oldest first, at most `limit`: a reading's entry
        with the values it set (`state`) and its feature's stored box as both boxes."""
        out: list[Change] = []
        for entry in self.log(since, limit):
            if isinstance(entry, Change):
                out.append(entry)
                continue
            with self._lock:
                boxes = _stored_boxes(self._db, entry.collection, list(dict.fromkeys(entry.ids)))
            stored = [boxes.get(fid) for fid in entry.ids]
            out += entry.changes([None if b is None or None in b else Bounds(*b) for b in stored])
        return out[:limit]

    def observe(self, readings: Readings | Sequence[Reading], *, user: str) -> Observed:
        """Keep every reading as history and make the newest of each feature's property (by
        its time, not by arrival) that feature's state, in one transaction: a reading older
        than the state recorded is kept in the history only. Each feature whose state changed
        is one change-log entry. Both are appends (see `layers.gpkg_live`)."""
        if not readings:
            return Observed(0, self.revision())
        batch = Readings.of(readings)
        stamp = utc_stamp(_now())
        with self._lock:
            try:
                with self._transaction() as db:
                    held = self._times.current(db)
                    done, times = live.observe(db, batch, user=user, stamp=stamp, held=held)
            except BaseException:
                self._times = live.StateTimes()  # made again from the store next time
                raise
            self._times.add(times)
            self._times.seq = max(self._times.seq, done.revision)
        return done

    def readings(
        self,
        collection: str,
        fid: str,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int = -1,
        offset: int = 0,
        hidden: Sequence[str] = (),
    ) -> tuple[list[tuple[str, str, Any, str, str]], int]:
        """A page of one feature's readings (property, time, value, received, user), oldest
        first, optionally from `start` to `end` (ISO times, inclusive), and how many there are
        in all (`limit` -1: every one; the readings of properties `hidden` left out)."""
        self.settle()
        where, params = live.conditions(
            [
                ("collection = ?", collection),
                ("id = ?", fid),
                ("time >= ?", start),
                ("time <= ?", end),
            ]
        )
        if hidden:
            where += f" AND property NOT IN ({', '.join('?' * len(hidden))})"
            params = [*params, *hidden]
        ((total,),) = self._rows(f"SELECT count(*) FROM twin_readings {where}", tuple(params))
        rows = self._rows(
            f"SELECT property, time, value, received, user FROM twin_readings {where} "
            "ORDER BY time, seq LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [(p, t, json.loads(v), rc, u) for p, t, v, rc, u in rows], int(total)

    def history(self, collection: str | None = None) -> list[ImportRecord]:
        """Import history, newest first."""
        sql = (
            "SELECT collection, time, user, source, mode, added, updated, unchanged, removed, "
            "rejected, repaired, details FROM twin_imports"
        )
        params: tuple = ()
        if collection is not None:
            sql += " WHERE collection = ?"
            params = (collection,)
        rows = self._rows(sql + " ORDER BY seq DESC", params)
        return [
            ImportRecord(
                collection=r[0],
                time=dt.datetime.fromisoformat(r[1].replace("Z", "+00:00")),
                user=r[2],
                source=r[3],
                mode=r[4],
                added=r[5],
                updated=r[6],
                unchanged=r[7],
                removed=r[8],
                rejected=r[9],
                repaired=r[10],
                details=json.loads(r[11]),
            )
            for r in rows
        ]

    # -- writes -----------------------------------------------------------------------------

    def register(self, schema: LayerSchema, meta: dict[str, Any] | None = None) -> None:
        """Create the layer's table (or add columns for new fields) and record its schema.

        The extra attributes recorded before and absent from `schema` stay, as do their columns.
        """
        with self._transaction() as db:
            self._register(db, schema, meta)

    def _register(
        self, db: sqlite3.Connection, schema: LayerSchema, meta: dict[str, Any] | None
    ) -> None:
        name = check_name(schema.name)
        kind = db.execute(
            "SELECT kind, meta, schema FROM twin_layers WHERE name = ?", (name,)
        ).fetchone()
        if kind is not None and kind[0] != "vector":
            raise StoreError(f"{name!r} is a {kind[0]} collection")
        if kind is not None:
            # Extra attributes are a union over imports: a column is never dropped by a
            # later file that lacks it.
            schema = schema.keeping_extras(LayerSchema.from_json(json.loads(kind[2])))
        merged = {**(json.loads(kind[1]) if kind else {}), **(meta or {})}
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        if not exists:
            cols = ", ".join(f"{_q(f.name)} {_SQL_TYPES[f.type]}" for f in schema.fields)
            db.execute(
                f"CREATE TABLE {_q(name)} (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
                f"{GEOM} GEOMETRY, id TEXT NOT NULL UNIQUE{', ' + cols if cols else ''}, "
                f"{SOURCE} TEXT, {VERSION} INTEGER NOT NULL DEFAULT 1, {UPDATED} DATETIME, "
                f"{HASH} INTEGER)"
            )
            # A GeoPackage's identifiers are unique: a title another layer has already is
            # told apart by the layer's name (twin's own titles may repeat).
            taken = db.execute(
                "SELECT 1 FROM gpkg_contents WHERE identifier = ?", (schema.title,)
            ).fetchone()
            identifier = f"{schema.title} ({name})" if taken else schema.title
            db.execute(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
                "srs_id) VALUES (?, 'features', ?, ?, ?)",
                (name, identifier, schema.description, SRS_ID),
            )
            db.execute(
                "INSERT INTO gpkg_geometry_columns VALUES (?, ?, 'GEOMETRY', ?, 0, 0)",
                (name, GEOM, SRS_ID),
            )
        else:
            # SQLite column names are case-insensitive.
            have = {
                r[1].casefold(): (r[1], str(r[2]).upper())
                for r in db.execute(f"PRAGMA table_info({_q(name)})")
            }
            for f in schema.fields:
                got = have.get(f.name.casefold())
                if got is None:
                    db.execute(
                        f"ALTER TABLE {_q(name)} ADD COLUMN {_q(f.name)} {_SQL_TYPES[f.type]}"
                    )
                elif f.extra and got[1] != _SQL_TYPES[f.type]:
                    _retype(db, name, got[0], got[1], f.type)
        db.execute(
            "INSERT INTO twin_layers (name, kind, schema, meta) VALUES (?, 'vector', ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET schema = excluded.schema, meta = excluded.meta",
            (
                name,
                json.dumps(schema.to_json(), ensure_ascii=False),
                json.dumps(merged, ensure_ascii=False),
            ),
        )

    def write(
        self,
        layer: Layer,
        *,
        mode: WriteMode = "upsert",
        source: str,
        user: str,
        details: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        expect: dict[str, str | None] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> WriteResult:
        """Apply `layer` to the stored layer of the same name in one transaction (with
        `files` kept with it).

        With `expect` (feature id -> its ETag, `feature_etag`; None: no such feature yet),
        nothing is written unless every feature named is in that state (`PreconditionFailed`).

        Features are matched by id: new ids are added, changed ones updated (their version
        bumped), identical ones left alone; with `mode="replace"` the features of `source`
        that `layer` lacks are removed.
        """
        schema = layer.schema
        name = schema.name
        details = dict(details or {})
        wkb, hashes = offered(layer, mode)
        now = _now()
        with self._transaction() as db:
            live.settle(db, history=False)  # the live state, folded into what this changes
            before = db.execute("SELECT schema FROM twin_layers WHERE name = ?", (name,)).fetchone()
            self._register(db, schema, meta)
            db.executemany(
                "INSERT OR REPLACE INTO twin_files (layer, name, data) VALUES (?, ?, ?)",
                [(name, n, bytes(d)) for n, d in (files or {}).items()],
            )
            after = db.execute("SELECT schema FROM twin_layers WHERE name = ?", (name,)).fetchone()
            if expect:
                _check_expected(db, name, expect)
            old = db.execute(f"SELECT id, {HASH}, {SOURCE} FROM {_q(name)}").fetchall()
            ids = layer.ids.tolist()
            # Matching by id with a pandas index, not a Python loop per feature.
            old_ids = pd.Index([r[0] for r in old], dtype=object)
            old_hash = np.array([r[1] for r in old], dtype=object)
            pos = old_ids.get_indexer(ids) if len(old) else np.full(len(ids), -1)
            is_new = pos < 0
            changed = ~is_new
            if changed.any():
                known = np.flatnonzero(changed)
                changed[known] = old_hash[pos[known]] != hashes[known]
            removed: list[str] = []
            if mode == "replace" and len(old):
                old_src = np.array([r[2] for r in old], dtype=object)
                gone = ~old_ids.isin(ids) & (old_src == source)
                removed = old_ids[gone].tolist()
            src = layer.attrs[SOURCE].astype(object).where(layer.attrs[SOURCE].notna(), source)
            srcs = src.to_numpy(dtype=object)
            fields = schema.fields
            names = [f.name for f in fields]
            rows_new = np.flatnonzero(is_new)
            rows_upd = np.flatnonzero(changed)
            stamp = utc_stamp(now)
            id_array = np.asarray(layer.ids, dtype=object)

            def columns(rows: np.ndarray) -> list[list[Any]]:
                sub = layer.attrs.iloc[rows]
                return [
                    encode_geometries(layer.geometry[rows], wkb[rows]),
                    *(_sql_values(sub[f.name], f.type) for f in fields),
                    srcs[rows].tolist(),
                ]

            n_changed = len(rows_new) + len(rows_upd) + len(removed)
            log = _Log(db, name, user, stamp, f"{mode} from {source}")
            if before is None or before != after or n_changed > FEED_FEATURES_MAX:
                if n_changed or before != after:
                    log.layer()
            elif n_changed:
                upd_ids = id_array[rows_upd].tolist()
                was, changed_props = _changed(db, name, upd_ids, fields, columns(rows_upd))
                log.features(
                    ChangeKind.ADDED,
                    id_array[rows_new].tolist(),
                    new=feature_boxes(layer.geometry[rows_new]),
                )
                log.features(
                    ChangeKind.UPDATED,
                    upd_ids,
                    was,
                    feature_boxes(layer.geometry[rows_upd]),
                    changed_props,
                )
                gone = _stored_boxes(db, name, removed)
                log.features(ChangeKind.REMOVED, removed, [gone[i] for i in removed])
            if len(rows_upd) or removed:
                ended = [*id_array[rows_upd].tolist(), *removed]
                _keep_versions(db, name, ended, log)
                live.fold(db, name, name, ended)
            if len(rows_new):
                # A feature new here has no live state yet (a reading of an id that was not
                # there set none on what comes later under that id).
                live.end(db, name, id_array[rows_new].tolist())
                # Columns null throughout are left to their default (NULL), and the version
                # to its default of 1: fewer parameters to bind per row.
                new_attrs = layer.attrs.iloc[rows_new]
                filled = [i for i, f in enumerate(fields) if new_attrs[f.name].notna().any()]
                cols = ", ".join(
                    ["id", GEOM, *(_q(names[i]) for i in filled), SOURCE, UPDATED, HASH]
                )
                # In chunks, so that the encoded blobs of a large import never all sit in memory.
                for part in np.array_split(rows_new, -(-len(rows_new) // _CHUNK)):
                    blob, *values, srcs_new = columns(part)
                    _insert_many(
                        db,
                        f"INSERT INTO {_q(name)} ({cols}) VALUES ",
                        [
                            id_array[part].tolist(),
                            blob,
                            *(values[i] for i in filled),
                            srcs_new,
                            [stamp] * len(part),
                            hashes[part].tolist(),
                        ],
                    )
            if len(rows_upd):
                sets = ", ".join(
                    [
                        f"{GEOM} = ?",
                        *(f"{_q(n)} = ?" for n in names),
                        f"{SOURCE} = ?",
                        f"{VERSION} = {VERSION} + 1",
                        f"{UPDATED} = ?",
                        f"{HASH} = ?",
                    ]
                )
                for part in np.array_split(rows_upd, -(-len(rows_upd) // _CHUNK)):
                    blob, *values, srcs_upd = columns(part)
                    db.executemany(
                        f"UPDATE {_q(name)} SET {sets} WHERE id = ?",
                        zip(
                            blob,
                            *values,
                            srcs_upd,
                            repeat(stamp),
                            hashes[part].tolist(),
                            id_array[part].tolist(),
                        ),
                    )
            if removed:
                db.executemany(f"DELETE FROM {_q(name)} WHERE id = ?", ((r,) for r in removed))
            result = WriteResult(
                added=len(rows_new),
                updated=len(rows_upd),
                unchanged=len(layer) - len(rows_new) - len(rows_upd),
                removed=len(removed),
            )
            if result.updated or result.removed:
                self._touch(db, name, stamp)
            else:
                self._touch(db, name, stamp, grow=layer.geometry[rows_new])
            db.execute(
                "INSERT INTO twin_imports (collection, time, user, source, mode, added, updated, "
                "unchanged, removed, rejected, repaired, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    stamp,
                    user,
                    source,
                    mode,
                    result.added,
                    result.updated,
                    result.unchanged,
                    result.removed,
                    int(details.pop("rejected", 0)),
                    int(details.pop("repaired", 0)),
                    json.dumps(details, ensure_ascii=False, default=str),
                ),
            )
        return result

    def _touch(
        self, db: sqlite3.Connection, name: str, stamp: str, grow: np.ndarray | None = None
    ) -> None:
        """Refresh the layer's extent and last-change time in gpkg_contents.

        With `grow` (features only added), the stored extent is widened to cover them;
        otherwise it is recomputed from every stored geometry.
        """
        if grow is not None:
            geoms = grow
            old = db.execute(
                "SELECT min_x, min_y, max_x, max_y FROM gpkg_contents WHERE table_name = ?",
                (name,),
            ).fetchone()
            if old and None not in old:
                geoms = np.append(geoms, shapely.box(*old))
        else:
            blobs = db.execute(f"SELECT {GEOM} FROM {_q(name)}").fetchall()
            geoms = decode_geometries([b[0] for b in blobs])
        ext: list[float | None] = [None, None, None, None]
        if len(geoms):
            b = shapely.bounds(geoms)
            if np.isfinite(b).any():
                ext = [
                    float(np.nanmin(b[:, 0])),
                    float(np.nanmin(b[:, 1])),
                    float(np.nanmax(b[:, 2])),
                    float(np.nanmax(b[:, 3])),
                ]
        db.execute(
            "UPDATE gpkg_contents SET min_x=?, min_y=?, max_x=?, max_y=?, last_change=? "
            "WHERE table_name=?",
            (*ext, stamp, name),
        )

    def delete_features(
        self,
        name: str,
        ids: list[str],
        *,
        user: str,
        source: str,
        expect: dict[str, str | None] | None = None,
    ) -> int:
        """Remove features by id in one transaction; returns how many were removed. With
        `expect`, only if the features named are in those states (see `write`)."""
        self._entry(name, Access.RESTRICTED)
        with self._transaction() as db:
            live.settle(db, history=False)
            if expect:
                _check_expected(db, name, expect)
            stamp = utc_stamp(_now())
            was = _stored_boxes(db, name, list(dict.fromkeys(ids)))
            gone = list(was)
            log = _Log(db, name, user, stamp, f"delete by {source}")
            log.features(ChangeKind.REMOVED, gone, [was[i] for i in gone])
            _keep_versions(db, name, gone, log)
            live.fold(db, name, name, gone)
            n = 0
            for fid in gone:
                n += db.execute(f"DELETE FROM {_q(name)} WHERE id = ?", (fid,)).rowcount
            self._touch(db, name, stamp)
            db.execute(
                "INSERT INTO twin_imports (collection, time, user, source, mode, added, updated, "
                "unchanged, removed, rejected, repaired) VALUES (?, ?, ?, ?, 'delete', 0, 0, 0, "
                "?, 0, 0)",
                (name, stamp, user, source, n),
            )
        return n

    def drop(self, name: str) -> None:
        """Remove a collection (vector or raster) from the store."""
        with self._transaction() as db:
            row = db.execute("SELECT kind FROM twin_layers WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownCollection(name)
            live.settle(db, history=False)
            live.end_all(db, name)
            if row[0] == "vector":
                db.execute(f"DROP TABLE IF EXISTS {_q(name)}")
                db.execute("DELETE FROM gpkg_geometry_columns WHERE table_name = ?", (name,))
                db.execute("DELETE FROM gpkg_contents WHERE table_name = ?", (name,))
            db.execute("DELETE FROM twin_layers WHERE name = ?", (name,))
            db.execute("DELETE FROM twin_files WHERE layer = ?", (name,))
            _Log(db, name, "twin", utc_stamp(_now()), "dropped").layer()
        raster = self.root / RASTER_DIR / f"{name}.tif"
        if raster.exists():
            raster.unlink()

    def files(self, name: str) -> dict[str, bytes]:
        """The files kept with layer `name` (see `write`), by name."""
        rows = self._rows(
            "SELECT name, data FROM twin_files WHERE layer = ? ORDER BY name", (name,)
        )
        return {n: bytes(d) for n, d in rows}

    def staging_dir(self) -> Path:
        """A folder on the file system of the store's rasters: a file made there is moved in
        by `put_raster`, not copied."""
        folder = self.root / RASTER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def put_raster(self, info: RasterInfo, *, user: str, source: str) -> RasterInfo:
        """Move the finished COG at `info.uri` into the store under `info.name`, atomically
        (one read over the network is copied in: the embedded store keeps its own files)."""
        name = check_name(info.name)
        with self._lock:
            exists = self._rows("SELECT kind FROM twin_layers WHERE name = ?", (name,))
            if exists and exists[0][0] != "raster":
                raise StoreError(f"{name!r} is already a {exists[0][0]} collection")
            target_dir = self.root / RASTER_DIR
            target_dir.mkdir(exist_ok=True)
            target = target_dir / f"{name}.tif"
            staged = target_dir / f".{name}.tif.staged"
            if info.remote:
                copy_remote(info.location, staged)
            elif info.path.parent.resolve() == target_dir.resolve():
                os.replace(info.path, staged)
            else:
                shutil.copyfile(info.path, staged)
            try:  # a file GDAL cannot read as a raster is refused
                bounds = lonlat_bounds(str(staged))
            except (OSError, RasterioError) as exc:
                staged.unlink(missing_ok=True)
                raise StoreError(f"cannot read the raster {info.location}: {exc}") from None
            schema = LayerSchema(
                name=name,
                title=info.title,
                geometry=GeometryFamily.POLYGON,
                fields=(),
                classification=info.classification,
            )
            stamp = utc_stamp(_now())
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO twin_layers (name, kind, schema, meta) VALUES (?, 'raster', ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET schema = excluded.schema, "
                    "meta = excluded.meta",
                    (name, json.dumps(schema.to_json()), json.dumps(info.meta, default=str)),
                )
                db.execute(
                    "INSERT INTO twin_imports (collection, time, user, source, mode, added, "
                    "updated, unchanged, removed, rejected, repaired, details) VALUES "
                    "(?, ?, ?, ?, 'raster', ?, ?, 0, 0, 0, 0, ?)",
                    (
                        name,
                        stamp,
                        user,
                        source,
                        0 if exists else 1,
                        1 if exists else 0,
                        json.dumps(info.meta, default=str),
                    ),
                )
                _Log(db, name, user, stamp, f"raster from {source}").layer()
                # The file swap is the last step inside the transaction: if it fails, the
                # registration rolls back and the previous raster stays in place.
                os.replace(staged, target)
        version = str(target.stat().st_mtime_ns)
        return RasterInfo(name, info.title, target, info.classification, info.meta, bounds, version)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


def _raster_place(path: Path) -> tuple[str, Bounds | None]:
    """The version (modification time) and lon/lat bounds of a raster file of the store."""
    try:
        version = str(path.stat().st_mtime_ns)
    except OSError:
        return "", None
    return version, bounds_at(str(path), version)
