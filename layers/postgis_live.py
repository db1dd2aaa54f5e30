"""Live state and history in the PostGIS store: readings, the state they set, the versions
they end and the change-log rows they write.

Unlike the embedded store (see `layers.gpkg_live`), which appends readings and lays their
state over the stored rows when read, a batch of readings here writes the state into the
feature rows inside its transaction: the rows before the change become versions
(`twin_versions`, ended "reading" by the batch's user), the changed columns are set, the
version bumped once per feature and batch, `_updated` moved on to the batch's time. Reads,
versions and `as_of` then need no overlay; the answers are the embedded store's.

Which reading sets the state (the newest by time, not by arrival) is decided against
`twin_state`, the time of the state of every (collection, id, property) a reading has set,
read inside the write transaction (writers are serialised by an advisory lock).
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import Cursor, sql

from layers.models import FieldType, LayerSchema, Observed, Readings, StateRun, parse_utc

LAYER_SCHEMA = "layers"
"""The database schema holding one table per vector layer, apart from the store's own tables."""


def table(name: str) -> sql.Identifier:
    """The table of vector layer `name`."""
    return sql.Identifier(LAYER_SCHEMA, name)


# How a JSON value (text, as kept in the history) is cast into a typed column.
_CASTS = {
    FieldType.STRING: "text",
    FieldType.INTEGER: "bigint",
    FieldType.FLOAT: "double precision",
    FieldType.BOOLEAN: "boolean",
    FieldType.DATE: "date",
    FieldType.DATETIME: "timestamptz",
}


def revision(cur: Cursor) -> int:
    """The sequence number of the newest entry of the log (0: none)."""
    cur.execute("SELECT seq + n - 1 FROM twin_changes ORDER BY seq DESC LIMIT 1")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def held_times(cur: Cursor, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """The time of the state recorded for each (collection, id, property) that has one."""
    by_layer: dict[str, list[str]] = {}
    for c, fid, _ in keys:
        by_layer.setdefault(c, []).append(fid)
    out: dict[tuple[str, str, str], str] = {}
    for c, fids in by_layer.items():
        cur.execute(
            "SELECT id, property, time FROM twin_state WHERE collection = %s AND id = ANY(%s)",
            (c, list(dict.fromkeys(fids))),
        )
        out.update(((c, fid, p), stamp(t)) for fid, p, t in cur.fetchall())
    return out


def stamp(t: Any) -> str:
    """A stored time (a UTC datetime) as the store writes times (ISO, ms, `Z`)."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def observe(
    cur: Cursor,
    readings: Readings,
    *,
    user: str,
    now: str,
    schemas: dict[str, LayerSchema],
) -> Observed:
    """Write `readings` inside a write transaction: all into the history, the newest of each
    property (when not older than the state held) into the state and the feature rows, one
    log row of entries per collection."""
    stamps, values = readings.time, readings.value
    best = readings.newest()
    held = held_times(cur, list(best))
    runs: dict[str, dict[str, tuple[dict[str, Any], dict[str, str], list[int]]]] = {}
    for (c, fid, p), i in best.items():
        if held.get((c, fid, p), "") <= stamps[i]:
            sets, times, which = runs.setdefault(c, {}).setdefault(fid, ({}, {}, []))
            sets[p], times[p] = values[i], stamps[i]
            which.append(i)
    seq = revision(cur) + 1
    applied: list[int | None] = [None] * len(readings)
    out = Observed(0, seq - 1)
    for c, features in runs.items():
        ids = list(features)
        values_set = [features[f][0] for f in ids]
        payload = {
            "collection": c,
            "id": ids,
            "set": values_set,
            "time": [features[f][1] for f in ids],
        }
        for k, fid in enumerate(ids):
            for i in features[fid][2]:
                applied[i] = seq + k
        cur.execute(
            "INSERT INTO twin_changes (seq, n, collection, kind, who, time, why, properties) "
            "VALUES (%s, %s, %s, 'readings', %s, %s, 'reading', %s)",
            (seq, len(ids), c, user, now, json.dumps(payload, ensure_ascii=False)),
        )
        if c in schemas:
            _apply(cur, schemas[c], features, user=user, now=now)
        out.runs.append(StateRun(seq, c, ids, values_set, user, parse_utc(now)))
        out.changed += len(ids)
        seq += len(ids)
    out.revision = seq - 1
    state = []
    for (c, fid, p), i in best.items():
        if applied[i] is not None:
            state.append((c, fid, p, stamps[i], json.dumps(values[i]), now, applied[i]))
    if state:
        cur.execute(
            "INSERT INTO twin_state (collection, id, property, time, value, recorded, seq) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], "
            "%s::text[], %s::timestamptz[], %s::bigint[]) "
            "ON CONFLICT (collection, id, property) DO UPDATE SET time = excluded.time, "
            "value = excluded.value, recorded = excluded.recorded, seq = excluded.seq",
            [list(column) for column in zip(*state, strict=True)],
        )
    rows = readings.history(applied)
    with cur.copy(
        "COPY twin_readings (collection, id, property, time, value, received, who, applied) "
        "FROM STDIN"
    ) as copy:
        for c, fid, p, t, v, a in rows:
            copy.write_row((c, fid, p, t, v, now, user, a))
    return out


def _apply(
    cur: Cursor,
    schema: LayerSchema,
    features: dict[str, tuple[dict[str, Any], dict[str, str], list[int]]],
    *,
    user: str,
    now: str,
) -> None:
    """The state a batch sets written into a collection's feature rows: the rows before kept
    as versions ended by the batch, the values set, one more version each."""
    layer = table(schema.name)
    ids = list(features)
    keep_versions(cur, schema.name, ids, valid_to=now, user=user, why="reading")
    fields = {f.name: f for f in schema.fields}
    props = list(dict.fromkeys(p for sets, _, _ in features.values() for p in sets if p in fields))
    # One UPDATE for the whole batch (one new row version each, not one per property): per
    # property, whether the feature's entry sets it and to what (JSON text).
    sets_sql = [
        sql.SQL(
            "{c} = CASE WHEN v.{f} THEN (v.{v}::json #>> '{{}}')::{cast} ELSE t.{c} END"
        ).format(
            c=sql.Identifier(p),
            f=sql.Identifier(f"f{k}"),
            v=sql.Identifier(f"v{k}"),
            cast=sql.SQL(_CASTS[fields[p].type]),
        )
        for k, p in enumerate(props)
    ]
    arrays: list[list[Any]] = [ids]
    types = ["text[]"]
    names = ["id"]
    for k, p in enumerate(props):
        arrays.append(
            [json.dumps(features[fid][0][p]) if p in features[fid][0] else None for fid in ids]
        )
        arrays.append([p in features[fid][0] for fid in ids])
        types += ["text[]", "boolean[]"]
        names += [f"v{k}", f"f{k}"]
    unnest = sql.SQL(", ").join(sql.SQL("%s::" + t) for t in types)
    cur.execute(
        sql.SQL(
            "UPDATE {t} AS t SET {sets}_version = t._version + 1, "
            "_updated = greatest(t._updated, %s::timestamptz) "
            "FROM unnest({unnest}) AS v({names}) WHERE t.id = v.id"
        ).format(
            t=layer,
            sets=sql.SQL("").join(x + sql.SQL(", ") for x in sets_sql),
            unnest=unnest,
            names=sql.SQL(", ").join(sql.Identifier(n) for n in names),
        ),
        [now, *arrays],
    )


def keep_versions(
    cur: Cursor, name: str, ids: list[str], *, valid_to: str, user: str, why: str
) -> None:
    """Copy the stored rows of `ids` into `twin_versions` before they change or go: each
    becomes a version valid from its `_updated` to `valid_to`, ended by `user` for `why`."""
    if not ids:
        return
    cur.execute("SELECT schema FROM twin_layers WHERE name = %s", (name,))
    row = cur.fetchone()
    names = LayerSchema.from_json(row[0]).field_names if row else []
    # The fields only, by name (`to_jsonb` of the whole row would also write the geometry
    # out as GeoJSON, the most of the cost).
    props: sql.Composable = sql.SQL("(SELECT to_jsonb(f) FROM (SELECT {cols}) f)").format(
        cols=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(n)) for n in names)
    )
    if not names:
        props = sql.SQL("'{}'::jsonb")
    cur.execute(
        sql.SQL(
            "INSERT INTO twin_versions (collection, id, version, valid_from, valid_to, geom, "
            "properties, source, first_fid, who, why) "
            "SELECT %s, t.id, t._version, t._updated, %s, t.geom, {props}, t.source, t.fid, "
            "%s, %s FROM {t} t WHERE t.id = ANY(%s) ORDER BY t.fid"
        ).format(t=table(name), props=props),
        (name, valid_to, user, why, ids),
    )


def run(seq: int, user: str, when: Any, text: str) -> StateRun:
    """A log row of readings as the run of state changes it holds."""
    payload = json.loads(text)
    return StateRun(
        seq, payload["collection"], payload["id"], payload["set"], user, parse_utc(stamp(when))
    )
