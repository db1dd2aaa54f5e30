"""The scaled store: PostgreSQL + PostGIS, one table per layer, rasters as COG files.

Same inputs, same answers as the embedded GeoPackage store (`layers.gpkg`): writes are matched
by id against a content hash, every change keeps the row it ends as a version, every change is
an entry of the change log, readings set state (see `layers.postgis_live`). A write copies its
features into a temporary table (binary COPY) and applies them in one transaction, so an import
lands whole or not at all; writers take one advisory lock, so log entries are numbered without
gaps in the order they commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import psycopg
from psycopg import Cursor, sql
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
from rasterio.errors import RasterioError

from layers import postgis_live as live
from layers import postgis_search as pgs
from layers import postgis_write as pgw
from layers.errors import StoreError, Uncompiled, UnknownCollection
from layers.gpkg import FEED_FEATURES_MAX, feature_boxes, offered
from layers.layer import SOURCE, UPDATED, VERSION, Layer, coerce, dtype_of, empty_attrs
from layers.life import extent_text
from layers.models import (
    Access,
    Bounds,
    Change,
    ChangeKind,
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
    parse_utc,
    utc_stamp,
)
from layers.pg_listen import Listener
from layers.postgis_replica import FLUSH_LSN, Replica
from layers.postgis_where import ENDED_PARAMS, Compiled, life_bounds
from layers.raster import bounds_at, lonlat_bounds
from layers.schemas import check_name
from layers.search import WINDOW, Hit, best, layer_hits, searched_fields
from layers.store import LayerInfo, RasterInfo, WriteMode
from layers.where import Where

SCHEMA_VERSION = 3
"""The version of the tables this code makes; `migrate` refuses a database with a newer one
and brings an older one up to it (2: the search keys, `layers.postgis_search`; 3: the files kept
with a layer, `twin_files`)."""
LOCK = 0x7477696E  # "twin": the advisory lock every write transaction takes
POOL_MAX = 8
CONNECT_TIMEOUT_S = 5
DOWN_S = 5.0
"""How long after the pool timed out the store counts as unreachable (see `DOWN_WAIT_S`)."""
DOWN_WAIT_S = 0.25
"""How long a read waits for a connection while the store counts as unreachable."""
CHANNEL = "twin_changes"
"""The `LISTEN`/`NOTIFY` channel every committed write is announced on."""
REPLICA_MAX_LAG_S = 5.0
"""How far behind a replica may be before reads leave it (`StoreSettings.replica_max_lag_s`)."""

_T = TypeVar("_T", bound=Callable[..., Any])


class _ReplicaFailed(Exception):
    """A read on the replica failed: it is run again on the primary."""


def _routed(method: _T) -> _T:
    """A read that may be served by the replica (see `layers.postgis_replica`): run again on
    the primary when the replica fails it. Pure reads only: they may run twice."""

    @functools.wraps(method)
    def read(self: PostGISStore, *args: Any, **kwargs: Any) -> Any:
        local = self._local
        if self._replica is None or getattr(local, "route", None) is not None:
            return method(self, *args, **kwargs)
        local.route = "replica"
        try:
            return method(self, *args, **kwargs)
        except _ReplicaFailed:
            local.route = "primary"
            return method(self, *args, **kwargs)
        finally:
            local.route = None

    return read  # type: ignore[return-value]


_SYSTEM = ("fid", "id", "geom", SOURCE, VERSION, UPDATED, "_hash")

_TABLES = (
    """
CREATE TABLE IF NOT EXISTS twin_schema_version (version integer NOT NULL);
CREATE SCHEMA IF NOT EXISTS layers;
CREATE TABLE IF NOT EXISTS twin_layers (
  name text PRIMARY KEY, kind text NOT NULL, schema json NOT NULL,
  meta json NOT NULL DEFAULT '{}', classification smallint NOT NULL DEFAULT 0, path text,
  min_x double precision, min_y double precision, max_x double precision,
  max_y double precision, last_change timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS twin_imports (
  seq bigserial PRIMARY KEY, collection text NOT NULL, time timestamptz NOT NULL,
  who text NOT NULL, source text NOT NULL, mode text NOT NULL, added bigint NOT NULL,
  updated bigint NOT NULL, unchanged bigint NOT NULL, removed bigint NOT NULL,
  rejected bigint NOT NULL, repaired bigint NOT NULL, details json NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS twin_imports_collection ON twin_imports (collection, seq);
CREATE TABLE IF NOT EXISTS twin_changes (
  seq bigint PRIMARY KEY, n integer NOT NULL DEFAULT 1, collection text NOT NULL, id text,
  kind text NOT NULL,
  old_min_x double precision, old_min_y double precision, old_max_x double precision,
  old_max_y double precision, new_min_x double precision, new_min_y double precision,
  new_max_x double precision, new_max_y double precision,
  who text NOT NULL, time timestamptz NOT NULL, why text NOT NULL, properties text);
CREATE TABLE IF NOT EXISTS twin_readings (
  rid bigserial PRIMARY KEY, collection text NOT NULL, id text NOT NULL,
  property text NOT NULL, time timestamptz NOT NULL, value text NOT NULL,
  received timestamptz NOT NULL, who text NOT NULL, applied bigint);
CREATE INDEX IF NOT EXISTS twin_readings_feature ON twin_readings (collection, id, time);
CREATE TABLE IF NOT EXISTS twin_versions (
  seq bigserial PRIMARY KEY, collection text NOT NULL, id text NOT NULL,
  version bigint NOT NULL, valid_from timestamptz NOT NULL, valid_to timestamptz NOT NULL,
  geom geometry(Geometry, 4326), properties jsonb NOT NULL, source text, first_fid bigint,
  who text NOT NULL, why text NOT NULL);
CREATE INDEX IF NOT EXISTS twin_versions_feature ON twin_versions (collection, id);
CREATE INDEX IF NOT EXISTS twin_versions_time ON twin_versions (collection, valid_to);
CREATE TABLE IF NOT EXISTS twin_state (
  collection text NOT NULL, id text NOT NULL, property text NOT NULL,
  time timestamptz NOT NULL, value text, recorded timestamptz, seq bigint,
  PRIMARY KEY (collection, id, property));
CREATE TABLE IF NOT EXISTS twin_meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS twin_files (
  layer text NOT NULL, name text NOT NULL, data bytea NOT NULL, PRIMARY KEY (layer, name));
"""
    + pgs.TABLES
)


def _now() -> dt.datetime:
    t = dt.datetime.now(dt.UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _public(url: str) -> str:
    """`url` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))


def _layer_of(schema: LayerSchema, meta: dict[str, Any], rows: list[tuple]) -> Layer:
    """A layer of stored rows `(id, wkb, *fields, source, _version, _updated)`."""
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
    geometry = pgw.geometries(columns[1])
    data: dict[str, pd.Series] = {}
    for f, values in zip(schema.fields, columns[2:], strict=False):
        data[f.name] = coerce(pd.Series(values, dtype=object), f.type)
    n = len(schema.fields)
    data[SOURCE] = pd.Series(columns[2 + n], dtype=object).astype(dtype_of(FieldType.STRING))
    data[VERSION] = pd.Series(columns[3 + n], dtype=np.int64)
    data[UPDATED] = pd.to_datetime(pd.Series(columns[4 + n]), utc=True).astype(
        "datetime64[ms, UTC]"
    )
    return Layer(schema, fids, geometry, pd.DataFrame(data), meta)


def _mercator(axis: str, edge: str) -> str:
    """SQL of an edge of a geometry's box in EPSG:3857 metres (as `tiles.grid.to_mercator`)."""
    v = f"ST_{axis}{edge}(geom)"
    if axis == "X":
        return f"(radians({v}) * 6378137.0)"
    lat = f"greatest(least({v}, 85.0511287798066), -85.0511287798066)"
    return f"(ln(tan(pi() / 4 + radians({lat}) / 2)) * 6378137.0)"


_DX = f"({_mercator('X', 'Max')} - {_mercator('X', 'Min')})"
_DY = f"({_mercator('Y', 'Max')} - {_mercator('Y', 'Min')})"
_MERCATOR_SIDE = sql.SQL(f"greatest({_DX}, {_DY})")
_MERCATOR_DIAGONAL = sql.SQL(f"sqrt({_DX} * {_DX} + {_DY} * {_DY})")


def _matching(schema: LayerSchema, match: Match, params: list[Any]) -> sql.Composable:
    """The condition ` AND ...` of `match` (its values added to `params`)."""
    if match.field not in schema.field_names:
        raise ValueError(f"{schema.name} has no field {match.field!r}")
    column = sql.Identifier(match.field)
    values = [v for v in match.values if v is not None]
    params.append(values)
    cond = sql.SQL("{c}::text = ANY(%s)").format(c=column)
    if len(values) < len(match.values):
        cond = sql.SQL("({cond} OR {c} IS NULL)").format(cond=cond, c=column)
    return sql.SQL(" AND ") + cond


def _priority(schema: LayerSchema, thin: Thinning) -> sql.Composable:
    """SQL of a feature's priority in `thin`'s order, and a comma (nothing for a layer
    without one)."""
    field = thin.priority
    if field is None or not schema.builtin or field not in schema.field_names:
        return sql.SQL("")
    c = sql.Identifier(field)
    if thin.classes is not None:
        cases = sql.SQL(" ").join(
            sql.SQL("WHEN {v} THEN {i}").format(v=sql.Literal(v), i=sql.Literal(i))
            for i, v in enumerate(thin.classes)
        )
        return sql.SQL("(CASE {c} {cases} ELSE {n} END), ").format(
            c=c, cases=cases, n=sql.Literal(len(thin.classes))
        )
    return sql.SQL("(-coalesce({c}::float8, '-Infinity'::float8)), ").format(c=c)


def _version_row(schema: LayerSchema, r: tuple) -> tuple:
    """A `twin_versions` row `(id, wkb, properties, source, version, valid_from, ...)` as a
    stored row: the fields from its properties (null where it had none)."""
    props = r[2]
    return (r[0], r[1], *(props.get(n) for n in schema.field_names), r[3], r[4], r[5])


def default_raster_dir(url: str) -> Path:
    """Where a PostGIS store keeps its rasters unless told (`StoreSettings.raster_dir`,
    `TWIN_RASTER_DIR`): a folder per database under `~/.local/share/twin/rasters`."""
    parts = urlsplit(url)
    host = f"{parts.hostname or 'local'}_{parts.port or 5432}"
    database = parts.path.lstrip("/") or "postgres"
    return Path.home() / ".local" / "share" / "twin" / "rasters" / f"{host}_{database}"


class PostGISStore:
    """The store on PostgreSQL + PostGIS at `url` (`postgresql://user@host:port/db`)."""

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        raster_dir: str | Path | None = None,
        pool_size: int = POOL_MAX,
        replica: str | None = None,
        replica_max_lag_s: float = REPLICA_MAX_LAG_S,
    ) -> None:
        """`replica`: the URL of a streaming replica of the same database that serves reads
        when it has replayed what they must see (else the primary does)."""
        self._url = url  # with its password: never shown
        self.location = _public(url)
        self._local = threading.local()
        self._down_until = 0.0
        """Until when (monotonic) the database counts as unreachable."""
        self._replica: Replica | None = None
        if replica:
            self._replica = Replica(
                replica,
                _public(replica),
                max_lag_s=replica_max_lag_s,
                pool_size=max(1, pool_size),
                connect_timeout=CONNECT_TIMEOUT_S,
            )
        self._listener: Listener | None = None
        self.raster_dir = Path(raster_dir) if raster_dir else default_raster_dir(url)
        try:
            with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S) as db:
                if create:
                    self._migrate(db)
                else:
                    self._check_version(db, missing_ok=False)
                if self._replica is not None:  # no read older than the store as opened
                    self._replica.saw(_lsn(db.execute(FLUSH_LSN).fetchone()))
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {self.location}: {_reason(exc)}") from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"options": "-c TimeZone=UTC", "connect_timeout": CONNECT_TIMEOUT_S},
            timeout=CONNECT_TIMEOUT_S * 2,
            open=True,
            name="twin",
            check=ConnectionPool.check_connection,
        )

    def __repr__(self) -> str:
        return f"PostGISStore({self.location!r})"

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create the store's tables, or bring them up to this code's version; returns it.
        `StoreError` on a database whose tables are newer than this code."""
        try:
            with psycopg.connect(self._url, connect_timeout=CONNECT_TIMEOUT_S) as db:
                self._migrate(db)
        except psycopg.Error as exc:
            raise StoreError(f"cannot migrate store {self.location}: {_reason(exc)}") from None
        return SCHEMA_VERSION

    def _check_version(self, db: psycopg.Connection, *, missing_ok: bool) -> int:
        """The schema version of the database (0: none yet)."""
        with db.cursor() as cur:
            cur.execute("SELECT to_regclass('twin_schema_version') IS NOT NULL")
            row = cur.fetchone()
            found = 0
            if row and row[0]:
                cur.execute("SELECT max(version) FROM twin_schema_version")
                got = cur.fetchone()
                found = int(got[0]) if got and got[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.location} has schema version {found}, newer than this twin's "
                f"{SCHEMA_VERSION}: upgrade twin before using it"
            )
        if not found and not missing_ok:
            raise StoreError(f"no twin store at {self.location} (run `twin migrate`)")
        if found and found < SCHEMA_VERSION and not missing_ok:
            raise StoreError(
                f"store {self.location} has schema version {found}, older than this twin's "
                f"{SCHEMA_VERSION}: run `twin migrate`"
            )
        return found

    def _migrate(self, db: psycopg.Connection) -> None:
        with db.transaction(), db.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
            found = self._check_version(db, missing_ok=True)
            if found == SCHEMA_VERSION:
                return
            cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            cur.execute(_TABLES)
            if found < 2:  # the search keys of the layers stored before they were kept
                cur.execute("SELECT schema FROM twin_layers WHERE kind = 'vector' ORDER BY name")
                for (schema,) in cur.fetchall():
                    pgs.reindex(cur, LayerSchema.from_json(schema))
            cur.execute("DELETE FROM twin_schema_version")
            cur.execute("INSERT INTO twin_schema_version VALUES (%s)", (SCHEMA_VERSION,))

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _cursor(self, *, write: bool = False) -> Iterator[Cursor]:
        """A cursor in one transaction (a write one takes the writers' lock; a read one sees
        one snapshot); database faults as `StoreError`. A read inside a `_routed` method goes
        to the replica when it may (`_ReplicaFailed` when the replica fails it)."""
        replica = self._replica
        pool = None
        if not write and replica is not None and getattr(self._local, "route", None) == "replica":
            pool = replica.pool()
        if pool is not None:
            assert replica is not None
            try:
                with pool.connection() as db, db.transaction(), db.cursor() as cur:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    yield cur
            except (PoolTimeout, PoolClosed, psycopg.OperationalError) as exc:
                replica.failed(_reason(exc))
                raise _ReplicaFailed from None
            except psycopg.Error:  # e.g. cancelled by a conflict with recovery
                raise _ReplicaFailed from None
            replica.served += 1
            return
        # Lately unreachable: a request waits a moment, not the pool's whole timeout, so that
        # one needing several reads is answered 503 at once (the pool keeps reconnecting).
        down = time.monotonic() < self._down_until
        try:
            with self._pool.connection(timeout=DOWN_WAIT_S if down else None) as db:
                with db.transaction(), db.cursor() as cur:
                    if write:
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
                        if replica is not None:  # committed where the replica will find it
                            cur.execute("SET LOCAL synchronous_commit TO on")
                    else:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    yield cur
                    if write:  # delivered at commit, to every process listening (`listen`)
                        cur.execute(f"NOTIFY {CHANNEL}")
                    elif replica is not None:  # no later read older than this one
                        replica.saw(_lsn(cur.execute(FLUSH_LSN).fetchone()))
                if write and replica is not None:  # later reads see this commit
                    with db.transaction():
                        replica.saw(_lsn(db.execute(FLUSH_LSN).fetchone()))
        except PoolTimeout:
            self._down_until = time.monotonic() + DOWN_S
            raise StoreError(f"store {self.location} is unreachable") from None
        except psycopg.Error as exc:
            raise StoreError(f"store {self.location}: {_reason(exc)}") from None

    def _rows(self, query: Any, params: Sequence[Any] = ()) -> list[tuple]:
        with self._cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _entries(self, kind: str) -> dict[str, tuple[LayerSchema, dict, list]]:
        rows = self._rows(
            "SELECT name, schema, meta, path, min_x, min_y, max_x, max_y, last_change "
            'FROM twin_layers WHERE kind = %s ORDER BY name COLLATE "C"',
            (kind,),
        )
        return {n: (LayerSchema.from_json(s), m, rest) for n, s, m, *rest in rows}

    def _entry(
        self, cur: Cursor, name: str, scope: Access, kind: str = "vector"
    ) -> tuple[LayerSchema, dict]:
        cur.execute(
            "SELECT schema, meta FROM twin_layers WHERE name = %s AND kind = %s", (name, kind)
        )
        row = cur.fetchone()
        if row is None:
            raise UnknownCollection(name)
        schema = LayerSchema.from_json(row[0])
        if schema.classification > scope:
            raise UnknownCollection(name)
        return schema, row[1]

    # -- reads ------------------------------------------------------------------------------

    @_routed
    def layers(self, scope: Access) -> dict[str, LayerInfo]:
        """Vector layers visible at `scope`, with counts, bounds and last change."""
        out = {}
        with self._cursor() as cur:
            cur.execute(
                "SELECT name, schema, meta, min_x, min_y, max_x, max_y, last_change "
                "FROM twin_layers WHERE kind = 'vector' AND classification <= %s "
                'ORDER BY name COLLATE "C"',
                (int(scope),),
            )
            for name, schema, meta, *box, last in cur.fetchall():
                cur.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=live.table(name)))
                (count,) = cur.fetchone() or (0,)
                bounds = Bounds(*box) if None not in box and count else None
                out[name] = LayerInfo(
                    LayerSchema.from_json(schema), int(count), bounds, live.stamp(last), meta
                )
        return out

    @_routed
    def rasters(self, scope: Access) -> dict[str, RasterInfo]:
        """Raster collections visible at `scope`."""
        out = {}
        for name, (schema, meta, rest) in self._entries("raster").items():
            if schema.classification > scope:
                continue
            uri, box, last = rest[0], rest[1:5], rest[5]
            version = last.isoformat()
            bounds = Bounds(*box) if None not in box else bounds_at(uri, version)
            out[name] = RasterInfo(
                name, schema.title, uri, schema.classification, meta, bounds, version
            )
        return out

    @_routed
    def schema(self, name: str, scope: Access) -> LayerSchema:
        """The schema of vector layer `name`."""
        with self._cursor() as cur:
            return self._entry(cur, name, scope)[0]

    @_routed
    def meta(self, name: str, scope: Access) -> dict[str, Any]:
        """Free-form metadata of a layer (attribution, licence, ...)."""
        with self._cursor() as cur:
            return self._entry(cur, name, scope)[1]

    @_routed
    def load(self, name: str, scope: Access) -> Layer:
        """Read a whole vector layer into memory."""
        return self._read(name, scope)

    @_routed
    def features(self, name: str, ids: Sequence[str], scope: Access) -> Layer:
        """The stored features of `ids` (those that exist), in the layer's stored order."""
        return self._read(name, scope, list(dict.fromkeys(ids)))

    @_routed
    def window(
        self,
        name: str,
        bbox: Bounds,
        scope: Access,
        thin: Thinning | None = None,
        match: Match | None = None,
    ) -> Layer:
        """The features whose box meets `bbox` (lon/lat), in the layer's stored order: a
        GIST index scan; with `thin`, of the lines and polygons only those it keeps; with
        `match`, only those it matches."""
        return self._read(name, scope, bbox=bbox, thin=thin, match=match)

    @_routed
    def temporal(self, name: str) -> list[str | None] | None:
        """The layer's temporal extent (`layers.life.temporal_extent`), worked out in the
        database by the same rules."""
        with self._cursor() as cur:
            schema, _ = self._entry(cur, name, Access.RESTRICTED)
            start, end, kind = life_bounds(schema)
            cur.execute(
                sql.SQL(
                    "SELECT min(s), max(e), coalesce(bool_or(s IS NOT NULL AND e IS NULL), false)"
                    " FROM (SELECT {s} AS s, {e} AS e FROM {t}) q"
                ).format(s=start, e=end, t=live.table(name)),
                ENDED_PARAMS,
            )
            first, last, open_end = cur.fetchone() or (None, None, False)
        return extent_text(first, last, bool(open_end), kind)

    @_routed
    def boxes(self, name: str, ids: Sequence[str]) -> np.ndarray:
        """The boxes (lon/lat, `(k, 4)`) of features `ids`, NaN for those absent or without
        geometry."""
        out = np.full((len(ids), 4), np.nan)
        if not len(ids):
            return out
        with self._cursor() as cur:
            self._entry(cur, name, Access.RESTRICTED)
            cur.execute(
                sql.SQL(
                    "SELECT id, ST_XMin(geom), ST_YMin(geom), ST_XMax(geom), ST_YMax(geom) "
                    "FROM {t} WHERE id = ANY(%s) AND geom IS NOT NULL"
                ).format(t=live.table(name)),
                [list(dict.fromkeys(ids))],
            )
            found = {r[0]: r[1:] for r in cur.fetchall()}
        for i, fid in enumerate(ids):
            box = found.get(fid)
            if box is not None:
                out[i] = box
        return out

    @_routed
    def page(self, name: str, scope: Access, limit: int, offset: int) -> tuple[Layer, int]:
        """Features `offset` to `offset + limit` of the layer in stored order, and how many
        it holds."""
        with self._cursor() as cur:
            layer = self._select(cur, name, scope, page=(limit, offset))
            cur.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=live.table(name)))
            (count,) = cur.fetchone() or (0,)
        return layer, int(count)

    @_routed
    def select(
        self, name: str, scope: Access, where: Where, limit: int, offset: int
    ) -> tuple[Layer, int]:
        """Features `offset` to `offset + limit`, in stored order, of those meeting `where`,
        and how many do: the conditions compiled to one SQL condition (every value a bound
        parameter; `layers.postgis_where`), a page and a count read in one snapshot."""
        with self._cursor() as cur:
            schema, meta = self._entry(cur, name, scope)
            cond = Compiled(where, schema)
            table = live.table(name)
            cur.execute(
                sql.SQL("SELECT count(*) FROM {t} WHERE {c}").format(t=table, c=cond.sql),
                cond.params,
            )
            (count,) = cur.fetchone() or (0,)
            rows: list[tuple] = []
            if count > offset and limit > 0:
                cur.execute(
                    sql.SQL(
                        "SELECT id, ST_AsBinary(geom, 'NDR'), {cols} FROM {t} WHERE {c} "
                        "ORDER BY fid LIMIT %(limit)s OFFSET %(offset)s"
                    ).format(cols=_columns(schema), t=table, c=cond.sql),
                    {**cond.params, "limit": limit, "offset": offset},
                )
                rows = cur.fetchall()
        return _layer_of(schema, meta, rows), int(count)

    def chunks(
        self, name: str, scope: Access, size: int, where: Where | None = None
    ) -> Iterator[Layer]:
        """The whole layer in stored order, `size` features at a time, from one snapshot (a
        server-side cursor): a scan that never holds more than a chunk; with `where`, of the
        features meeting it (the whole layer when it cannot be said in SQL: `Uncompiled`)."""
        with self._cursor() as cur:
            schema, meta = self._entry(cur, name, scope)
            cond: sql.Composable = sql.SQL("true")
            params: dict[str, Any] = {}
            if where is not None:
                with contextlib.suppress(Uncompiled):
                    compiled = Compiled(where, schema)
                    cond, params = compiled.sql, compiled.params
            query = sql.SQL(
                "SELECT id, ST_AsBinary(geom, 'NDR'), {cols} FROM {t} WHERE {c} ORDER BY fid"
            )
            with cur.connection.cursor(name="twin_chunks") as scan:
                scan.itersize = size
                scan.execute(
                    query.format(cols=_columns(schema), t=live.table(name), c=cond), params
                )
                while rows := scan.fetchmany(size):
                    yield _layer_of(schema, meta, rows)

    def _read(
        self,
        name: str,
        scope: Access,
        ids: list[str] | None = None,
        bbox: Bounds | None = None,
        thin: Thinning | None = None,
        match: Match | None = None,
    ) -> Layer:
        with self._cursor() as cur:
            layer = self._select(cur, name, scope, ids, bbox, thin=thin, match=match)
            seq = live.revision(cur)
        if ids is None:
            layer.seq = seq
        return layer

    def _select(
        self,
        cur: Cursor,
        name: str,
        scope: Access,
        ids: list[str] | None = None,
        bbox: Bounds | None = None,
        page: tuple[int, int] | None = None,
        thin: Thinning | None = None,
        match: Match | None = None,
    ) -> Layer:
        """Stored features in stored order: of `ids`, meeting `bbox` (thinned by `thin`, only
        those `match` matches), a `page` (limit, offset), or all."""
        schema, meta = self._entry(cur, name, scope)
        query: sql.Composable = sql.SQL(
            "SELECT id, ST_AsBinary(geom, 'NDR'), {cols} FROM {t}"
        ).format(cols=_columns(schema), t=live.table(name))
        params: list[Any] = []
        if ids is not None:
            query += sql.SQL(" WHERE id = ANY(%s)")
            params.append(ids)
        elif bbox is not None:
            envelope = [float(v) for v in bbox]
            query += sql.SQL(" WHERE geom && ST_MakeEnvelope(%s, %s, %s, %s, 4326)")
            params += envelope
            if thin is not None:
                query += sql.SQL(
                    " AND (ST_Dimension(geom) = 0 OR fid IN (SELECT fid FROM {t} "
                    "WHERE geom && ST_MakeEnvelope(%s, %s, %s, %s, 4326) "
                    "AND ST_Dimension(geom) >= 1 AND {side} >= %s "
                    "ORDER BY {prio}{diag} DESC, fid LIMIT %s))"
                ).format(
                    t=live.table(name),
                    side=_MERCATOR_SIDE,
                    diag=_MERCATOR_DIAGONAL,
                    prio=_priority(schema, thin),
                )
                params += [*envelope, thin.min_size * (1 - 1e-9), thin.most]
            if match is not None:
                query += _matching(schema, match, params)
        query += sql.SQL(" ORDER BY fid")
        if page is not None:
            query += sql.SQL(" LIMIT %s OFFSET %s")
            params += list(page)
        cur.execute(query, params)
        return _layer_of(schema, meta, cur.fetchall())

    @_routed
    def search(
        self, layers: Mapping[str, Collection[str]], text: str, words: Sequence[str], limit: int
    ) -> list[Hit]:
        """Up to `limit` hits of the layers named, best first: their keys read from
        `twin_search` (the fields named with each left out) and only the features matched
        read from the layers, in one snapshot."""
        hits: list[Hit] = []
        with self._cursor() as cur:
            known = pgs.schemas(cur, list(layers))
            if missing := [n for n in layers if n not in known]:
                raise UnknownCollection(missing[0])
            finders = [pgs.StoreFinder(cur, known[n], hidden) for n, hidden in layers.items()]
            pgs.prefetch(cur, finders, text, WINDOW * limit)
            for finder in finders:
                hits += layer_hits(finder, finder.name, text, words, limit)
        return best(hits, limit)

    @_routed
    def versions(self, name: str, fid: str, scope: Access) -> tuple[Layer, list[tuple]]:
        """Every earlier version of feature `fid`, oldest first, as a layer of rows with the
        id repeated (`_version`, `_updated` = when it began), and for each when it ended, by
        whom and why."""
        with self._cursor() as cur:
            schema, meta = self._entry(cur, name, scope)
            cur.execute(
                "SELECT id, ST_AsBinary(geom, 'NDR'), properties, source, version, valid_from, "
                "valid_to, who, why FROM twin_versions WHERE collection = %s AND id = %s "
                "ORDER BY seq",  # the order they ended: oldest first
                (name, fid),
            )
            rows = cur.fetchall()
        layer = _layer_of(schema, meta, [_version_row(schema, r) for r in rows])
        return layer, [(live.stamp(r[6]), r[7], r[8]) for r in rows]

    @_routed
    def as_of(self, name: str, time: str, scope: Access, ids: list[str] | None = None) -> Layer:
        """The layer (or features `ids`) as the store recorded it at `time` (ISO, UTC): the
        current rows recorded by then, and for the features changed or removed since, the
        version valid then."""
        at = parse_utc(time)
        with self._cursor() as cur:
            schema, meta = self._entry(cur, name, scope)
            where = sql.SQL(" AND id = ANY(%s)" if ids is not None else "")
            extra = [] if ids is None else [ids]
            cur.execute(
                sql.SQL(
                    "SELECT id, ST_AsBinary(geom, 'NDR'), {cols}, fid FROM {t} WHERE _updated <= %s"
                ).format(cols=_columns(schema), t=live.table(name))
                + where,
                [at, *extra],
            )
            now = cur.fetchall()
            cur.execute(
                sql.SQL(
                    "SELECT id, ST_AsBinary(geom, 'NDR'), properties, source, version, "
                    "valid_from, first_fid FROM twin_versions WHERE collection = %s "
                    "AND valid_from <= %s AND valid_to > %s"
                )
                + where,
                [name, at, at, *extra],
            )
            then = cur.fetchall()
        order = sorted(
            [(r[-1], r[:-1]) for r in now] + [(r[-1], _version_row(schema, r)) for r in then],
            key=lambda pair: pair[0],
        )
        return _layer_of(schema, meta, [row for _, row in order])

    @_routed
    def revision(self) -> int:
        """The sequence number of the newest change-log entry (0: none yet)."""
        with self._cursor() as cur:
            return live.revision(cur)

    @_routed
    def log(self, since: int, limit: int = 100_000) -> list[Change | StateRun]:
        """The change log after `since`, oldest first, as written: feature entries one by one,
        the entries of a batch of readings as one `StateRun`; at most `limit` of either."""
        with self._cursor() as cur:
            # From the row holding entry since + 1 (a run of readings may span it).
            cur.execute(
                "SELECT coalesce(max(seq), 0) FROM twin_changes WHERE seq <= %s", (since + 1,)
            )
            (first,) = cur.fetchone() or (0,)
            cur.execute(
                f"SELECT {pgw.CHANGE_COLUMNS}, n FROM twin_changes WHERE seq >= %s "
                "ORDER BY seq LIMIT %s",
                (first, limit),
            )
            rows = cur.fetchall()
        kinds = {k.value: k for k in ChangeKind}
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
            text = r[15]
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
            t = parse_utc(live.stamp(r[13]))
            out.append(
                Change(r[0], r[1], r[2], kinds[r[3]], old, new, r[12], t, r[14], props, state)
            )
        return out

    @_routed
    def changes(self, since: int, limit: int = 100_000) -> list[Change]:
        """Change-log entries after `since`, oldest first, at most `limit`: a reading's entry
        with the values it set (`state`) and its feature's stored box as both boxes."""
        out: list[Change] = []
        for entry in self.log(since, limit):
            if isinstance(entry, Change):
                out.append(entry)
                continue
            boxes: dict[str, tuple] = {}
            with self._cursor() as cur:
                cur.execute(
                    "SELECT 1 FROM twin_layers WHERE name = %s AND kind = 'vector'",
                    (entry.collection,),
                )
                if cur.fetchone():
                    boxes = pgw.stored_boxes(cur, entry.collection, list(dict.fromkeys(entry.ids)))
            stored = [boxes.get(fid) for fid in entry.ids]
            out += entry.changes([None if b is None or None in b else Bounds(*b) for b in stored])
        return out[:limit]

    @_routed
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
        where: sql.Composable = sql.SQL("WHERE collection = %s AND id = %s")
        params: list[Any] = [collection, fid]
        if start is not None:
            where += sql.SQL(" AND time >= %s")
            params.append(parse_utc(start))
        if end is not None:
            where += sql.SQL(" AND time <= %s")
            params.append(parse_utc(end))
        if hidden:
            where += sql.SQL(" AND property <> ALL(%s)")
            params.append(list(hidden))
        with self._cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM twin_readings ") + where, params)
            (total,) = cur.fetchone() or (0,)
            cur.execute(
                sql.SQL("SELECT property, time, value, received, who FROM twin_readings ")
                + where
                + sql.SQL(" ORDER BY time, rid LIMIT %s OFFSET %s"),
                [*params, None if limit < 0 else limit, offset],
            )
            rows = cur.fetchall()
        page = [(p, live.stamp(t), json.loads(v), live.stamp(rc), u) for p, t, v, rc, u in rows]
        return page, int(total)

    @_routed
    def history(self, collection: str | None = None) -> list[ImportRecord]:
        """Import history, newest first."""
        query: sql.Composable = sql.SQL(
            "SELECT collection, time, who, source, mode, added, updated, unchanged, removed, "
            "rejected, repaired, details FROM twin_imports"
        )
        params: list[Any] = []
        if collection is not None:
            query += sql.SQL(" WHERE collection = %s")
            params.append(collection)
        rows = self._rows(query + sql.SQL(" ORDER BY seq DESC"), params)
        return [
            ImportRecord(
                collection=r[0],
                time=parse_utc(live.stamp(r[1])),
                user=r[2],
                source=r[3],
                mode=r[4],
                added=int(r[5]),
                updated=int(r[6]),
                unchanged=int(r[7]),
                removed=int(r[8]),
                rejected=int(r[9]),
                repaired=int(r[10]),
                details=r[11],
            )
            for r in rows
        ]

    # -- writes -----------------------------------------------------------------------------

    def register(self, schema: LayerSchema, meta: dict[str, Any] | None = None) -> None:
        """Create the layer's table (or add columns for new fields) and record its schema.

        The extra attributes recorded before and absent from `schema` stay, as do their columns.
        """
        with self._cursor(write=True) as cur:
            self._register(cur, schema, meta)

    def _register(
        self, cur: Cursor, schema: LayerSchema, meta: dict[str, Any] | None
    ) -> LayerSchema:
        """Record `schema` (its table made or widened); the schema as recorded. The search
        keys are made again when which fields are searched changed (a text column more, a
        column turned to text)."""
        name = check_name(schema.name)
        table = live.table(name)
        cur.execute("SELECT kind, meta, schema FROM twin_layers WHERE name = %s", (name,))
        row = cur.fetchone()
        if row is not None and row[0] != "vector":
            raise StoreError(f"{name!r} is a {row[0]} collection")
        if row is None:
            cols = sql.SQL("").join(
                sql.SQL(", {} {}").format(sql.Identifier(f.name), sql.SQL(pgw.SQL_TYPES[f.type]))
                for f in schema.fields
            )
            cur.execute(
                sql.SQL(
                    "CREATE TABLE {t} (fid bigserial UNIQUE, id text PRIMARY KEY, "
                    "geom geometry(Geometry, 4326){cols}, source text, "
                    "_version bigint NOT NULL DEFAULT 1, _updated timestamptz, _hash bigint) "
                    # Room on each page for a changed row: readings update rows in place
                    # (HOT, no index entry written) as long as no indexed column changes.
                    "WITH (fillfactor = 80)"
                ).format(t=table, cols=cols)
            )
            cur.execute(
                sql.SQL("CREATE INDEX {i} ON {t} USING gist (geom)").format(
                    i=sql.Identifier(f"_{name}_geom"), t=table
                )
            )
        else:
            # Extra attributes are a union over imports: a column is never dropped by a later
            # file that lacks it.
            schema = schema.keeping_extras(LayerSchema.from_json(row[2]))
            cur.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (live.LAYER_SCHEMA, name),
            )
            have = {n.casefold(): (n, t) for n, t in cur.fetchall()}
            for f in schema.fields:
                got = have.get(f.name.casefold())
                column = sql.Identifier(f.name)
                if got is None:
                    cur.execute(
                        sql.SQL("ALTER TABLE {t} ADD COLUMN {c} {type}").format(
                            t=table, c=column, type=sql.SQL(pgw.SQL_TYPES[f.type])
                        )
                    )
                    continue
                if got[0] != f.name:  # the embedded store's names are case-insensitive
                    cur.execute(
                        sql.SQL("ALTER TABLE {t} RENAME COLUMN {old} TO {c}").format(
                            t=table, old=sql.Identifier(got[0]), c=column
                        )
                    )
                if got[1] != pgw.SQL_TYPES[f.type]:
                    pgw.retype(cur, name, f.name, got[1], f.type)
        if row is not None and searched_fields(schema) != searched_fields(
            LayerSchema.from_json(row[2])
        ):
            pgs.reindex(cur, schema)
        merged = {**(row[1] if row else {}), **(meta or {})}
        cur.execute(
            "INSERT INTO twin_layers (name, kind, schema, meta, classification) "
            "VALUES (%s, 'vector', %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "schema = excluded.schema, meta = excluded.meta, "
            "classification = excluded.classification",
            (name, _json(schema.to_json()), _json(merged), int(schema.classification)),
        )
        return schema

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
        n = len(layer)
        wkb, hashes = offered(layer, mode)
        src = layer.attrs[SOURCE].astype(object).where(layer.attrs[SOURCE].notna(), source)
        stamp = utc_stamp(_now())
        table = live.table(name)
        with self._cursor(write=True) as cur:
            cur.execute("SELECT schema FROM twin_layers WHERE name = %s", (name,))
            before = cur.fetchone()
            recorded = self._register(cur, schema, meta)
            cur.executemany(
                "INSERT INTO twin_files (layer, name, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (layer, name) DO UPDATE SET data = excluded.data",
                [(name, n, bytes(d)) for n, d in (files or {}).items()],
            )
            cur.execute("SELECT schema FROM twin_layers WHERE name = %s", (name,))
            after = cur.fetchone()
            if expect:
                pgw.check_expected(cur, name, expect)
            fields = list(schema.fields)
            pgw.stage(cur, layer, fields, wkb, hashes, src.tolist())
            # What each offered feature is: new, changed (another hash) or the same.
            cur.execute(
                sql.SQL(
                    "SELECT i.ord, t.id IS NULL, t._hash IS DISTINCT FROM i._hash "
                    "FROM _twin_in i LEFT JOIN {t} t ON t.id = i.id ORDER BY i.ord"
                ).format(t=table)
            )
            status = np.array(cur.fetchall(), dtype=object).reshape(-1, 3)
            is_new = status[:, 1].astype(bool)
            changed = ~is_new & status[:, 2].astype(bool)
            removed: list[str] = []
            if mode == "replace":
                cur.execute(
                    sql.SQL(
                        "SELECT t.id FROM {t} t WHERE t.source = %s AND NOT EXISTS "
                        "(SELECT 1 FROM _twin_in i WHERE i.id = t.id) ORDER BY t.fid"
                    ).format(t=table),
                    (source,),
                )
                removed = [r[0] for r in cur.fetchall()]
            ids = np.asarray(layer.ids, dtype=object)
            upd_ids = ids[changed].tolist()
            n_changed = int(is_new.sum()) + len(upd_ids) + len(removed)
            log = pgw.Log(cur, name, user, stamp, f"{mode} from {source}")
            if before is None or before != after or n_changed > FEED_FEATURES_MAX:
                if n_changed or before != after:
                    log.layer()
            elif n_changed:
                was, props = pgw.changed(cur, name, fields, upd_ids)
                log.features(
                    ChangeKind.ADDED,
                    ids[is_new].tolist(),
                    new=feature_boxes(layer.geometry[is_new]),
                )
                log.features(
                    ChangeKind.UPDATED,
                    upd_ids,
                    [was[i] for i in upd_ids],
                    feature_boxes(layer.geometry[changed]),
                    [props[i] for i in upd_ids],
                )
                gone = pgw.stored_boxes(cur, name, removed)
                log.features(ChangeKind.REMOVED, removed, [gone[i] for i in removed])
            ended = [*upd_ids, *removed]
            live.keep_versions(cur, name, ended, valid_to=stamp, user=user, why=log.why)
            pgw.upsert(cur, name, fields, stamp)
            if removed:
                pgs.forget(cur, name, removed)
                cur.execute(
                    sql.SQL("DELETE FROM {t} WHERE id = ANY(%s)").format(t=table), (removed,)
                )
            written = [*ids[is_new].tolist(), *upd_ids]
            if len(written) > FEED_FEATURES_MAX:
                pgs.reindex(cur, recorded)
            elif written:
                pgs.reindex(cur, recorded, written)
            result = WriteResult(
                added=int(is_new.sum()),
                updated=len(upd_ids),
                unchanged=n - int(is_new.sum()) - len(upd_ids),
                removed=len(removed),
            )
            pgw.touch(cur, name, stamp)
            cur.execute(
                "INSERT INTO twin_imports (collection, time, who, source, mode, added, updated, "
                "unchanged, removed, rejected, repaired, details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                    _json(details),
                ),
            )
        return result

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
        with self._cursor(write=True) as cur:
            self._entry(cur, name, Access.RESTRICTED)
            if expect:
                pgw.check_expected(cur, name, expect)
            stamp = utc_stamp(_now())
            table = live.table(name)
            cur.execute(
                sql.SQL("SELECT id FROM {t} WHERE id = ANY(%s)").format(t=table),
                (list(dict.fromkeys(ids)),),
            )
            present = {r[0] for r in cur.fetchall()}
            gone = sorted(present)  # the embedded store's order: by id
            was = pgw.stored_boxes(cur, name, gone)
            log = pgw.Log(cur, name, user, stamp, f"delete by {source}")
            log.features(ChangeKind.REMOVED, gone, [was[i] for i in gone])
            live.keep_versions(cur, name, gone, valid_to=stamp, user=user, why=log.why)
            pgs.forget(cur, name, gone)
            cur.execute(sql.SQL("DELETE FROM {t} WHERE id = ANY(%s)").format(t=table), (gone,))
            n = cur.rowcount
            pgw.touch(cur, name, stamp)
            cur.execute(
                "INSERT INTO twin_imports (collection, time, who, source, mode, added, updated, "
                "unchanged, removed, rejected, repaired) "
                "VALUES (%s, %s, %s, %s, 'delete', 0, 0, 0, %s, 0, 0)",
                (name, stamp, user, source, n),
            )
        return n

    def drop(self, name: str) -> None:
        """Remove a collection (vector or raster) from the store."""
        path = None
        with self._cursor(write=True) as cur:
            cur.execute("SELECT kind, path FROM twin_layers WHERE name = %s", (name,))
            row = cur.fetchone()
            if row is None:
                raise UnknownCollection(name)
            if row[0] == "vector":
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=live.table(name)))
                pgs.drop(cur, name)
            path = row[1]
            cur.execute("DELETE FROM twin_layers WHERE name = %s", (name,))
            cur.execute("DELETE FROM twin_files WHERE layer = %s", (name,))
            pgw.Log(cur, name, "twin", utc_stamp(_now()), "dropped").layer()
        if path is not None and Path(path).exists():
            Path(path).unlink()

    @_routed
    def files(self, name: str) -> dict[str, bytes]:
        """The files kept with layer `name` (see `write`), by name."""
        rows = self._rows(
            'SELECT name, data FROM twin_files WHERE layer = %s ORDER BY name COLLATE "C"', (name,)
        )
        return {n: bytes(d) for n, d in rows}

    def staging_dir(self) -> Path:
        """A folder on the file system of the store's rasters: a file made there (or in a
        folder inside it) is moved in by `put_raster`, not copied."""
        self.raster_dir.mkdir(parents=True, exist_ok=True)
        return self.raster_dir

    def put_raster(self, info: RasterInfo, *, user: str, source: str) -> RasterInfo:
        """Copy (or move, when staged in the store's raster folder) the finished COG at
        `info.uri` into the store under `info.name`, and register it with its lon/lat bounds,
        atomically. A raster read over the network (`https://...`, `s3://...`) is registered
        where it is, not copied: every server reads it there."""
        name = check_name(info.name)
        if info.remote:
            return self._register_raster(info, name, info.location, user=user, source=source)
        self.raster_dir.mkdir(parents=True, exist_ok=True)
        target = self.raster_dir / f"{name}.tif"
        staged = self.raster_dir / f".{name}.tif.staged"
        src = info.path
        try:
            if src.resolve().is_relative_to(self.raster_dir.resolve()):
                os.replace(src, staged)
            else:
                shutil.copyfile(src, staged)
            # The file swap is the last step inside the transaction: if it fails, the
            # registration rolls back and the previous raster stays in place.
            return self._register_raster(
                info,
                name,
                str(target),
                user=user,
                source=source,
                read_at=str(staged),
                then=lambda: os.replace(staged, target),
            )
        finally:
            staged.unlink(missing_ok=True)

    def _register_raster(
        self,
        info: RasterInfo,
        name: str,
        uri: str,
        *,
        user: str,
        source: str,
        read_at: str | None = None,
        then: Callable[[], None] | None = None,
    ) -> RasterInfo:
        """Register raster `name` read at `uri` (its file read for its bounds at `read_at`),
        calling `then` last inside the transaction."""
        try:
            bounds = lonlat_bounds(read_at or uri)
        except (OSError, RasterioError) as exc:
            raise StoreError(f"cannot read the raster {info.location}: {exc}") from None
        schema = LayerSchema(
            name=name,
            title=info.title,
            geometry=GeometryFamily.POLYGON,
            fields=(),
            classification=info.classification,
        )
        stamp = utc_stamp(_now())
        box = list(bounds) if bounds is not None else [None] * 4
        with self._cursor(write=True) as cur:
            cur.execute("SELECT kind FROM twin_layers WHERE name = %s", (name,))
            exists = cur.fetchone()
            if exists and exists[0] != "raster":
                raise StoreError(f"{name!r} is already a {exists[0]} collection")
            cur.execute(
                "INSERT INTO twin_layers (name, kind, schema, meta, classification, path, "
                "min_x, min_y, max_x, max_y) "
                "VALUES (%s, 'raster', %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) "
                "DO UPDATE SET schema = excluded.schema, meta = excluded.meta, "
                "classification = excluded.classification, path = excluded.path, "
                "min_x = excluded.min_x, min_y = excluded.min_y, max_x = excluded.max_x, "
                "max_y = excluded.max_y, last_change = clock_timestamp() "
                "RETURNING last_change",
                (
                    name,
                    _json(schema.to_json()),
                    _json(info.meta),
                    int(info.classification),
                    uri,
                    *box,
                ),
            )
            row = cur.fetchone()
            last = row[0] if row else _now()
            cur.execute(
                "INSERT INTO twin_imports (collection, time, who, source, mode, added, "
                "updated, unchanged, removed, rejected, repaired, details) VALUES "
                "(%s, %s, %s, %s, 'raster', %s, %s, 0, 0, 0, 0, %s)",
                (
                    name,
                    stamp,
                    user,
                    source,
                    0 if exists else 1,
                    1 if exists else 0,
                    _json(info.meta),
                ),
            )
            pgw.Log(cur, name, user, stamp, f"raster from {source}").layer()
            if then is not None:
                then()
        return RasterInfo(
            name, info.title, uri, info.classification, info.meta, bounds, last.isoformat()
        )

    def observe(self, readings: Readings | Sequence[Reading], *, user: str) -> Observed:
        """Keep every reading as history and make the newest of each feature's property (by
        its time, not by arrival) that feature's state, in one transaction: a reading older
        than the state recorded is kept in the history only. Each feature whose state changed
        is one change-log entry (see `layers.postgis_live`)."""
        if not readings:
            return Observed(0, self.revision())
        batch = Readings.of(readings)
        stamp = utc_stamp(_now())
        with self._cursor(write=True) as cur:
            cur.execute(
                "SELECT name, schema FROM twin_layers WHERE kind = 'vector' AND name = ANY(%s)",
                (list(set(batch.collection)),),
            )
            schemas = {n: LayerSchema.from_json(s) for n, s in cur.fetchall()}
            observed = live.observe(cur, batch, user=user, now=stamp, schemas=schemas)
            props = set(batch.property)
            for name, schema in schemas.items():  # a reading may set a searched text
                searched = set(searched_fields(schema)) & props
                if not searched:
                    continue
                ids = [
                    fid
                    for c, fid, p in zip(batch.collection, batch.id, batch.property, strict=True)
                    if c == name and p in searched
                ]
                pgs.reindex(cur, schema, ids)
            return observed

    def settle(self, history: bool = True) -> int:
        """How many readings arrived since the last call. Readings set state and are indexed
        as history when they are written, so there is nothing left to fold in; the count keeps
        the embedded store's answer to a server calling it now and then."""
        with self._cursor(write=True) as cur:
            cur.execute("SELECT coalesce(max(rid), 0) FROM twin_readings")
            (last,) = cur.fetchone() or (0,)
            cur.execute("SELECT value FROM twin_meta WHERE key = 'settled'")
            got = cur.fetchone()
            mark = int(got[0]) if got else 0
            if last <= mark:
                return 0
            cur.execute(
                "SELECT count(*) FROM twin_readings WHERE rid > %s AND rid <= %s", (mark, last)
            )
            (done,) = cur.fetchone() or (0,)
            cur.execute(
                "INSERT INTO twin_meta (key, value) VALUES ('settled', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (last,),
            )
        return int(done)

    def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever any process commits a change to this store (`LISTEN` on
        its channel, a connection of its own, on a thread, reconnecting after a fault), so a
        server applies a change at once instead of at its next look at the log."""
        if self._listener is not None:
            return

        def heard(db: psycopg.Connection) -> None:
            self._heard(db)
            wake()

        self._listener = Listener(self._url, CHANNEL, heard, "twin-pg-listen")

    def _heard(self, db: psycopg.Connection) -> None:
        """A change was announced: the reads that follow it must see it (from the primary,
        until the replica has replayed it)."""
        if self._replica is not None:
            self._replica.saw(_lsn(db.execute(FLUSH_LSN).fetchone()))

    def close(self) -> None:
        """Stop listening and close the connection pools."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._replica is not None:
            self._replica.close()
        self._pool.close()


def _lsn(row: tuple | None) -> int:
    return int(row[0]) if row and row[0] is not None else 0


def _reason(exc: BaseException) -> str:
    """The first line of a database error, without psycopg's traceback."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _columns(schema: LayerSchema) -> sql.Composable:
    """The stored columns of a feature after its id and geometry, as `_layer_of` reads them."""
    return sql.SQL(", ").join(
        sql.Identifier(c) for c in [*schema.field_names, SOURCE, VERSION, UPDATED]
    )
