"""Search in the PostGIS store: every layer's search keys in one table, and the `Finder` a
search reads them through.

`twin_search` holds the keys `layers.search.entries` makes of each stored feature (its id and
searched texts, whole and as words), with the feature's `fid` (the layer's stored order) and
the column each came from (NULL: the id), so a search can leave out the fields a caller may
not see. The keys are `COLLATE "C"` (code-point order, as Python compares texts) and indexed
by (layer, kind, key, fid): a prefix is a range scan in the order a layer held in memory keeps
its keys, so the same ranking (`layers.search.layer_hits`) reads the same rows from either.
Every function writing keys runs inside the caller's write transaction (`layers.postgis`):
the keys change with the texts they are made of.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from psycopg import Cursor, sql

from layers import postgis_live as live
from layers.models import LayerSchema
from layers.postgis_write import geometries
from layers.search import TOP, WHOLE, WORD, entries, searched_fields

TABLES = """
CREATE TABLE IF NOT EXISTS twin_search (
  layer text NOT NULL, fid bigint NOT NULL, kind smallint NOT NULL,
  key text COLLATE "C" NOT NULL, col text);
CREATE INDEX IF NOT EXISTS twin_search_key ON twin_search (layer, kind, key, fid) INCLUDE (col);
CREATE INDEX IF NOT EXISTS twin_search_fid ON twin_search (layer, fid);
"""
CHUNK = 50_000
"""Features whose keys are made at a time when a whole layer's are (re)written."""


def reindex(cur: Cursor, schema: LayerSchema, ids: Sequence[str] | None = None) -> int:
    """Write the keys of the stored features `ids` of the layer of `schema` (None: all of
    them) as they are now, in place of those they had; returns how many keys were written."""
    name = schema.name
    table = live.table(name)
    if ids is None:
        cur.execute("DELETE FROM twin_search WHERE layer = %s", (name,))
        where: sql.Composable = sql.SQL("")
        params: list[Any] = []
    else:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        forget(cur, name, ids)
        where, params = sql.SQL(" WHERE id = ANY(%s)"), [ids]
    columns = searched_fields(schema)
    query = sql.SQL("SELECT fid, id{cols} FROM {t}").format(
        cols=sql.SQL("").join(sql.SQL(", ") + sql.Identifier(c) for c in columns), t=table
    )
    written = 0
    with cur.connection.cursor(name="twin_search_keys") as scan:
        scan.itersize = CHUNK
        scan.execute(query + where, params)
        while rows := scan.fetchmany(CHUNK):
            written += _write(cur, name, columns, rows)
    if ids is None:  # many keys changed: the planner learns of them now
        cur.execute("ANALYZE twin_search")
    return written


def forget(cur: Cursor, name: str, ids: Sequence[str]) -> None:
    """Remove the keys of the stored features `ids` of layer `name` (before they go)."""
    if ids:
        cur.execute(
            sql.SQL(
                "DELETE FROM twin_search WHERE layer = %s "
                "AND fid IN (SELECT fid FROM {t} WHERE id = ANY(%s))"
            ).format(t=live.table(name)),
            (name, list(ids)),
        )


def drop(cur: Cursor, name: str) -> None:
    """Remove every key of layer `name`."""
    cur.execute("DELETE FROM twin_search WHERE layer = %s", (name,))


def _write(cur: Cursor, name: str, columns: Sequence[str], rows: list[tuple]) -> int:
    """Copy the keys of stored rows `(fid, id, *texts)` into the table, in key order (the
    key index is then filled from left to right)."""
    values = list(zip(*rows, strict=True))
    got = entries(
        np.array(values[1], dtype=object),
        [np.array(v, dtype=object) for v in values[2:]],
        np.array(values[0], dtype=np.int64),
    )
    if not len(got.rows):
        return 0
    table = pa.table(
        {"kind": got.kinds, "key": got.keys, "fid": got.rows, "col": got.columns}
    ).sort_by([("kind", "ascending"), ("key", "ascending"), ("fid", "ascending")])
    # COPY's text format: a key has no tab, newline or carriage return (`normalise` made
    # every run of white space one space); backslashes are doubled.
    names = pa.array([_text(None), *(_text(c) for c in columns)], pa.string())
    lines = pc.binary_join_element_wise(
        _text(name),
        pc.cast(table["fid"], pa.string()),
        pc.cast(table["kind"], pa.string()),
        pc.replace_substring(table["key"], "\\", "\\\\"),
        pc.take(names, table["col"]),
        "\t",
    )
    with cur.copy("COPY twin_search (layer, fid, kind, key, col) FROM STDIN") as copy:
        copy.write("\n".join(lines.to_pylist()) + "\n")
    return len(got.rows)


def _text(value: str | None) -> str:
    """`value` as COPY's text format writes it (NULL as `\\N`)."""
    if value is None:
        return "\\N"
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


class StoreFinder:
    """A `layers.search.Finder` over the keys of one layer in `twin_search` and its table,
    read through `cur` (one snapshot), rows being fids; keys of the fields `hidden` left out."""

    def __init__(self, cur: Cursor, schema: LayerSchema, hidden: Collection[str] = ()) -> None:
        self.cur = cur
        self.name = schema.name
        self.table = live.table(schema.name)
        every = searched_fields(schema)
        self.columns = tuple(c for c in every if c not in hidden)
        left_out = [c for c in every if c in hidden]
        self._only = sql.SQL(" AND (col IS NULL OR col <> ALL(%s))" if left_out else "")
        self._only_params: list[Any] = [left_out] if left_out else []
        self._first: dict[tuple[int, str, int], tuple[list[str], list[int]]] = {}
        self._boxes: dict[int, np.ndarray] = {}

    def _starting(self, kind: int, prefix: str, cap: int, what: str) -> tuple[sql.Composed, list]:
        """The first `cap` keys of `kind` starting with `prefix`, in (key, fid) order."""
        query = sql.SQL(
            "SELECT {what} FROM twin_search WHERE layer = %s AND kind = %s "
            "AND key >= %s AND key < %s{only} ORDER BY key, fid LIMIT %s"
        ).format(what=sql.SQL(what), only=self._only)
        return query, [self.name, kind, prefix, prefix + TOP, *self._only_params, cap]

    def first(self, kind: int, prefix: str, n: int) -> tuple[list[str], list[int]]:
        held = self._first.get((kind, prefix, n))
        if held is not None:
            return held
        query, params = self._starting(kind, prefix, n, "key, fid")
        self.cur.execute(query, params)
        rows = self.cur.fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def common(self, words: Sequence[str], cap: int, limit: int) -> list[int]:
        # A word no key starts with leaves nothing in common: asked first, as it is cheap.
        self.cur.execute(
            sql.SQL(
                "SELECT bool_and(EXISTS (SELECT 1 FROM twin_search WHERE layer = %s "
                "AND kind = ANY(ARRAY[0, 1]::smallint[]) AND key >= w AND key < w || %s{only})) "
                "FROM unnest(%s::text[]) AS u(w)"
            ).format(only=self._only),
            [self.name, TOP, *self._only_params, list(words)],
        )
        row = self.cur.fetchone()
        if not row or not row[0]:
            return []
        groups = []
        params: list[Any] = []
        for word in words:
            parts = []
            for kind in (WHOLE, WORD):
                query, got = self._starting(kind, word, cap, "fid")
                parts.append(sql.SQL("({})").format(query))
                params += got
            groups.append(sql.SQL("({})").format(sql.SQL(" UNION ").join(parts)))
        self.cur.execute(
            sql.SQL("SELECT fid FROM ({}) x ORDER BY fid LIMIT %s").format(
                sql.SQL(" INTERSECT ").join(groups)
            ),
            [*params, limit],
        )
        return [r[0] for r in self.cur.fetchall()]

    def equal(self, texts: Sequence[str], cap: int) -> dict[str, np.ndarray]:
        self.cur.execute(
            sql.SQL(
                "SELECT t.k, s.fid FROM unnest(%s::text[]) AS t(k) "
                "CROSS JOIN (VALUES (0), (1)) AS d(kind) CROSS JOIN LATERAL "
                "(SELECT fid FROM twin_search WHERE layer = %s AND kind = d.kind "
                'AND key = t.k COLLATE "C"{only} ORDER BY fid LIMIT %s) s'
            ).format(only=self._only),
            [list(texts), self.name, *self._only_params, cap],
        )
        found: dict[str, list[int]] = {t: [] for t in texts}
        for text, fid in self.cur.fetchall():
            found[text].append(fid)
        return {t: np.unique(np.array(f, dtype=np.int64)) for t, f in found.items()}

    def features(self, rows: Sequence[int], columns: Sequence[str]) -> tuple[list, list[list]]:
        # Their boxes are read with them: the hits' boxes are theirs (and their namesakes').
        cols = sql.SQL("").join(sql.SQL(", ") + sql.Identifier(c) for c in columns)
        self.cur.execute(
            sql.SQL(
                "SELECT fid, ST_AsBinary(geom, 'NDR'), id{cols} FROM {t} WHERE fid = ANY(%s)"
            ).format(cols=cols, t=self.table),
            [list(rows)],
        )
        found = self.cur.fetchall()
        self._keep_boxes(found)
        by_fid = {r[0]: r[2:] for r in found}
        got = [by_fid[fid] for fid in rows]
        return [g[0] for g in got], [[g[1 + k] for g in got] for k in range(len(columns))]

    def boxes(self, rows: np.ndarray) -> np.ndarray:
        fids = np.asarray(rows, dtype=np.int64).tolist()
        missing = [fid for fid in fids if fid not in self._boxes]
        if missing:
            self.cur.execute(
                sql.SQL("SELECT fid, ST_AsBinary(geom, 'NDR') FROM {t} WHERE fid = ANY(%s)").format(
                    t=self.table
                ),
                [missing],
            )
            self._keep_boxes(self.cur.fetchall())
        none = np.full(4, np.nan)
        return np.array([self._boxes.get(fid, none) for fid in fids], dtype=float).reshape(-1, 4)

    def _keep_boxes(self, rows: list[tuple]) -> None:
        """Keep the boxes of rows `(fid, wkb, ...)` (as shapely computes them, exactly)."""
        boxes = shapely.bounds(geometries([r[1] for r in rows])).reshape(-1, 4)
        self._boxes.update(zip((r[0] for r in rows), boxes, strict=True))


def prefetch(cur: Cursor, finders: Sequence[StoreFinder], prefix: str, n: int) -> None:
    """The first `n` keys of either kind starting with `prefix` of every finder's layer, read
    in one statement and kept for their `first` (a search asks each layer for them first)."""
    if not finders:
        return
    parts = []
    params: list[Any] = []
    for i, finder in enumerate(finders):
        for kind in (WHOLE, WORD):
            what = f"{int(i)} AS finder, {int(kind)} AS kind, key, fid"
            query, got = finder._starting(kind, prefix, n, what)
            parts.append(sql.SQL("({})").format(query))
            params += got
    cur.execute(sql.SQL(" UNION ALL ").join(parts), params)
    found: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for i, kind, key, fid in cur.fetchall():
        found.setdefault((i, kind), []).append((key, fid))
    for i, finder in enumerate(finders):
        for kind in (WHOLE, WORD):
            pairs = sorted(found.get((i, kind), []))  # (key, fid): code points, as "C" sorts
            finder._first[(kind, prefix, n)] = ([k for k, _ in pairs], [f for _, f in pairs])


def schemas(cur: Cursor, names: Sequence[str]) -> dict[str, LayerSchema]:
    """The schemas of vector layers `names` (those that exist), in one statement."""
    cur.execute(
        "SELECT name, schema FROM twin_layers WHERE kind = 'vector' AND name = ANY(%s)",
        (list(names),),
    )
    return {n: LayerSchema.from_json(s) for n, s in cur.fetchall()}
