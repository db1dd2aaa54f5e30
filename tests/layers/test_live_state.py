"""Readings land append-only and their state is laid over the stored features: the newest by
time wins whichever process wrote it, an edit folds the state in, and the history shows one
version per state change, whenever the appended readings were folded in (`settle`)."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

import numpy as np
import shapely

from layers.gpkg import GPKG_FILE, GeoPackageStore
from layers.layer import Layer
from layers.models import Access, Reading, feature_etag, utc_stamp
from layers.schemas import LIGHTS
from tests.twin.serve_fixtures import make_layer

ALL = Access.RESTRICTED
T0 = dt.datetime(2026, 12, 7, 9, tzinfo=dt.UTC)


def lights(ids: list[str], status: list[str], watts: list[float] | None = None) -> Layer:
    n = len(ids)
    return make_layer(
        LIGHTS,
        shapely.points(np.linspace(114.30, 114.31, n), np.full(n, 30.35)),
        ids,
        status=status,
        wattage_w=watts or [60.0] * n,
    )


def reading(fid: str, minutes: float, value: str) -> Reading:
    return Reading("lights", fid, "status", T0 + dt.timedelta(minutes=minutes), value)


def status(store: GeoPackageStore, fid: str) -> str:
    layer = store.features("lights", [fid], ALL)
    return str(layer.attrs["status"].iloc[0])


def test_the_newest_reading_wins_whichever_process_wrote_it(tmp_path: Path) -> None:
    a = GeoPackageStore(tmp_path)
    a.write(lights(["L1", "L2"], ["on", "on"]), source="s", user="u")
    b = GeoPackageStore(tmp_path)  # another worker, with its own memory of state times
    assert a.observe([reading("L1", 10, "fault")], user="gw").changed == 1
    assert b.observe([reading("L1", 5, "on")], user="gw").changed == 0  # older than a's
    assert b.observe([reading("L1", 20, "off")], user="gw").changed == 1
    assert a.observe([reading("L1", 15, "on")], user="gw").changed == 0  # older than b's
    # In one batch: the newest per feature, whatever the order; one entry per feature.
    done = a.observe(
        [reading("L2", 3, "fault"), reading("L2", 1, "off"), reading("L1", 30, "on")], user="gw"
    )
    assert done.changed == 2 and done.revision == a.revision() == b.revision()
    assert status(a, "L1") == status(b, "L1") == "on"
    assert status(b, "L2") == "fault"
    # Every reading is history, the late ones too.
    page, total = b.readings("lights", "L1")
    # Oldest first by the time observed: 5, 10, 15, 20, 30 minutes.
    assert total == 5 and [v for _, _, v, _, _ in page] == ["on", "fault", "on", "off", "on"]
    a.close()
    b.close()


def test_a_reading_writes_no_feature_row_and_settles_as_state(tmp_path: Path) -> None:
    store = GeoPackageStore(tmp_path)
    store.write(lights(["L1", "L2"], ["on", "on"]), source="s", user="u")
    raw = sqlite3.connect(tmp_path / GPKG_FILE)
    row = raw.execute('SELECT status, _version, _updated FROM "lights" WHERE id = ?', ("L1",))
    stored = row.fetchone()
    store.observe([reading("L1", 1, "fault")], user="gw")
    store.observe([reading("L1", 2, "off")], user="gw")
    (pending,) = raw.execute("SELECT count(*) FROM twin_readings_new").fetchone()
    assert pending == 2
    assert store.settle() == 2 and store.settle() == 0
    again = raw.execute('SELECT status, _version, _updated FROM "lights" WHERE id = ?', ("L1",))
    assert again.fetchone() == stored  # the row as imported...
    served = store.features("lights", ["L1"], ALL)
    assert served.attrs["status"].tolist() == ["off"]  # ... served with its state over it
    assert served.attrs["_version"].tolist() == [stored[1] + 2]  # two more versions
    assert served.etag(0) != feature_etag(stored[1], stored[2])
    raw.close()
    store.close()


def test_versions_and_as_of_follow_readings_and_edits(tmp_path: Path) -> None:
    store = GeoPackageStore(tmp_path)
    store.write(lights(["L1", "L2"], ["on", "on"]), source="s", user="u")
    marks = []

    def mark() -> None:
        time.sleep(0.003)
        marks.append(utc_stamp(dt.datetime.now(dt.UTC)))
        time.sleep(0.003)

    mark()
    store.observe([reading("L1", 1, "fault")], user="gw1")
    mark()
    store.settle()  # folding in at any moment changes nothing below
    store.observe([reading("L1", 2, "off")], user="gw2")
    mark()
    # An edit (another wattage) of the feature as served: its state is folded in.
    edited = store.features("lights", ["L1"], ALL)
    edited.attrs.loc[0, "wattage_w"] = 75.0
    before = edited.etag(0)
    store.write(edited, source="api", user="ann", expect={"L1": before})
    mark()
    store.observe([reading("L1", 0.5, "fault")], user="gw3")  # older than the state: late
    store.observe([reading("L1", 3, "on")], user="gw4")
    mark()
    served = store.features("lights", ["L1"], ALL)
    assert served.attrs["status"].tolist() == ["on"]
    assert served.attrs["wattage_w"].tolist() == [75.0]
    assert served.attrs["_version"].tolist() == [5]  # import, 2 readings, edit, reading
    old, ended = store.versions("lights", "L1", ALL)
    assert old.attrs["status"].tolist() == ["on", "fault", "off", "off"]
    assert old.attrs["wattage_w"].tolist() == [60.0, 60.0, 60.0, 75.0]
    assert old.attrs["_version"].tolist() == [1, 2, 3, 4]
    assert [e[1] for e in ended] == ["gw1", "gw2", "ann", "gw4"]
    assert [e[2] for e in ended][:2] == ["reading", "reading"]
    # Each version ends where the next begins.
    began = [utc_stamp(t) for t in old.attrs["_updated"]]
    assert [e[0] for e in ended[:-1]] == began[1:]
    # As recorded at each instant.
    expect = [("on", 60.0), ("fault", 60.0), ("off", 60.0), ("off", 75.0), ("on", 75.0)]
    for t, (s, w) in zip(marks, expect, strict=True):
        then = store.as_of("lights", t, ALL, ids=["L1"])
        assert (then.attrs["status"].iloc[0], then.attrs["wattage_w"].iloc[0]) == (s, w), t
        whole = store.as_of("lights", t, ALL)
        assert whole.attrs["status"].tolist()[0] == s
        assert whole.attrs["status"].tolist()[1] == "on"
    # An edit with the ETag from before a reading changed the feature is refused.
    from layers.errors import PreconditionFailed

    store.observe([reading("L1", 4, "fault")], user="gw5")
    try:
        store.write(edited, source="api", user="bob", expect={"L1": served.etag(0)})
    except PreconditionFailed:
        pass
    else:
        raise AssertionError("a stale ETag was taken")
    store.close()


def test_a_removed_feature_takes_no_state_with_it(tmp_path: Path) -> None:
    store = GeoPackageStore(tmp_path)
    store.write(lights(["L1"], ["on"]), source="s", user="u")
    store.observe([reading("L1", 1, "fault")], user="gw")
    store.delete_features("lights", ["L1"], user="u", source="api")
    store.write(lights(["L1"], ["on"]), source="s", user="u")  # the same id, a new lamp
    assert status(store, "L1") == "on"
    store.close()


def test_a_store_from_before_the_append_only_readings_opens_and_keeps_them(tmp_path: Path) -> None:
    """A pending-readings table made without AUTOINCREMENT or `first` (earlier stores) is made
    again on open, its rows kept: row numbers are never reused after a settle."""
    store = GeoPackageStore(tmp_path)
    store.write(lights(["L1"], ["on"]), source="s", user="u")
    store.observe([reading("L1", 1, "fault")], user="gw")
    store.close()
    raw = sqlite3.connect(tmp_path / GPKG_FILE)
    raw.executescript(
        "ALTER TABLE twin_readings_new RENAME TO kept;"
        "CREATE TABLE twin_readings_new (collection TEXT NOT NULL, id TEXT NOT NULL, "
        "property TEXT NOT NULL, time DATETIME NOT NULL, value TEXT NOT NULL, "
        "received DATETIME NOT NULL, user TEXT NOT NULL, applied INTEGER);"
        "INSERT INTO twin_readings_new SELECT collection, id, property, time, value, received, "
        "user, applied FROM kept; DROP TABLE kept;"
    )
    raw.close()
    store = GeoPackageStore(tmp_path)
    assert status(store, "L1") == "fault"  # the pending reading kept, its state served
    store.settle()
    store.observe([reading("L1", 2, "off")], user="gw")
    assert status(store, "L1") == "off"
    page, total = store.readings("lights", "L1")
    assert total == 2 and [v for _, _, v, _, _ in page] == ["fault", "off"]
    store.close()
