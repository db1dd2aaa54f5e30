"""Writing in the PostGIS store: features staged by binary COPY into a temporary table and
applied from it in one statement per kind of change, the change log's entries, the layer's
extent. Every function runs inside the caller's write transaction (`layers.postgis`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely
from psycopg import Cursor, sql

from layers import postgis_live as live
from layers.errors import PreconditionFailed
from layers.gpkg import feature_boxes
from layers.layer import SOURCE, UPDATED, Layer
from layers.models import ChangeKind, FieldType, feature_etag

SQL_TYPES = {
    FieldType.STRING: "text",
    FieldType.INTEGER: "bigint",
    FieldType.FLOAT: "double precision",
    FieldType.BOOLEAN: "boolean",
    FieldType.DATE: "date",
    FieldType.DATETIME: "timestamp with time zone",
}
# Types of the staging table's columns, as COPY writes them (dates travel as ISO text).
COPY_TYPES = {
    FieldType.STRING: "text",
    FieldType.INTEGER: "int8",
    FieldType.FLOAT: "float8",
    FieldType.BOOLEAN: "bool",
    FieldType.DATE: "text",
    FieldType.DATETIME: "text",
}
CHANGE_COLUMNS = (
    "seq, collection, id, kind, old_min_x, old_min_y, old_max_x, old_max_y, "
    "new_min_x, new_min_y, new_max_x, new_max_y, who, time, why, properties"
)


def geometries(wkb: Sequence[bytes | None]) -> np.ndarray:
    """Shapely geometries from WKB (None stays None)."""
    if not len(wkb):
        return np.array([], dtype=object)
    return shapely.from_wkb(np.array(list(wkb), dtype=object))


def copy_values(series: pd.Series, ftype: FieldType) -> list[Any]:
    """Column values as COPY takes them into the staging table (None for nulls)."""
    if ftype is FieldType.DATE:
        series = series.dt.strftime("%Y-%m-%d")
    elif ftype is FieldType.DATETIME:
        series = series.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    out: list[Any] = series.astype(object).where(series.notna(), None).tolist()
    return out


class Log:
    """Change-log entries of one write, numbered on from the revision inside its transaction."""

    def __init__(self, cur: Cursor, name: str, user: str, stamp: str, why: str) -> None:
        self.cur, self.name, self.user, self.stamp, self.why = cur, name, user, stamp, why
        self.seq = live.revision(cur)

    def layer(self) -> None:
        """One entry for the whole collection."""
        self.seq += 1
        self.cur.execute(
            f"INSERT INTO twin_changes ({CHANGE_COLUMNS}) VALUES (%s, %s, NULL, 'layer', "
            "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, %s, %s, %s, NULL)",
            (self.seq, self.name, self.user, self.stamp, self.why),
        )

    def features(
        self,
        kind: ChangeKind,
        ids: list[str],
        old: list[tuple[float | None, ...]] | None = None,
        new: list[tuple[float | None, ...]] | None = None,
        properties: list[Any] | None = None,
    ) -> None:
        """One entry per feature, with its boxes before and after and the names of the
        properties that changed (none given: all of them)."""
        if not ids:
            return
        none = (None,) * 4
        with self.cur.copy(f"COPY twin_changes ({CHANGE_COLUMNS}) FROM STDIN") as copy:
            for i, fid in enumerate(ids):
                self.seq += 1
                copy.write_row(
                    (
                        self.seq,
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
                )


def stored_boxes(cur: Cursor, name: str, ids: list[str]) -> dict[str, tuple]:
    """The boxes of the stored geometries of `ids` (as shapely computes them, exactly)."""
    if not ids:
        return {}
    cur.execute(
        sql.SQL("SELECT id, ST_AsBinary(geom, 'NDR') FROM {t} WHERE id = ANY(%s)").format(
            t=live.table(name)
        ),
        (ids,),
    )
    rows = cur.fetchall()
    found = feature_boxes(geometries([r[1] for r in rows]))
    return dict(zip((r[0] for r in rows), found, strict=True))


def check_expected(cur: Cursor, name: str, expect: dict[str, str | None]) -> None:
    """`PreconditionFailed` unless each feature of `expect` is in the state its ETag names
    (None: absent)."""
    cur.execute(
        sql.SQL("SELECT id, _version, _updated FROM {t} WHERE id = ANY(%s)").format(
            t=live.table(name)
        ),
        (list(expect),),
    )
    now = {fid: feature_etag(int(v), live.stamp(u)) for fid, v, u in cur.fetchall()}
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


def stage(
    cur: Cursor,
    layer: Layer,
    fields: list[Any],
    wkb: np.ndarray,
    hashes: np.ndarray,
    sources: list[Any],
) -> None:
    """Copy the offered features into the temporary table `_twin_in` (binary COPY)."""
    cols = sql.SQL("").join(
        sql.SQL(", {} {}").format(sql.Identifier(f.name), sql.SQL(COPY_TYPES[f.type]))
        for f in fields
    )
    cur.execute(
        sql.SQL(
            "CREATE TEMP TABLE _twin_in (ord int, id text, wkb bytea{cols}, source text, "
            "_hash int8) ON COMMIT DROP"
        ).format(cols=cols)
    )
    columns = [
        list(range(len(layer))),
        layer.ids.tolist(),
        wkb.tolist(),
        *(copy_values(layer.attrs[f.name], f.type) for f in fields),
        sources,
        hashes.tolist(),
    ]
    names = sql.SQL(", ").join(
        sql.Identifier(c) for c in ["ord", "id", "wkb", *(f.name for f in fields), SOURCE, "_hash"]
    )
    with cur.copy(sql.SQL("COPY _twin_in ({}) FROM STDIN (FORMAT BINARY)").format(names)) as copy:
        copy.set_types(
            ["int4", "text", "bytea", *(COPY_TYPES[f.type] for f in fields), "text", "int8"]
        )
        for row in zip(*columns, strict=True):
            copy.write_row(row)
    cur.execute("CREATE UNIQUE INDEX ON _twin_in (id)")
    cur.execute("ANALYZE _twin_in")


def cast(f: Any) -> sql.Composable:
    """The staged value of a field as its stored type."""
    value = sql.SQL("i.{}").format(sql.Identifier(f.name))
    if f.type in (FieldType.DATE, FieldType.DATETIME):
        return sql.SQL("{}::{}").format(value, sql.SQL(SQL_TYPES[f.type]))
    return value


def changed(
    cur: Cursor, name: str, fields: list[Any], ids: list[str]
) -> tuple[dict[str, tuple], dict[str, list[str]]]:
    """For each stored feature of `ids`: the box of its stored geometry, and the properties
    whose staged values differ from those stored (`geometry` first)."""
    if not ids:
        return {}, {}
    tests = [sql.SQL("ST_AsBinary(t.geom, 'NDR') IS DISTINCT FROM i.wkb")] + [
        sql.SQL("t.{c} IS DISTINCT FROM {v}").format(c=sql.Identifier(f.name), v=cast(f))
        for f in fields
    ]
    cur.execute(
        sql.SQL(
            "SELECT t.id, ST_AsBinary(t.geom, 'NDR'), {tests} FROM {t} t "
            "JOIN _twin_in i ON i.id = t.id WHERE t.id = ANY(%s)"
        ).format(tests=sql.SQL(", ").join(tests), t=live.table(name)),
        (ids,),
    )
    rows = cur.fetchall()
    labels = ["geometry", *(f.name for f in fields)]
    found = feature_boxes(geometries([r[1] for r in rows]))
    was = {r[0]: box for r, box in zip(rows, found, strict=True)}
    props = {r[0]: [lb for lb, d in zip(labels, r[2:], strict=True) if d] for r in rows}
    return was, props


def upsert(cur: Cursor, name: str, fields: list[Any], stamp: str) -> None:
    """Insert the staged features that are new, update those whose hash changed (their
    version one more), in the offered order."""
    names = [sql.Identifier(f.name) for f in fields]
    columns = sql.SQL(", ").join(
        [sql.Identifier(c) for c in ("id", "geom")]
        + names
        + [sql.Identifier(c) for c in (SOURCE, UPDATED, "_hash")]
    )
    values = sql.SQL(", ").join(
        [sql.SQL("i.id"), sql.SQL("ST_GeomFromWKB(i.wkb, 4326)")]
        + [cast(f) for f in fields]
        + [sql.SQL("i.source"), sql.SQL("%(stamp)s::timestamptz"), sql.SQL("i._hash")]
    )
    kept = ["geom", *(f.name for f in fields), SOURCE, UPDATED, "_hash"]
    sets = sql.SQL(", ").join(
        sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in kept
    )
    cur.execute(
        sql.SQL(
            "INSERT INTO {t} AS t ({columns}) SELECT {values} FROM _twin_in i "
            "LEFT JOIN {t} o ON o.id = i.id WHERE o._hash IS DISTINCT FROM i._hash "
            "ORDER BY i.ord "
            "ON CONFLICT (id) DO UPDATE SET {sets}, _version = t._version + 1 "
            "WHERE t._hash IS DISTINCT FROM excluded._hash"
        ).format(t=live.table(name), columns=columns, values=values, sets=sets),
        {"stamp": stamp},
    )


def touch(cur: Cursor, name: str, stamp: str) -> None:
    """Refresh the layer's extent and last-change time in the registry."""
    cur.execute(
        sql.SQL(
            "UPDATE twin_layers SET (min_x, min_y, max_x, max_y, last_change) = "
            "(SELECT min(ST_XMin(geom)), min(ST_YMin(geom)), max(ST_XMax(geom)), "
            "max(ST_YMax(geom)), %s::timestamptz FROM {t} WHERE NOT ST_IsEmpty(geom)) "
            "WHERE name = %s"
        ).format(t=live.table(name)),
        (stamp, name),
    )


def retype(cur: Cursor, table: str, column: str, old: str, ftype: FieldType) -> None:
    """Give a column another type (an extra attribute whose values grew: integer -> float,
    anything -> text), its values converted."""
    c = sql.Identifier(column)
    using: sql.Composable = sql.SQL("{}::{}").format(c, sql.SQL(SQL_TYPES[ftype]))
    if ftype is FieldType.STRING and old.startswith("timestamp"):
        using = sql.SQL(
            """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
        ).format(c)
    cur.execute(
        sql.SQL("ALTER TABLE {t} ALTER COLUMN {c} TYPE {type} USING {using}").format(
            t=live.table(table), c=c, type=sql.SQL(SQL_TYPES[ftype]), using=using
        )
    )
