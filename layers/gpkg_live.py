"""Live state in the embedded store: readings land append-only, and the state they set is laid
over the stored features rather than written into them.

A batch of readings is two appends in one transaction: every reading into
`twin_readings_new` (no index), and one change-log row for the features whose state changed
(`kind = 'readings'`, `n` entries with consecutive sequence numbers, their ids and values in
`properties`). Nothing scattered across the feature table or an index is written per batch:
at 100k lamps, writing the state into the feature rows, copying each row as a version and
indexing each reading cost ~35 ms per 1,000 readings, most of it SQLite writing back the
32 KiB pages those rows sit in; the appends cost ~2 ms.

`settle` folds the appended readings in, many batches at a time: into `twin_state` (the
server does it every second, and every read of stored features first) and into the indexed
history, `twin_readings` (every half minute, and every read of the history first); `twin_state` holds per feature and property the time,
value and recording time of the state (`live` = 1: it overrides the stored value) and `n`,
how many of the feature's state changes since its stored version it counts (a change setting
several properties is counted once, on the first). A feature as served is its stored row
with its live state laid over it (`overlay`): its version is the stored one plus those
changes, so ETags move with readings.

An edit or import of a feature writes the state as served into its row, so its live state is
folded in then (`fold`): the version counted on, `live` = 0.

History: the readings are the versions of the state. `reading_versions` makes the versions
between two stored versions from the readings applied then; `as_of` lays over a stored
version the readings applied between its start and the instant asked for.

Which readings change the state (the newest by time, not by arrival) is decided when they are
written, against the state times each process keeps in memory (`StateTimes`) and brings up to
date from the log inside the write transaction.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from functools import cache
from itertools import chain, compress, repeat
from typing import Any

import numpy as np
import pandas as pd

from layers.layer import UPDATED, VERSION, Layer, coerce
from layers.models import LayerSchema, Observed, Readings, StateRun, feature_etag, parse_utc

_READINGS_NEW = """CREATE TABLE IF NOT EXISTS twin_readings_new (
  rid INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, id TEXT NOT NULL,
  property TEXT NOT NULL, time DATETIME NOT NULL, value TEXT NOT NULL,
  received DATETIME NOT NULL, user TEXT NOT NULL, applied INTEGER,
  first INTEGER NOT NULL DEFAULT 0)"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS twin_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
{_READINGS_NEW};
"""

_READING_COLUMNS = "collection, id, property, time, value, received, user, applied"


def migrate(db: sqlite3.Connection) -> None:
    """Columns a store made before readings were appended lacks (its state was written into
    its rows: `live` 0)."""

    def columns(table: str) -> set[str]:
        return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}

    # Row numbers never reused (`settle` keeps the last one folded as a mark): a table made
    # without AUTOINCREMENT is made again.
    (made,) = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'twin_readings_new'"
    ).fetchone()
    if "AUTOINCREMENT" not in made:
        old = [c for c in columns("twin_readings_new") if c != "rid"]
        db.execute("ALTER TABLE twin_readings_new RENAME TO twin_readings_old")
        db.execute(_READINGS_NEW)
        cols = ", ".join(old)
        db.execute(f"INSERT INTO twin_readings_new ({cols}) SELECT {cols} FROM twin_readings_old")
        db.execute("DROP TABLE twin_readings_old")
    if "n" not in columns("twin_changes"):
        db.execute("ALTER TABLE twin_changes ADD COLUMN n INTEGER NOT NULL DEFAULT 1")
    if "applied" not in columns("twin_readings"):
        db.execute("ALTER TABLE twin_readings ADD COLUMN applied INTEGER")
    for table, name, decl in (
        ("twin_state", "value", "TEXT"),
        ("twin_state", "live", "INTEGER NOT NULL DEFAULT 0"),
        ("twin_state", "seq", "INTEGER"),
        ("twin_state", "n", "INTEGER NOT NULL DEFAULT 0"),
        ("twin_state", "recorded", "DATETIME"),
        ("twin_readings_new", "first", "INTEGER NOT NULL DEFAULT 0"),
    ):
        if name not in columns(table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def revision(db: sqlite3.Connection) -> int:
    """The sequence number of the newest entry of the log (0: none)."""
    row = db.execute("SELECT seq + n - 1 FROM twin_changes ORDER BY seq DESC LIMIT 1").fetchone()
    return int(row[0]) if row else 0


# -- writing ---------------------------------------------------------------------------------


@dataclass
class StateTimes:
    """The time of the state of every (collection, id, property) a reading has set, as of log
    entry `seq`: what a new reading is compared with (kept per process, brought up to date
    from the log inside each write transaction)."""

    times: dict[tuple[str, str, str], str] | None = None
    """(collection, id, property) -> time."""
    seq: int = 0

    def current(self, db: sqlite3.Connection) -> dict[tuple[str, str, str], str]:
        """Up to date (inside a write transaction)."""
        if self.times is None:
            settle(db, history=False)
            state = db.execute("SELECT collection, id, property, time FROM twin_state")
            times = {(c, fid, p): t for c, fid, p, t in state}
            self.times, self.seq = times, revision(db)
            return times
        rows = db.execute(
            "SELECT seq, n, properties FROM twin_changes WHERE seq > ? AND kind = 'readings' "
            "ORDER BY seq",
            (self.seq,),
        ).fetchall()
        for _, _, payload in rows:
            self.note(json.loads(payload))
        self.seq = max(self.seq, revision(db))
        return self.times

    def note(self, payload: dict[str, Any]) -> None:
        """The state times a log row of readings set."""
        assert self.times is not None
        c = payload["collection"]
        self.times.update(
            ((c, fid, p), t)
            for fid, set_at in zip(payload["id"], payload["time"], strict=True)
            for p, t in set_at.items()
        )

    def add(self, times: dict[tuple[str, str, str], str]) -> None:
        """State times set, as `observe` gives them."""
        assert self.times is not None
        self.times.update(times)


def observe(
    db: sqlite3.Connection,
    readings: Readings,
    *,
    user: str,
    stamp: str,
    held: dict[tuple[str, str, str], str],
) -> tuple[Observed, dict[tuple[str, str, str], str]]:
    """Append `readings` inside a write transaction: all to the history, and one log row per
    collection for the features whose state they change (the newest reading of each
    property, by time, when not older than the state `held`); what it did, and the state
    times it set (as `StateTimes.times` holds them)."""
    stamps, values = readings.time, readings.value
    best = readings.newest()
    keys = list(best)
    at = list(best.values())
    ts = list(map(stamps.__getitem__, at))
    fresh = list(map(str.__le__, map(held.get, keys, repeat("")), ts))  # not older than held
    # Per collection, the features changed in the order first met, each with what it sets.
    runs: dict[str, dict[str, tuple[dict[str, Any], dict[str, str], list[int]]]] = {}
    for (c, fid, p), i, t in compress(zip(keys, at, ts, strict=True), fresh):
        features = runs.get(c)
        if features is None:
            features = runs[c] = {}
        got = features.get(fid)
        if got is None:
            features[fid] = ({p: values[i]}, {p: t}, [i])
        else:
            got[0][p], got[1][p] = values[i], t
            got[2].append(i)
    seq = revision(db) + 1
    recorded = parse_utc(stamp)
    applied: list[int | None] = [None] * len(readings)
    first = [0] * len(readings)
    out = Observed(0, seq - 1)
    for c, features in runs.items():
        ids = list(features)
        entries = list(features.values())
        sets = [e[0] for e in entries]
        payload = {
            "collection": c,
            "id": ids,
            "set": sets,
            "time": [e[1] for e in entries],
        }
        for k, (_, _, which) in enumerate(entries, seq):
            first[which[0]] = 1  # the entry's one more version, counted once
            for i in which:
                applied[i] = k
        db.execute(
            "INSERT INTO twin_changes (seq, n, collection, kind, user, time, why, properties) "
            "VALUES (?, ?, ?, 'readings', ?, ?, 'reading', ?)",
            (seq, len(ids), c, user, stamp, _PAYLOAD.encode(payload)),
        )
        out.runs.append(StateRun(seq, c, ids, sets, user, recorded))
        out.changed += len(ids)
        seq += len(ids)
    out.revision = seq - 1
    if out.changed:
        # Later entries numbered after these (AUTOINCREMENT takes the highest rowid written,
        # not the highest number a row stands for).
        db.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'twin_changes'",
            (out.revision,),
        )
    rows = list(readings.history(applied, first))
    # Rows of many readings per statement: half the time of one statement per reading.
    for lo in range(0, len(rows), _ROWS_PER_INSERT):
        part = rows[lo : lo + _ROWS_PER_INSERT]
        db.execute(_insert_readings(len(part)), (stamp, user, *chain.from_iterable(part)))
    return out, dict(compress(zip(keys, ts, strict=True), fresh))


_PAYLOAD = json.JSONEncoder(ensure_ascii=False, check_circular=False)
"""A log row's payload as JSON text (made here: no containers in it hold themselves)."""
_ROWS_PER_INSERT = 140
"""Readings per INSERT statement: 7 values each, 2 more for all; 999 values at most in SQLite
before 3.32."""


@cache
def _insert_readings(n: int) -> str:
    """An INSERT of `n` readings: the time received and the user bound once, then the
    collection, id, property, time, value, applied and first of each."""
    return (
        f"INSERT INTO twin_readings_new ({_READING_COLUMNS}, first) SELECT column1, column2, "
        "column3, column4, column5, ?1, ?2, column6, column7 FROM (VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n)
        + ")"
    )


def _mark(db: sqlite3.Connection) -> int:
    """The last row of `twin_readings_new` whose state is folded in."""
    row = db.execute("SELECT value FROM twin_meta WHERE key = 'state_folded'").fetchone()
    return int(row[0]) if row else 0


def settle(
    db: sqlite3.Connection,
    most: int | None = None,
    upto: int | None = None,
    *,
    history: bool = True,
) -> int:
    """Fold appended readings (the oldest `most`, none after row `upto`) into the state and,
    with `history`, move them into the indexed history, inside a write transaction; returns
    how many it folded or moved.

    The two go at their own pace: the state's pages are few (one row per feature and
    property), so it is folded every second; a reading's place in the history index is its
    feature's page, so moving a second's readings writes a page per reading (32 KiB pages:
    ~450 MB/s of WAL at 14k readings/s), moving half a minute's writes each page once for all
    the readings of its feature."""
    # Apart: together, min() and max() read the whole table rather than its two ends.
    (first,) = db.execute("SELECT min(rowid) FROM twin_readings_new").fetchone()
    (last,) = db.execute("SELECT max(rowid) FROM twin_readings_new").fetchone()
    if last is None:
        return 0
    mark = _mark(db)
    if upto is not None:
        last = min(last, upto)
    if most is not None:
        last = min(last, (first if history else max(first, mark + 1)) + most - 1)
    done = 0
    if last > mark:
        # Per property, the last reading applied (SQLite takes the bare columns from the row
        # of max(applied)) and how many changes it counts.
        db.execute(
            "INSERT INTO twin_state (collection, id, property, time, value, live, seq, n, "
            "recorded) SELECT collection, id, property, time, value, 1, max(applied), "
            "sum(first), received FROM twin_readings_new "
            "WHERE rowid > ? AND rowid <= ? AND applied IS NOT NULL "
            "GROUP BY collection, id, property "
            "ON CONFLICT (collection, id, property) DO UPDATE SET time = excluded.time, "
            "value = excluded.value, seq = excluded.seq, recorded = excluded.recorded, "
            "n = CASE WHEN twin_state.live THEN twin_state.n ELSE 0 END + excluded.n, live = 1",
            (mark, last),
        )
        db.execute(
            "INSERT INTO twin_meta (key, value) VALUES ('state_folded', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (last,),
        )
        done = int(
            db.execute(
                "SELECT count(*) FROM twin_readings_new WHERE rowid > ? AND rowid <= ?",
                (mark, last),
            ).fetchone()[0]
        )
    if not history or last < first:
        return done
    # Sorted by the history's index: each of its pages is written once per move.
    db.execute(
        f"INSERT INTO twin_readings ({_READING_COLUMNS}) SELECT {_READING_COLUMNS} "
        "FROM twin_readings_new WHERE rowid <= ? ORDER BY collection, id, time",
        (last,),
    )
    db.execute("DELETE FROM twin_readings_new WHERE rowid <= ?", (last,))
    return int(db.execute("SELECT changes()").fetchone()[0])


def fold(db: sqlite3.Connection, table: str, name: str, ids: list[str]) -> None:
    """Before features of `ids` are written anew (an edit, an import) or removed: their state
    changes counted into their stored version, their live state ended (the write holds the
    state as served)."""
    if not ids:
        return
    wanted = set(ids)
    bumps = [
        (int(n), fid)
        for fid, n in db.execute(
            "SELECT id, sum(n) FROM twin_state WHERE collection = ? AND live GROUP BY id",
            (name,),
        )
        if fid in wanted
    ]
    if not bumps:
        return
    db.executemany(f'UPDATE "{table}" SET _version = _version + ? WHERE id = ?', bumps)
    db.executemany(
        "UPDATE twin_state SET live = 0, n = 0 WHERE collection = ? AND id = ?",
        ((name, fid) for _, fid in bumps),
    )


def end(db: sqlite3.Connection, name: str, ids: list[str]) -> None:
    """No live state for features of `ids` (new ones: a reading of an id not there then sets
    nothing on a feature added under it later)."""
    held = {
        r[0]
        for r in db.execute(
            "SELECT DISTINCT id FROM twin_state WHERE collection = ? AND live", (name,)
        )
    }
    ended = held.intersection(ids)  # mostly none: one query, not one per feature
    db.executemany(
        "UPDATE twin_state SET live = 0, n = 0 WHERE collection = ? AND id = ?",
        ((name, fid) for fid in ended),
    )


def end_all(db: sqlite3.Connection, name: str) -> None:
    """A collection dropped: no live state of its features outlives it."""
    db.execute("UPDATE twin_state SET live = 0 WHERE collection = ?", (name,))


# -- reading ---------------------------------------------------------------------------------


def live_rows(db: sqlite3.Connection, name: str, ids: list[str] | None) -> list[tuple]:
    """`(id, property, value, n, recorded)` of the live state of a collection's features."""
    sql = "SELECT id, property, value, n, recorded FROM twin_state WHERE collection = ? AND live"
    if ids is None:
        return db.execute(sql, (name,)).fetchall()
    out: list[tuple] = []
    for lo in range(0, len(ids), 500):
        part = ids[lo : lo + 500]
        out += db.execute(
            f"{sql} AND id IN ({', '.join('?' * len(part))})", (name, *part)
        ).fetchall()
    return out


def overlay(layer: Layer, rows: list[tuple]) -> Layer:
    """`layer` (fresh from the store, changed in place) with live state rows `(id, property,
    value, n, recorded)` laid over it: values set (a property of the schema), each feature's
    version `n` more for each row, the time it was recorded moved on to the latest."""
    if not rows or not len(layer):
        return layer
    frame = pd.DataFrame(rows, columns=["id", "property", "value", "n", "recorded"])
    where = layer.row_of.get_indexer(frame["id"])
    frame = frame[where >= 0].assign(row=where[where >= 0])
    fields = {f.name: f for f in layer.schema.fields}
    for prop, part in frame.groupby("property", sort=False):
        f = fields.get(str(prop))
        if f is None:
            continue
        col = layer.attrs[f.name].astype(object).to_numpy().copy()
        col[part["row"].to_numpy()] = [json.loads(v) for v in part["value"]]
        layer.attrs[f.name] = coerce(pd.Series(col, dtype=object), f.type)
    version = layer.attrs[VERSION].to_numpy(dtype=np.int64).copy()
    np.add.at(version, frame["row"].to_numpy(), frame["n"].to_numpy(dtype=np.int64))
    layer.attrs[VERSION] = version
    layer.attrs[UPDATED] = later(layer.attrs[UPDATED], frame["row"].to_numpy(), frame["recorded"])
    return layer


def later(updated: pd.Series, rows: np.ndarray, stamps: Any) -> pd.Series:
    """`updated` (UTC times) with rows `rows` moved on to `stamps` where those are later."""
    ms = updated.to_numpy(dtype="datetime64[ms]").astype(np.int64)
    new = pd.to_datetime(pd.Series(list(stamps)), utc=True).to_numpy(dtype="datetime64[ms]")
    np.maximum.at(ms, rows, new.astype(np.int64))
    return pd.Series(ms.astype("datetime64[ms]")).dt.tz_localize("UTC")


def etags(db: sqlite3.Connection, table: str, name: str, ids: list[str]) -> dict[str, str]:
    """The ETag of each stored feature of `ids` as served (live state counted)."""
    out: dict[str, str] = {}
    for lo in range(0, len(ids), 500):
        part = ids[lo : lo + 500]
        rows = db.execute(
            "SELECT l.id, l._version + coalesce(sum(s.n), 0), "
            f"max(l._updated, coalesce(max(s.recorded), '')) FROM \"{table}\" l "
            "LEFT JOIN twin_state s ON s.collection = ? AND s.id = l.id AND s.live "
            f"WHERE l.id IN ({', '.join('?' * len(part))}) GROUP BY l.id",
            (name, *part),
        ).fetchall()
        out.update((fid, feature_etag(int(v), u)) for fid, v, u in rows)
    return out


def run(seq: int, user: str, stamp: str, text: str) -> StateRun:
    """A log row of readings as the run of state changes it holds."""
    payload = json.loads(text)
    return StateRun(
        seq, payload["collection"], payload["id"], payload["set"], user, parse_utc(stamp)
    )


# -- history ---------------------------------------------------------------------------------


def conditions(pairs: list[tuple[str, Any]], *fixed: str) -> tuple[str, list[Any]]:
    """A WHERE clause of the conditions `(sql, value)` whose value is not None, and `fixed`
    ones, with the values to bind."""
    used = [(sql, v) for sql, v in pairs if v is not None]
    clauses = [sql for sql, _ in used] + list(fixed)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), [v for _, v in used]


def applied_readings(
    db: sqlite3.Connection, name: str, fid: str | None, until: str | None = None
) -> pd.DataFrame:
    """The readings that changed the state of a feature (or of every feature), in the order
    they did: `id, property, value (JSON), received, user, applied`."""
    where, params = conditions(
        [("collection = ?", name), ("id = ?", fid), ("received <= ?", until)],
        "applied IS NOT NULL",
    )
    rows = db.execute(
        "SELECT id, property, value, received, user, applied FROM twin_readings "
        f"{where} ORDER BY applied",
        params,
    ).fetchall()
    return pd.DataFrame(rows, columns=["id", "property", "value", "received", "user", "applied"])


def reading_versions(
    schema: LayerSchema,
    base: list[tuple[tuple, str | None, str | None, str | None]],
    applied: pd.DataFrame,
) -> list[tuple[tuple, str | None, str | None, str | None]]:
    """The versions of one feature: its stored versions `(row, valid_to, by, why)` (a row as
    stored: `id, geom, *fields, source, version, valid_from`; the current one with no end),
    each split where a reading changed its state while it was valid."""
    names = list(schema.field_names)
    entries = [
        (str(part["received"].iloc[0]), str(part["user"].iloc[0]), part)
        for _, part in applied.groupby("applied", sort=True)
    ]
    out: list[tuple[tuple, str | None, str | None, str | None]] = []
    for row, valid_to, by, why in base:
        start = row[-1]
        current = list(row)
        for received, user, part in entries:
            if received < start or (valid_to is not None and received >= valid_to):
                continue
            out.append((tuple(current), received, user, "reading"))
            for p, v in zip(part["property"], part["value"], strict=True):
                if p in names:
                    current[2 + names.index(p)] = json.loads(v)
            current[-2] = int(current[-2]) + 1
            current[-1] = received
        out.append((tuple(current), valid_to, by, why))
    return out


def state_at(layer: Layer, applied: pd.DataFrame) -> Layer:
    """`layer` (the stored versions valid at an instant, fresh, changed in place) with the
    readings applied by then laid over it: those applied since each feature's version began."""
    if applied.empty or not len(layer):
        return layer
    where = layer.row_of.get_indexer(applied["id"])
    applied = applied[where >= 0].assign(row=where[where >= 0])
    began = layer.attrs[UPDATED].to_numpy(dtype="datetime64[ms]")
    received = pd.to_datetime(applied["received"], utc=True).to_numpy(dtype="datetime64[ms]")
    applied = applied[received >= began[applied["row"].to_numpy()]]
    if applied.empty:
        return layer
    # Per property its last value; each change counted once, as one more version.
    last = applied.drop_duplicates(["id", "property"], keep="last")
    rows = [(r.id, r.property, r.value, 0, r.received) for r in last.itertuples()]
    changes = applied.drop_duplicates(["applied"])
    rows += [(r.id, "", "null", 1, r.received) for r in changes.itertuples()]
    return overlay(layer, rows)
