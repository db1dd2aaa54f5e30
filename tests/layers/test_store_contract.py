"""The store contract: the embedded GeoPackage store and the PostGIS store give the same
answers to the same inputs. Each test runs on both backends against expectations worked out by
hand; `test_both_backends_answer_alike` runs one history of writes, readings and deletions on
both at once and compares every answer of one with the other's."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import shapely

from layers.errors import PreconditionFailed, StoreError, UnknownCollection
from layers.gpkg import GeoPackageStore
from layers.layer import SOURCE, UPDATED, VERSION, Layer, coerce, empty_attrs
from layers.life import temporal_extent
from layers.models import (
    Access,
    Bounds,
    Change,
    ChangeKind,
    Field,
    FieldType,
    GeometryFamily,
    LayerSchema,
    Reading,
    Readings,
    StateRun,
    utc_stamp,
)
from layers.store import RasterInfo, Store

ALL = Access.RESTRICTED
T0 = dt.datetime(2026, 12, 7, 9, tzinfo=dt.UTC)

KINDS = LayerSchema(
    name="kinds",
    title="Every field type",
    geometry=GeometryFamily.ANY,
    fields=(
        Field("name", FieldType.STRING),
        Field("count", FieldType.INTEGER),
        Field("ratio", FieldType.FLOAT),
        Field("ok", FieldType.BOOLEAN),
        Field("built", FieldType.DATE),
        Field("seen", FieldType.DATETIME),
    ),
)
LAMPS = LayerSchema(
    name="lamps",
    title="Lamps",
    geometry=GeometryFamily.POINT,
    fields=(Field("status", FieldType.STRING), Field("watts", FieldType.FLOAT)),
)


# -- backends --------------------------------------------------------------------------------


def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if kind == "gpkg":
        return GeoPackageStore(tmp_path / "store")
    from layers.postgis import PostGISStore

    return PostGISStore(request.getfixturevalue("pg_url"), raster_dir=tmp_path / "rasters")


@pytest.fixture(params=["gpkg", pytest.param("postgis", marks=pytest.mark.postgis)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh, empty store of each backend."""
    s = _open(request.param, tmp_path, request)
    yield s
    s.close()


# -- data ------------------------------------------------------------------------------------


def layer(schema: LayerSchema, geoms: list[Any], ids: list[str], **columns: Any) -> Layer:
    """A layer of `schema` with these geometries, ids and attribute columns (others null)."""
    attrs = empty_attrs(schema, len(ids))
    for name, values in columns.items():
        ftype = FieldType.STRING if name == SOURCE else schema.field(name).type
        attrs[name] = coerce(pd.Series(list(values), dtype=object), ftype)
    return Layer(schema, np.array(ids, dtype=object), np.array(geoms, dtype=object), attrs)


def lamps(ids: list[str], xs: list[float], status: list[str | None], **more: Any) -> Layer:
    points = [shapely.Point(x, 30.35) for x in xs]
    return layer(LAMPS, points, ids, status=status, **more)


def box(x: float, y: float = 30.35) -> Bounds:
    return Bounds(x, y, x, y)


def reading(fid: str, minutes: float, value: Any, prop: str = "status") -> Reading:
    return Reading("lamps", fid, prop, T0 + dt.timedelta(minutes=minutes), value)


def values(lyr: Layer, column: str) -> list[Any]:
    return [None if pd.isna(v) else v for v in lyr.attrs[column].tolist()]


def now_stamp() -> str:
    """Now as the stores write times, a few ms clear of the writes around it."""
    time.sleep(0.005)
    t = utc_stamp(dt.datetime.now(dt.UTC))
    time.sleep(0.005)
    return t


# -- the contract ----------------------------------------------------------------------------


def test_is_a_store(store: Any) -> None:
    assert isinstance(store, Store)
    assert store.revision() == 0 and store.log(0) == [] and store.changes(0) == []
    assert store.layers(ALL) == {} and store.rasters(ALL) == {} and store.history() == []
    assert isinstance(store.location, str) and store.location


def test_every_field_type_null_and_geometry_type_round_trips(store: Any) -> None:
    geoms = [
        shapely.Point(114.3, 30.3),
        shapely.MultiPoint([(114.3, 30.3), (114.31, 30.31)]),
        shapely.LineString([(114.3, 30.3), (114.305, 30.301), (114.31, 30.3)]),
        shapely.MultiLineString([[(0, 0), (1, 1)], [(2, 2), (3, 1.5)]]),
        shapely.Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], holes=[[(1, 1), (2, 1), (2, 2), (1, 2)]]),
        shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)]),
        shapely.Point(0.1 + 0.2, -(2**-30)),
    ]
    ids = [f"k{i}" for i in range(len(geoms))]
    src = layer(
        KINDS,
        geoms,
        ids,
        name=["a", "Ω ünïcode ✓", "", None, 'it\'s "quoted"', "x" * 3000, "tab\tnew\nline"],
        count=[0, -1, 2**53 + 1, None, 7, 2**62, 42],
        ratio=[0.1, -1e300, None, 5e-324, 2.5, 1.0, 3.0],
        ok=[True, False, None, True, False, True, None],
        built=["2020-01-31", None, "1899-12-31", "2026-02-28", "2000-01-01", None, "1970-01-01"],
        seen=[
            "2026-12-07T09:00:00.123Z",
            None,
            "1999-12-31T23:59:59.999Z",
            "2026-12-07T01:00:00.000+0800",
            None,
            "2000-01-01T00:00:00.000Z",
            "2020-02-29T12:00:00.500Z",
        ],
    )
    result = store.write(src, source="kinds.gpkg", user="ann")
    assert (result.added, result.updated, result.unchanged, result.removed) == (7, 0, 0, 0)
    back = store.load("kinds", ALL)
    assert back.ids.tolist() == ids
    assert shapely.equals_exact(back.geometry, src.geometry, tolerance=0).all()
    assert [g.geom_type for g in back.geometry] == [g.geom_type for g in geoms]
    names = KINDS.field_names
    pd.testing.assert_frame_equal(back.attrs[names], src.attrs[names])
    assert values(back, "count")[2] == 2**53 + 1 and values(back, "ratio")[3] == 5e-324
    assert values(back, "seen")[3] == pd.Timestamp("2026-12-06T17:00:00Z")
    assert values(back, "built")[2] == pd.Timestamp("1899-12-31")
    assert values(back, SOURCE) == ["kinds.gpkg"] * 7
    assert values(back, VERSION) == [1] * 7
    assert back.schema == KINDS and back.seq == store.revision()
    # The same again is unchanged, feature by feature.
    again = store.write(src, source="kinds.gpkg", user="ann")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 7)
    # Every value survives into the versions an update keeps.
    changed = src.take(np.arange(7))
    changed.attrs["name"] = coerce(pd.Series(["new"] * 7, dtype=object), FieldType.STRING)
    assert store.write(changed, source="kinds.gpkg", user="ann").updated == 7
    for i, fid in enumerate(ids):
        old, ended = store.versions("kinds", fid, ALL)
        assert len(old) == 1 and ended[0][1:] == ("ann", "upsert from kinds.gpkg")
        assert shapely.equals_exact(old.geometry[0], geoms[i], tolerance=0)
        expected = src.attrs.iloc[[i]].reset_index(drop=True)
        pd.testing.assert_frame_equal(old.attrs[names], expected[names])


def test_missing_and_empty_geometries_round_trip(store: Any) -> None:
    schema = dataclasses.replace(KINDS, name="gaps")
    src = layer(schema, [shapely.Point(1, 2), None, shapely.Point()], ["a", "b", "c"])
    store.write(src, source="s", user="u")
    back = store.load("gaps", ALL)
    assert back.geometry[1] is None
    assert back.geometry[2].is_empty and back.geometry[2].geom_type == "Point"
    assert back.geometry[0].equals(shapely.Point(1, 2))
    # Bounds skip what has none.
    assert store.layers(ALL)["gaps"].bounds == Bounds(1, 2, 1, 2)


def test_upsert_counts_versions_and_times(store: Any) -> None:
    store.write(lamps(["a", "b", "c"], [114.30, 114.31, 114.32], ["on"] * 3), source="f", user="u")
    first = store.load("lamps", ALL)
    # b's status changes, c moves, d is new, a is the same.
    newer = lamps(["a", "b", "c", "d"], [114.30, 114.31, 114.33, 114.34], ["on", "off", "on", "on"])
    r = store.write(newer, source="f", user="u")
    assert (r.added, r.updated, r.unchanged, r.removed) == (1, 2, 1, 0)
    back = store.load("lamps", ALL)
    assert back.ids.tolist() == ["a", "b", "c", "d"]  # updates keep their place
    assert values(back, VERSION) == [1, 2, 2, 1]
    assert values(back, "status") == ["on", "off", "on", "on"]
    assert shapely.get_x(back.geometry).tolist() == [114.30, 114.31, 114.33, 114.34]
    updated = back.attrs[UPDATED]
    assert updated[0] == first.attrs[UPDATED][0]  # untouched
    assert updated[1] > first.attrs[UPDATED][1] and updated[1] == updated[2] == updated[3]
    # A layer lacking some features, in upsert mode, removes nothing.
    r = store.write(lamps(["b"], [114.31], ["off"]), source="f", user="u")
    assert (r.added, r.updated, r.unchanged, r.removed) == (0, 0, 1, 0)
    assert len(store.load("lamps", ALL)) == 4


def test_replace_removes_only_the_sources_absent_features(store: Any) -> None:
    store.write(lamps(["a", "b", "c"], [114.30, 114.31, 114.32], ["on"] * 3), source="f", user="u")
    other = lamps(["x", "y"], [114.40, 114.41], ["on", "on"])
    store.write(other, source="g", user="u")
    r = store.write(lamps(["b"], [114.31], ["on"]), source="f", user="u", mode="replace")
    assert (r.added, r.updated, r.unchanged, r.removed) == (0, 0, 1, 2)
    assert store.load("lamps", ALL).ids.tolist() == ["b", "x", "y"]
    # A feature whose own source differs from the write's is kept as its own.
    mixed = lamps(["z"], [114.5], ["on"], source=["h"])
    store.write(mixed, source="f", user="u", mode="replace")
    back = store.load("lamps", ALL)
    assert back.ids.tolist() == ["x", "y", "z"]  # b (of f) went: the write held only z
    assert values(back, SOURCE) == ["g", "g", "h"]
    with pytest.raises(ValueError):
        store.write(mixed, source="f", user="u", mode="merge")


def test_duplicate_ids_are_refused_and_nothing_lands(store: Any) -> None:
    with pytest.raises(StoreError):
        store.write(lamps(["a", "a"], [1.0, 2.0], ["on", "on"]), source="f", user="u")
    assert store.layers(ALL) == {} and store.revision() == 0


def test_expect_conflicts_change_nothing(store: Any) -> None:
    store.write(lamps(["a", "b"], [114.30, 114.31], ["on", "on"]), source="f", user="u")
    held = store.features("lamps", ["a"], ALL)
    etag = held.etag(0)
    assert etag.startswith('"1-') and etag.endswith('Z"')
    before = (store.revision(), len(store.history()), store.load("lamps", ALL))

    def unchanged() -> None:
        assert (store.revision(), len(store.history())) == before[:2]
        now = store.load("lamps", ALL)
        pd.testing.assert_frame_equal(now.attrs, before[2].attrs)

    edit = lamps(["a"], [114.30], ["fault"])
    with pytest.raises(PreconditionFailed):
        store.write(edit, source="api", user="u", expect={"a": '"7-2020-01-01T00:00:00.000Z"'})
    unchanged()
    with pytest.raises(PreconditionFailed):  # "a" exists: a create must not overwrite it
        store.write(edit, source="api", user="u", expect={"a": None})
    unchanged()
    with pytest.raises(PreconditionFailed):  # an id that is not there is not in any state
        store.write(edit, source="api", user="u", expect={"zz": etag})
    unchanged()
    stale = '"1-2020-01-01T00:00:00.000Z"'
    with pytest.raises(PreconditionFailed):
        store.delete_features("lamps", ["b"], user="u", source="api", expect={"b": stale})
    unchanged()
    r = store.write(edit, source="api", user="u", expect={"a": etag, "new": None})
    assert r.updated == 1
    now = store.features("lamps", ["a"], ALL)
    assert now.etag(0) != etag and values(now, VERSION) == [2]
    with pytest.raises(PreconditionFailed):  # the ETag from before the edit is stale
        store.write(lamps(["a"], [114.30], ["off"]), source="api", user="u", expect={"a": etag})
    created = store.write(lamps(["n"], [114.9], ["on"]), source="api", user="u", expect={"n": None})
    assert created.added == 1


def test_delete_features(store: Any) -> None:
    store.write(lamps(["a", "b", "c"], [114.30, 114.31, 114.32], ["on"] * 3), source="f", user="u")
    seq = store.revision()
    assert store.delete_features("lamps", ["c", "zz", "a", "c"], user="eve", source="api") == 2
    assert store.load("lamps", ALL).ids.tolist() == ["b"]
    gone = store.changes(seq)
    assert [(c.seq, c.id, c.kind, c.old, c.new) for c in gone] == [
        (seq + 1, "a", ChangeKind.REMOVED, box(114.30), None),
        (seq + 2, "c", ChangeKind.REMOVED, box(114.32), None),
    ]
    assert all(c.user == "eve" and c.why == "delete by api" for c in gone)
    assert store.delete_features("lamps", ["zz"], user="eve", source="api") == 0
    h = store.history("lamps")[0]
    assert (h.mode, h.removed, h.user, h.source) == ("delete", 0, "eve", "api")
    assert store.history("lamps")[1].removed == 2
    with pytest.raises(UnknownCollection):
        store.delete_features("nothing", ["a"], user="u", source="api")
    # A deleted feature's last version is kept, ended by the deletion.
    old, ended = store.versions("lamps", "a", ALL)
    assert values(old, "status") == ["on"] and ended[0][1:] == ("eve", "delete by api")


def test_drop(store: Any) -> None:
    store.write(lamps(["a"], [114.30], ["on"]), source="f", user="u")
    seq = store.revision()
    store.drop("lamps")
    assert "lamps" not in store.layers(ALL)
    with pytest.raises(UnknownCollection):
        store.load("lamps", ALL)
    (entry,) = store.changes(seq)
    assert (entry.seq, entry.kind, entry.id, entry.user, entry.why) == (
        seq + 1,
        ChangeKind.LAYER,
        None,
        "twin",
        "dropped",
    )
    with pytest.raises(UnknownCollection):
        store.drop("lamps")
    # The name is free again, for another schema.
    store.write(layer(KINDS, [shapely.Point(0, 0)], ["k"], name=["x"]), source="s", user="u")
    assert store.load("kinds", ALL).ids.tolist() == ["k"]


def test_scope_hides_classified_layers(store: Any) -> None:
    for level in (Access.PUBLIC, Access.INTERNAL, Access.RESTRICTED):
        schema = dataclasses.replace(
            LAMPS, name=f"l_{level.label}", title=level.label, classification=level
        )
        store.write(
            dataclasses.replace(lamps(["a"], [114.3], ["on"]), schema=schema), source="s", user="u"
        )
    seen = {scope: sorted(store.layers(scope)) for scope in Access}
    assert seen == {
        Access.PUBLIC: ["l_public"],
        Access.INTERNAL: ["l_internal", "l_public"],
        Access.RESTRICTED: ["l_internal", "l_public", "l_restricted"],
    }
    for call in (
        lambda: store.load("l_restricted", Access.INTERNAL),
        lambda: store.schema("l_internal", Access.PUBLIC),
        lambda: store.features("l_restricted", ["a"], Access.PUBLIC),
        lambda: store.versions("l_restricted", "a", Access.INTERNAL),
        lambda: store.as_of("l_internal", now_stamp(), Access.PUBLIC),
        lambda: store.load("no_such", Access.RESTRICTED),
    ):
        with pytest.raises(UnknownCollection):
            call()
    assert store.schema("l_restricted", ALL).classification is Access.RESTRICTED
    assert len(store.load("l_internal", Access.INTERNAL)) == 1


def test_extras_are_a_union_over_writes(store: Any) -> None:
    with_colour = LAMPS.with_extras([Field("colour", FieldType.STRING, extra=True)])
    store.write(
        layer(with_colour, [shapely.Point(1, 1)], ["a"], status=["on"], colour=["red"]),
        source="f",
        user="u",
        meta={"licence": "CC-BY"},
    )
    with_rank = LAMPS.with_extras([Field("rank", FieldType.INTEGER, extra=True)])
    store.write(
        layer(with_rank, [shapely.Point(2, 2)], ["b"], status=["off"], rank=[3]),
        source="g",
        user="u",
        meta={"attribution": "City"},
    )
    schema = store.schema("lamps", ALL)
    assert [f.name for f in schema.extras] == ["rank", "colour"]
    back = store.load("lamps", ALL)
    assert values(back, "colour") == ["red", None] and values(back, "rank") == [None, 3]
    assert store.layers(ALL)["lamps"].meta == {"licence": "CC-BY", "attribution": "City"}
    assert store.meta("lamps", ALL) == {"licence": "CC-BY", "attribution": "City"}
    # An extra whose values grew (integer -> float) is retyped, its values kept.
    wider = LAMPS.with_extras([Field("rank", FieldType.FLOAT, extra=True)])
    store.write(
        layer(wider, [shapely.Point(3, 3)], ["c"], status=["on"], rank=[2.5]), source="g", user="u"
    )
    back = store.load("lamps", ALL)
    assert store.schema("lamps", ALL).field("rank").type is FieldType.FLOAT
    assert values(back, "rank") == [None, 3.0, 2.5] and values(back, "colour") == [
        "red",
        None,
        None,
    ]


def test_import_history(store: Any) -> None:
    store.write(
        lamps(["a", "b"], [1.0, 2.0], ["on", "on"]),
        source="a.geojson",
        user="alice",
        details={"rejected": 2, "repaired": 1, "file": "a.geojson"},
    )
    store.write(
        lamps(["a", "b", "c"], [1.0, 2.0, 3.0], ["on", "off", "on"]), source="b", user="bob"
    )
    store.write(layer(KINDS, [shapely.Point(0, 0)], ["k"]), source="k", user="kim")
    h = store.history()
    assert [(r.collection, r.user, r.source, r.mode) for r in h] == [
        ("kinds", "kim", "k", "upsert"),
        ("lamps", "bob", "b", "upsert"),
        ("lamps", "alice", "a.geojson", "upsert"),
    ]
    assert [(r.added, r.updated, r.unchanged, r.removed) for r in h] == [
        (1, 0, 0, 0),
        (1, 1, 1, 0),
        (2, 0, 0, 0),
    ]
    assert (h[2].rejected, h[2].repaired, h[2].details) == (2, 1, {"file": "a.geojson"})
    assert (h[1].rejected, h[1].details) == (0, {})
    assert h[0].time >= h[1].time >= h[2].time and h[0].time.tzinfo is not None
    assert [r.user for r in store.history("lamps")] == ["bob", "alice"]
    assert store.history("nothing") == []


def test_the_change_log(store: Any) -> None:
    store.write(
        lamps(["a", "b", "c"], [114.30, 114.31, 114.32], ["on"] * 3), source="f", user="ann"
    )
    (made,) = store.log(0)
    assert isinstance(made, Change)
    assert (made.seq, made.kind, made.id, made.old, made.new) == (
        1,
        ChangeKind.LAYER,
        None,
        None,
        None,
    )
    assert made.user == "ann" and made.why == "upsert from f" and made.time.tzinfo is not None
    # b moves and fails, c stays, d is new; replace removes a.
    second = lamps(["b", "c", "d"], [114.35, 114.32, 114.40], ["fault", "on", "on"])
    store.write(second, source="f", user="bob", mode="replace")
    got = store.changes(1)
    assert [(c.seq, c.id, c.kind) for c in got] == [
        (2, "d", ChangeKind.ADDED),
        (3, "b", ChangeKind.UPDATED),
        (4, "a", ChangeKind.REMOVED),
    ]
    assert [(c.old, c.new) for c in got] == [
        (None, box(114.40)),
        (box(114.31), box(114.35)),
        (box(114.30), None),
    ]
    assert [c.properties for c in got] == [None, ("geometry", "status"), None]
    assert all(c.user == "bob" and c.why == "replace from f" for c in got)
    assert store.log(1) == got and store.revision() == 4
    # Nothing new: no entry.
    store.write(second, source="f", user="bob", mode="replace")
    assert store.revision() == 4
    # A value change alone keeps the box.
    store.write(lamps(["c"], [114.32], ["off"]), source="f", user="bob")
    (only,) = store.changes(4)
    assert (only.seq, only.old, only.new, only.properties) == (
        5,
        box(114.32),
        box(114.32),
        ("status",),
    )
    # A batch of readings: one run of consecutive entries, first met first.
    done = store.observe(
        [reading("c", 1, "on"), reading("b", 1, "on"), reading("c", 2, 75.5, "watts")],
        user="gw",
    )
    assert (done.changed, done.revision) == (2, 7) and store.revision() == 7
    (run,) = store.log(5)
    assert isinstance(run, StateRun)
    assert (run.seq, run.collection, run.ids, run.user) == (6, "lamps", ["c", "b"], "gw")
    assert run.sets == [{"status": "on", "watts": 75.5}, {"status": "on"}]
    assert store.log(6) == [run.after(6)] and store.log(6)[0].ids == ["b"]
    entries = store.changes(5)
    assert [(c.seq, c.id, c.kind, c.old, c.new) for c in entries] == [
        (6, "c", ChangeKind.UPDATED, box(114.32), box(114.32)),
        (7, "b", ChangeKind.UPDATED, box(114.35), box(114.35)),
    ]
    assert entries[0].state == {"status": "on", "watts": 75.5}
    assert entries[0].properties == ("status", "watts") and entries[0].why == "reading"
    # Entries after it number on; paging by `limit` and `since` leaves no gap.
    store.write(lamps(["e"], [114.5], ["on"]), source="f", user="bob")
    seqs = [c.seq for c in store.changes(0)]
    assert seqs == list(range(1, 9)) == list(range(1, store.revision() + 1))
    paged: list[int] = []
    since = 0
    while since < store.revision():
        part = store.changes(since, limit=3)
        paged += [c.seq for c in part]
        since = part[-1].seq
    assert paged == seqs
    assert store.changes(8) == [] and store.log(100) == []


def test_a_large_write_is_one_whole_layer_entry(store: Any) -> None:
    from layers.gpkg import FEED_FEATURES_MAX

    n = FEED_FEATURES_MAX + 1
    xs = np.linspace(114.3, 114.4, n).tolist()
    ids = [f"l{i}" for i in range(n)]
    store.write(lamps(ids, xs, ["on"] * n), source="s", user="u")
    seq = store.revision()
    r = store.write(lamps(ids, xs, ["off"] * n), source="s", user="u")
    assert r.updated == n
    (entry,) = store.changes(seq)
    assert entry.kind is ChangeKind.LAYER and entry.seq == seq + 1
    assert (store.load("lamps", ALL).attrs[VERSION] == 2).all()


def test_readings_latest_by_time_wins_and_late_ones_are_history(store: Any) -> None:
    store.write(
        lamps(["L1", "L2"], [114.30, 114.31], ["on", "on"], watts=[60, 60]), source="f", user="u"
    )
    etag = store.features("lamps", ["L1"], ALL).etag(0)
    assert store.observe([reading("L1", 10, "fault")], user="gw").changed == 1
    assert store.observe([reading("L1", 5, "on")], user="gw").changed == 0  # late
    assert store.observe([reading("L1", 10, "off")], user="gw").changed == 1  # same time: newer
    done = store.observe(
        [reading("L2", 3, "fault"), reading("L2", 1, "off"), reading("L1", 30, 75.5, "watts")],
        user="gw",
    )
    assert done.changed == 2 and done.revision == store.revision() == 5
    assert store.observe([], user="gw").revision == 5
    served = store.load("lamps", ALL)
    assert values(served, "status") == ["off", "fault"]
    assert values(served, "watts") == [75.5, 60.0]
    assert values(served, VERSION) == [4, 2]  # import + three changes; import + one
    assert store.features("lamps", ["L1"], ALL).etag(0) != etag
    # A reading of a feature that is not there changes no row but is kept.
    assert store.observe([reading("ghost", 1, "on")], user="gw").changed == 1
    assert len(store.load("lamps", ALL)) == 2
    # History: every reading, oldest first by its time.
    page, total = store.readings("lamps", "L1")
    assert total == 4
    assert [(p, v) for p, _, v, _, _ in page] == [
        ("status", "on"),
        ("status", "fault"),
        ("status", "off"),
        ("watts", 75.5),
    ]
    assert [t for _, t, _, _, _ in page] == [
        "2026-12-07T09:05:00.000Z",
        "2026-12-07T09:10:00.000Z",
        "2026-12-07T09:10:00.000Z",
        "2026-12-07T09:30:00.000Z",
    ]
    assert all(u == "gw" and rc.endswith("Z") for _, _, _, rc, u in page)
    assert store.readings("lamps", "L1", limit=2, offset=1) == (page[1:3], 4)
    assert store.readings("lamps", "L1", limit=0) == ([], 4)
    assert store.readings("lamps", "L1", hidden=["watts"]) == (page[:3], 3)
    assert store.readings("lamps", "L1", hidden=["status", "watts"]) == ([], 0)
    window = store.readings(
        "lamps", "L1", start="2026-12-07T09:06:00.000Z", end="2026-12-07T09:10:00.000Z"
    )
    assert window == (page[1:3], 2)
    assert store.readings("lamps", "nobody") == ([], 0)
    # Folding in leaves every answer as it was; a second settle has nothing to do.
    store.settle()
    assert store.settle() == 0
    assert store.readings("lamps", "L1") == (page, 4)
    assert values(store.load("lamps", ALL), "status") == ["off", "fault"]


@pytest.mark.parametrize("columns", [False, True], ids=["readings", "columns"])
def test_a_large_batch_out_of_time_order_keeps_each_reading_and_the_newest(
    store: Any, columns: bool
) -> None:
    ids = [f"L{i}" for i in range(20)]
    store.write(
        lamps(ids, [114.30 + i * 1e-3 for i in range(20)], ["on"] * 20), source="f", user="u"
    )
    # A state set before, newer than some of the batch's readings of L0..L4.
    assert store.observe([reading(f"L{i}", 50, "old") for i in range(5)], user="gw").changed == 5
    before = store.revision()
    rng = np.random.default_rng(4)
    batch = [
        reading(
            str(rng.choice(ids)),
            float(rng.integers(0, 100)) / 2,  # ties in time, a few a lamp
            str(rng.choice(["on", "off", "a, b"])) if k % 3 else float(rng.uniform(0, 100)),
            "status" if k % 3 else "watts",
        )
        for k in range(700)  # past one INSERT's worth of rows in the embedded store
    ]
    done = store.observe(Readings.of(batch) if columns else batch, user="gw")
    # The reference: per lamp and property the newest by time (the later on a tie), unless
    # older than the state held; the features in the order first met.
    held = {(f"L{i}", "status"): T0 + dt.timedelta(minutes=50) for i in range(5)}
    newest: dict[tuple[str, str], Reading] = {}
    for r in batch:
        key = (r.id, r.property)
        if key not in newest or r.time >= newest[key].time:
            newest[key] = r
    sets: dict[str, dict[str, Any]] = {}
    for (fid, prop), r in newest.items():
        if held.get((fid, prop), r.time) <= r.time:
            sets.setdefault(fid, {})[prop] = r.value
    assert done.changed == len(sets) and done.revision == before + len(sets)
    entries = store.changes(before)
    assert [(c.seq, c.id, c.state) for c in entries] == [
        (before + 1 + k, fid, s) for k, (fid, s) in enumerate(sets.items())
    ]
    served = store.load("lamps", ALL)
    state = {(fid, "status"): "on" for fid in ids} | {(f"L{i}", "status"): "old" for i in range(5)}
    state |= {(fid, "watts"): None for fid in ids}
    state |= {(fid, p): v for fid, s in sets.items() for p, v in s.items()}
    assert values(served, "status") == [state[(fid, "status")] for fid in ids]
    assert values(served, "watts") == [state[(fid, "watts")] for fid in ids]
    # Every reading in the history, by time, in the order of the batch on a tie.
    for fid in ids:
        page, total = store.readings("lamps", fid)
        mine = [r for r in batch if r.id == fid]
        mine.sort(key=lambda r: r.time)  # stable: the batch's order on a tie
        if fid in {f"L{i}" for i in range(5)}:
            old = [("status", utc_stamp(T0 + dt.timedelta(minutes=50)), "old")]
            # The earlier batch's reading, before this one's of the same time.
            at = sum(r.time <= T0 + dt.timedelta(minutes=50) for r in mine)
            at -= sum(r.time == T0 + dt.timedelta(minutes=50) for r in mine)
        else:
            old, at = [], 0
        want = [(r.property, utc_stamp(r.time), r.value) for r in mine]
        want[at:at] = old
        assert total == len(want)
        assert [(p, t, v) for p, t, v, _, _ in page] == want


def test_settle_counts_the_readings_it_folds(store: Any) -> None:
    store.write(lamps(["L1"], [114.3], ["on"]), source="f", user="u")
    assert store.settle() == 0
    store.observe([reading("L1", 1, "off"), reading("L1", 2, "on")], user="gw")
    store.observe([reading("L1", 0, "fault")], user="gw")
    assert store.settle() == 3 and store.settle() == 0


def test_an_import_does_not_undo_state_a_reading_set(store: Any) -> None:
    """The same file again is unchanged: a reading's state stays over it."""
    store.write(lamps(["L1"], [114.3], ["on"]), source="f", user="u")
    store.observe([reading("L1", 1, "fault")], user="gw")
    r = store.write(lamps(["L1"], [114.3], ["on"]), source="f", user="u")
    assert (r.updated, r.unchanged) == (0, 1)
    assert values(store.load("lamps", ALL), "status") == ["fault"]
    # A removed feature takes no state with it.
    store.delete_features("lamps", ["L1"], user="u", source="api")
    store.write(lamps(["L1"], [114.3], ["on"]), source="f", user="u")
    assert values(store.load("lamps", ALL), "status") == ["on"]


def test_versions_and_as_of_before_and_after_changes(store: Any) -> None:
    before = now_stamp()
    store.write(lamps(["a", "b", "c"], [114.30, 114.31, 114.32], ["on"] * 3), source="s", user="u")
    first = now_stamp()
    snapshot = store.load("lamps", ALL)
    store.write(lamps(["b", "d"], [114.35, 114.40], ["fault", "on"]), source="s", user="ann")
    store.delete_features("lamps", ["c"], user="bob", source="api")
    second = now_stamp()
    store.observe([reading("a", 1, "off")], user="sensor")
    third = now_stamp()
    edited = store.features("lamps", ["a"], ALL)
    edited.attrs.loc[0, "watts"] = 75.0
    store.write(edited, source="api", user="eve", expect={"a": edited.etag(0)})
    last = now_stamp()

    def same(a: Layer, b: Layer) -> None:
        assert a.ids.tolist() == b.ids.tolist()
        assert shapely.equals_exact(a.geometry, b.geometry, tolerance=0).all()
        pd.testing.assert_frame_equal(a.attrs, b.attrs)

    assert len(store.as_of("lamps", before, ALL)) == 0
    same(store.as_of("lamps", first, ALL), snapshot)
    same(store.as_of("lamps", last, ALL), store.load("lamps", ALL))
    at_second = store.as_of("lamps", second, ALL)
    assert at_second.ids.tolist() == ["a", "b", "d"]
    assert values(at_second, "status") == ["on", "fault", "on"]
    at_third = store.as_of("lamps", third, ALL)
    assert values(at_third, "status") == ["off", "fault", "on"]
    assert values(at_third, "watts") == [None, None, None]
    assert values(at_third, VERSION) == [2, 2, 1]
    assert values(store.as_of("lamps", last, ALL, ids=["a"]), "watts") == [75.0]
    assert values(store.as_of("lamps", first, ALL, ids=["b", "c"]), "status") == ["on", "on"]
    assert store.as_of("lamps", second, ALL, ids=["c"]).ids.tolist() == []
    # Earlier versions: b's ended by ann's import, c's by bob's deletion, a's by a reading
    # then by eve's edit.
    old_b, ended_b = store.versions("lamps", "b", ALL)
    assert values(old_b, "status") == ["on"] and shapely.get_x(old_b.geometry[0]) == 114.31
    ((valid_to, user, why),) = ended_b
    assert first < valid_to < second and (user, why) == ("ann", "upsert from s")
    assert store.versions("lamps", "c", ALL)[1][0][1:] == ("bob", "delete by api")
    old_a, ended_a = store.versions("lamps", "a", ALL)
    assert values(old_a, "status") == ["on", "off"] and values(old_a, VERSION) == [1, 2]
    assert [e[1:] for e in ended_a] == [("sensor", "reading"), ("eve", "upsert from api")]
    began = [utc_stamp(t) for t in old_a.attrs[UPDATED]]
    assert ended_a[0][0] == began[1] and second < ended_a[0][0] < third < ended_a[1][0] < last
    assert old_a.ids.tolist() == ["a", "a"]
    assert store.versions("lamps", "d", ALL)[1] == []
    assert len(store.versions("lamps", "never", ALL)[0]) == 0


def test_features_by_ids(store: Any) -> None:
    store.write(lamps(["a", "b", "c", "d"], [1.0, 2.0, 3.0, 4.0], ["on"] * 4), source="f", user="u")
    store.write(lamps(["b"], [2.5], ["off"]), source="f", user="u")  # keeps its place
    got = store.features("lamps", ["d", "zz", "b", "d"], ALL)
    assert got.ids.tolist() == ["b", "d"]  # stored order, missing ignored, once each
    assert values(got, "status") == ["off", "on"] and values(got, VERSION) == [2, 1]
    assert len(store.features("lamps", [], ALL)) == 0
    assert got.schema == LAMPS


def test_a_window_holds_every_feature_whose_box_meets_it(store: Any) -> None:
    lines = LayerSchema(name="cables", title="Cables", geometry=GeometryFamily.ANY, fields=())
    rng = np.random.default_rng(7)
    n = 300
    x0 = 114.2 + rng.random(n) * 0.2
    y0 = 30.3 + rng.random(n) * 0.2
    geoms = list(
        shapely.linestrings(
            np.stack([np.stack([x0, y0], 1), np.stack([x0 + 0.01, y0 + 0.003], 1)], 1)
        )
    )
    geoms[5] = None  # no geometry: in no window
    ids = [f"c{i:03d}" for i in range(n)]
    store.write(layer(lines, geoms, ids), source="f", user="u")
    store.write(layer(lines, [shapely.Point(114.3, 30.4)], ["c007"]), source="f", user="u")
    geoms[7] = shapely.Point(114.3, 30.4)  # moved: keeps its place in the stored order
    whole = store.load("cables", ALL)
    for bbox in [
        (114.25, 30.35, 114.3, 30.4),
        (114.0, 30.0, 114.1, 30.1),
        (114.3, 30.4, 114.3, 30.4),
    ]:
        got = store.window("cables", Bounds(*bbox), ALL)
        # The oracle: shapely's own box test over every stored feature.
        meets = [
            g is not None
            and shapely.intersects(shapely.box(*shapely.bounds(g)), shapely.box(*bbox))
            for g in geoms
        ]
        assert got.ids.tolist() == [i for i, m in zip(ids, meets, strict=True) if m]
        rows = whole.row_of.get_indexer(got.ids.tolist())
        assert got.geometry.tolist() == whole.geometry[rows].tolist()
        assert got.attrs.reset_index(drop=True).equals(
            whole.attrs.iloc[rows].reset_index(drop=True)
        )
    with pytest.raises(UnknownCollection):
        store.window("nothing", Bounds(0, 0, 1, 1), ALL)
    chunks = list(store.chunks("cables", ALL, 64))
    assert [len(c) for c in chunks] == [64, 64, 64, 64, 44]
    assert np.concatenate([c.ids for c in chunks]).tolist() == whole.ids.tolist()
    assert chunks[1].geometry.tolist() == whole.geometry[64:128].tolist()
    for limit, offset in [(10, 0), (10, 295), (7, 100), (5, 400)]:
        got, count = store.page("cables", ALL, limit, offset)
        assert count == n
        assert got.ids.tolist() == whole.ids[offset : offset + limit].tolist()
        assert got.geometry.tolist() == whole.geometry[offset : offset + limit].tolist()
    boxes = store.boxes("cables", ["c001", "zz", "c005", "c007"])
    assert boxes[0].tolist() == list(shapely.bounds(geoms[1]))
    assert np.isnan(boxes[1]).all() and np.isnan(boxes[2]).all()
    assert boxes[3].tolist() == [114.3, 30.4, 114.3, 30.4]


def test_the_temporal_extent_follows_the_features_lives(store: Any) -> None:
    assets = LayerSchema(
        name="assets",
        title="Assets",
        geometry=GeometryFamily.POINT,
        fields=(
            Field("install_year", FieldType.INTEGER),
            Field("removed_date", FieldType.DATE),
            Field("status", FieldType.STRING),
        ),
    )
    pts = [shapely.Point(114.3, 30.3)] * 4
    ids = ["a", "b", "c", "d"]
    built = [1990, 2004, 1500, None]  # 1500: outside what the rules read as a year
    removed = [dt.date(2010, 5, 1), dt.date(2021, 3, 9), None, None]
    status = ["removed", "removed", "in_service", None]
    store.write(
        layer(assets, pts, ids, install_year=built, removed_date=removed, status=status),
        source="f",
        user="u",
    )
    # Hand-worked: life from 1990-01-01 to the last millisecond of 2021-03-09; c has no known
    # start, d none at all, so no life is open.
    assert store.temporal("assets") == ["1990-01-01T00:00:00Z", "2021-03-09T23:59:59.999000Z"]
    # A removed asset without a removal date ended at its last change; one in service with a
    # known start keeps the extent open.
    store.write(
        layer(assets, pts[:2], ["e", "f"], install_year=[1980, 2001], status=["abandoned", "ok"]),
        source="f",
        user="u",
    )
    assert store.temporal("assets") == ["1980-01-01T00:00:00Z", None]
    assert store.temporal("assets") == temporal_extent(store.load("assets", ALL))
    sites = LayerSchema(
        name="works",
        title="Works",
        geometry=GeometryFamily.POINT,
        fields=(Field("start_date", FieldType.DATETIME), Field("end_date", FieldType.DATE)),
    )
    t = pd.Timestamp("2026-03-01T08:30:00Z")
    store.write(
        layer(
            sites,
            pts[:2],
            ["w1", "w2"],
            start_date=[t, None],
            end_date=[dt.date(2026, 9, 30), None],
        ),
        source="f",
        user="u",
    )
    assert store.temporal("works") == ["2026-03-01T08:30:00Z", "2026-09-30T23:59:59.999000Z"]
    assert store.temporal("works") == temporal_extent(store.load("works", ALL))
    # No life recorded: the times of the features' last changes.
    before = now_stamp()
    store.write(lamps(["x"], [1.0], ["on"]), source="f", user="u")
    first, last = store.temporal("lamps")
    assert first == last and first[:19] >= before[:19]
    assert store.temporal("lamps") == temporal_extent(store.load("lamps", ALL))


def test_layer_info(store: Any) -> None:
    store.write(lamps(["a", "b"], [114.30, 114.32], ["on", "on"]), source="f", user="u")
    store.register(dataclasses.replace(KINDS, name="empty"), meta={"licence": "x"})
    info = store.layers(ALL)
    assert sorted(info) == ["empty", "lamps"]
    assert info["lamps"].count == 2 and info["lamps"].bounds == Bounds(114.30, 30.35, 114.32, 30.35)
    assert info["lamps"].last_change is not None and info["lamps"].last_change.endswith("Z")
    assert info["empty"].count == 0 and info["empty"].bounds is None
    assert info["empty"].meta == {"licence": "x"} and len(store.load("empty", ALL)) == 0
    store.delete_features("lamps", ["b"], user="u", source="api")
    assert store.layers(ALL)["lamps"].bounds == Bounds(114.30, 30.35, 114.30, 30.35)


def test_files_are_kept_with_their_layer_in_its_write(store: Any) -> None:
    graph = "<graphml>路网</graphml>".encode()
    store.write(lamps(["a"], [1.0], ["on"]), source="f", user="u", files={"g/a.xml": graph})
    assert store.files("lamps") == {"g/a.xml": graph} and store.files("other") == {}
    # A write that does not land keeps nothing of its files either.
    with pytest.raises(PreconditionFailed):
        store.write(
            lamps(["a"], [2.0], ["off"]),
            source="f",
            user="u",
            expect={"a": None},
            files={"g/a.xml": b"new", "g/b.xml": b"b"},
        )
    assert store.files("lamps") == {"g/a.xml": graph}
    # Replaced by name, others kept; dropped with the layer.
    store.write(lamps(["b"], [2.0], ["on"]), source="f", user="u", files={"g/a.xml": b"\x00two"})
    store.write(lamps(["c"], [3.0], ["on"]), source="f", user="u", files={"g/b.xml": b"b"})
    assert store.files("lamps") == {"g/a.xml": b"\x00two", "g/b.xml": b"b"}
    store.drop("lamps")
    assert store.files("lamps") == {}


def _tiny_raster(path: Path, value: float) -> Path:
    """A 4 x 3 cell GeoTIFF in lon/lat holding `value` everywhere."""
    import rasterio
    from affine import Affine

    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=3, count=1, dtype="float32",
        crs="EPSG:4326", transform=Affine(0.01, 0, 114.3, 0, -0.01, 30.5),
    ) as ds:  # fmt: skip
        ds.write(np.full((3, 4), value, dtype=np.float32), 1)
    return path


def test_rasters(store: Any, tmp_path: Path) -> None:
    (tmp_path / "made").mkdir()
    cog = _tiny_raster(tmp_path / "made" / "dem.tif", 1.0)
    info = store.put_raster(
        RasterInfo("dem", "Terrain", cog, Access.INTERNAL, {"bands": 1}), user="u", source="dem.asc"
    )
    assert info.path.read_bytes() == cog.read_bytes() and info.path != cog
    assert info.bounds == pytest.approx((114.3, 30.47, 114.34, 30.5), abs=1e-12)
    assert store.rasters(Access.PUBLIC) == {}
    (got,) = store.rasters(Access.INTERNAL).values()
    assert (got.name, got.title, got.path, got.classification, got.meta, got.bounds) == (
        "dem",
        "Terrain",
        info.path,
        Access.INTERNAL,
        {"bands": 1},
        info.bounds,
    )
    assert "dem" not in store.layers(ALL)
    (entry,) = store.changes(0)
    assert entry.kind is ChangeKind.LAYER and entry.collection == "dem"
    second = _tiny_raster(tmp_path / "made" / "second.tif", 2.0)
    again = store.put_raster(
        RasterInfo("dem", "Terrain 2", second, Access.PUBLIC), user="u", source="b"
    )
    assert store.rasters(Access.PUBLIC)["dem"].path.read_bytes() == second.read_bytes()
    assert again.version != info.version  # what was read of the first is not taken for it
    # A file GDAL cannot read as a raster is refused; the raster in place stays.
    fake = tmp_path / "made" / "fake.tif"
    fake.write_bytes(b"II*\x00not really a tiff")
    with pytest.raises(StoreError, match="cannot read the raster"):
        store.put_raster(RasterInfo("dem", "Fake", fake, Access.PUBLIC), user="u", source="c")
    assert store.rasters(Access.PUBLIC)["dem"].path.read_bytes() == second.read_bytes()
    assert [r.source for r in store.history("dem")] == ["b", "dem.asc"]
    h = store.history("dem")
    assert [(r.mode, r.added, r.updated) for r in h] == [("raster", 0, 1), ("raster", 1, 0)]
    store.write(lamps(["a"], [1.0], ["on"]), source="f", user="u")
    with pytest.raises(StoreError):
        store.put_raster(RasterInfo("lamps", "x", cog), user="u", source="x")
    with pytest.raises(StoreError):
        store.write(
            dataclasses.replace(
                lamps(["a"], [1.0], ["on"]), schema=dataclasses.replace(LAMPS, name="dem")
            ),
            source="f",
            user="u",
        )
    store.drop("dem")
    assert store.rasters(ALL) == {} and not info.path.exists()


def test_versions_of_a_re_added_id_are_oldest_first(store: Any) -> None:
    """A feature removed and added again lists its versions in the order they ended (not by
    version number: its second life starts at 1 again)."""
    store.write(lamps(["a"], [1.0], ["on"]), source="f", user="u")
    store.write(lamps(["a"], [1.0], ["off"]), source="f", user="u")  # version 2
    store.delete_features("lamps", ["a"], user="u", source="api")
    store.write(lamps(["a"], [2.0], ["new"]), source="f", user="u")  # version 1 again
    store.write(lamps(["a"], [2.0], ["newer"]), source="f", user="u")
    old, ended = store.versions("lamps", "a", ALL)
    assert values(old, "status") == ["on", "off", "new"]
    assert values(old, VERSION) == [1, 2, 1]
    assert [e[2] for e in ended] == ["upsert from f", "delete by api", "upsert from f"]


def test_a_reading_of_an_absent_feature_sets_nothing_on_a_later_one(store: Any) -> None:
    """The state of a reading of an id that is not there is not laid over a feature added
    later under that id."""
    store.write(lamps(["a"], [1.0], ["on"]), source="f", user="u")
    assert store.observe([reading("b", 1, "fault")], user="gw").changed == 1
    store.write(lamps(["b"], [2.0], ["on"]), source="f", user="u")
    b = store.features("lamps", ["b"], ALL)
    assert values(b, "status") == ["on"] and values(b, VERSION) == [1]


def test_an_update_names_what_changed_from_the_feature_as_served(store: Any) -> None:
    """An update is compared with the feature as served (the state a reading set since laid
    over it): here `status` went from fault back to on, and `watts` changed."""
    store.write(lamps(["a"], [1.0], ["on"], watts=[60]), source="f", user="u")
    store.observe([reading("a", 1, "fault")], user="gw")
    seq = store.revision()
    store.write(lamps(["a"], [1.0], ["on"], watts=[75]), source="f", user="u")
    (entry,) = store.changes(seq)
    assert entry.properties == ("status", "watts")


# -- both at once ----------------------------------------------------------------------------


def _answers(store: Any) -> dict[str, Any]:
    """Every answer of a store worth comparing with another's (times left out: the two
    stores wrote at different instants)."""

    def frame(lyr: Layer) -> dict[str, Any]:
        return {
            "ids": lyr.ids.tolist(),
            "wkb": [None if g is None else shapely.to_wkb(g) for g in lyr.geometry],
            "attrs": lyr.attrs.drop(columns=[UPDATED]).to_dict("list"),
            "schema": lyr.schema,
        }

    def entry(c: Change | StateRun) -> tuple:
        if isinstance(c, StateRun):
            return (c.seq, c.collection, c.ids, c.sets, c.user)
        return (c.seq, c.collection, c.id, c.kind, c.old, c.new, c.user, c.why)

    out: dict[str, Any] = {
        "layers": {n: (i.schema, i.count, i.bounds, i.meta) for n, i in store.layers(ALL).items()},
        "log": [entry(c) for c in store.log(0)],
        "changes": [entry(c) for c in store.changes(0)],
        "properties": [c.properties for c in store.changes(0)],
        "history": [dataclasses.replace(r, time=T0) for r in store.history()],
        "revision": store.revision(),
    }
    for name in store.layers(ALL):
        lyr = store.load(name, ALL)
        out[f"load {name}"] = frame(lyr)
        for fid in [*lyr.ids.tolist(), "gone1", "gone2"]:
            old, ended = store.versions(name, fid, ALL)
            # As a set: the embedded store lists a feature's versions by version number, not
            # oldest first, once it was removed and added again (`test_versions_of_a_re_added_id`).
            rows = frame(old)
            out[f"versions {name} {fid}"] = sorted(
                (repr(rows["wkb"][i]), repr([v[i] for v in rows["attrs"].values()]), ended[i][1:])
                for i in range(len(old))
            )
            page, total = store.readings(name, fid)
            out[f"readings {name} {fid}"] = ([(p, t, v, u) for p, t, v, _, u in page], total)
    return out


@pytest.mark.postgis
def test_both_backends_answer_alike(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    stores = [_open("gpkg", tmp_path, request), _open("postgis", tmp_path, request)]
    rng = np.random.default_rng(7)
    results: list[list[Any]] = [[], []]
    for step in range(6):
        n = 30
        ids = [f"p{i}" for i in rng.choice(60, n, replace=False)]
        xs = (114.3 + rng.random(n) * 0.01).round(6).tolist()
        status = rng.choice(np.array(["on", "off", None], dtype=object), n).tolist()
        watts = rng.choice(np.array([40.0, 60.0, None], dtype=object), n).tolist()
        batch = lamps(ids, xs, status, watts=watts)
        mode = "replace" if step % 3 == 2 else "upsert"
        gone = [f"p{i}" for i in rng.choice(60, 3, replace=False)] + ["gone1", "gone2"]
        written = [s.write(batch, source=f"src{step % 2}", user="u", mode=mode) for s in stores]
        # Readings of features that are there (see `test_a_reading_of_an_absent_feature`).
        present = stores[0].load("lamps", ALL).ids
        readings = [
            reading(str(fid), float(rng.integers(0, 50)), str(rng.choice(["on", "fault"])))
            for fid in rng.choice(present, 20)
        ]
        for k, s in enumerate(stores):
            o = s.observe(readings, user="gw")
            # Apart by more than the stores' millisecond: the embedded store leaves out of the
            # history a state that lasted less than one.
            time.sleep(0.002)
            d = s.delete_features("lamps", gone, user="eve", source="api")
            results[k].append((written[k], o.changed, o.revision, d))
    assert results[0] == results[1]
    a, b = (_answers(s) for s in stores)
    assert a.keys() == b.keys()
    for key in a.keys() - {"properties"}:
        assert a[key] == b[key], key
    # What an update changed: the embedded store compares the new values with the row as last
    # written, not with the state readings set since (`test_an_update_names_what_changed...`);
    # the readings here set `status` only, so the rest must agree.
    for mine, theirs in zip(a["properties"], b["properties"], strict=True):
        assert (mine is None) == (theirs is None)
        assert mine is None or set(mine) - {"status"} == set(theirs) - {"status"}
    assert a["revision"] > 100 and len(a["load lamps"]["ids"]) > 20
    for s in stores:
        s.close()


# -- the PostGIS store's own faults ----------------------------------------------------------


@pytest.mark.postgis
def test_postgis_upgrades_a_version_1_database(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    from layers.postgis import SCHEMA_VERSION, PostGISStore

    first = PostGISStore(pg_url, raster_dir=tmp_path)
    first.write(lamps(["a"], [1.0], ["on"]), source="f", user="u")
    first.close()
    with psycopg.connect(pg_url, autocommit=True) as db:  # as version 1 left it
        db.execute("DROP TABLE twin_files")
        db.execute("UPDATE twin_schema_version SET version = 1")
    older = f"schema version 1, older than this twin's {SCHEMA_VERSION}: run `twin migrate`"
    with pytest.raises(StoreError, match=older):
        PostGISStore(pg_url, raster_dir=tmp_path, create=False)
    opened = PostGISStore(pg_url, raster_dir=tmp_path)  # `twin migrate` does the same
    assert opened.migrate() == SCHEMA_VERSION >= 2
    assert values(opened.load("lamps", ALL), "status") == ["on"]
    opened.write(lamps(["b"], [2.0], ["on"]), source="f", user="u", files={"g.xml": b"g"})
    assert opened.files("lamps") == {"g.xml": b"g"}
    opened.close()


@pytest.mark.postgis
def test_postgis_faults_are_store_errors(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    from layers.postgis import SCHEMA_VERSION, PostGISStore
    from layers.settings import StoreSettings, open_store

    with pytest.raises(StoreError, match="cannot open store"):
        PostGISStore("postgresql://postgres@127.0.0.1:1/nowhere")
    # The password never shows in the location.
    hidden = pg_url.replace("postgres@", "postgres:s3cret@")
    opened = PostGISStore(hidden, raster_dir=tmp_path)
    assert "s3cret" not in opened.location and opened.location == pg_url
    assert opened.migrate() == SCHEMA_VERSION
    opened.close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE twin_schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this twin"):
        PostGISStore(pg_url, raster_dir=tmp_path)
    with pytest.raises(StoreError, match="newer than this twin"):
        PostGISStore(pg_url, raster_dir=tmp_path, create=False)
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE twin_schema_version SET version = %s", (SCHEMA_VERSION,))
    empty = pg_url.rsplit("/", 1)[0] + "/postgres"
    with pytest.raises(StoreError, match="no twin store"):
        PostGISStore(empty, create=False)
    # The setting picks the backend.
    store = open_store(StoreSettings(store=pg_url, raster_dir=tmp_path, _env_file=None))  # type: ignore[call-arg]
    assert isinstance(store, PostGISStore) and store.raster_dir == tmp_path
    store.close()
    local = open_store(StoreSettings(store=str(tmp_path / "local"), _env_file=None))  # type: ignore[call-arg]
    assert isinstance(local, GeoPackageStore)
    local.close()


def test_a_write_failing_midway_changes_nothing(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(lamps(["a", "b"], [114.30, 114.31], ["on", "on"]), source="f", user="u")
    before = (store.load("lamps", ALL), store.revision(), len(store.history()))

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    if isinstance(store, GeoPackageStore):
        monkeypatch.setattr(GeoPackageStore, "_touch", boom)
    else:
        monkeypatch.setattr("layers.postgis_write.touch", boom)
    newer = lamps(["b", "c"], [114.35, 114.36], ["fault", "on"])
    with pytest.raises(RuntimeError):
        store.write(newer, source="f", user="u", mode="replace")
    monkeypatch.undo()
    after = store.load("lamps", ALL)
    pd.testing.assert_frame_equal(after.attrs, before[0].attrs)
    assert after.ids.tolist() == ["a", "b"]
    assert (store.revision(), len(store.history())) == before[1:]
    assert store.versions("lamps", "b", ALL)[1] == []
    # The store works on after it.
    assert store.write(newer, source="f", user="u", mode="replace").removed == 1


@pytest.mark.postgis
def test_postgis_refuses_a_bad_reading_whole(pg_url: str, tmp_path: Path) -> None:
    """A reading the column cannot hold fails its batch, which changes nothing (the embedded
    store takes it, and fails every later read of the layer instead)."""
    from layers.postgis import PostGISStore

    store = PostGISStore(pg_url, raster_dir=tmp_path)
    store.write(lamps(["a"], [114.3], ["on"], watts=[60]), source="f", user="u")
    seq = store.revision()
    with pytest.raises(StoreError, match="double precision"):
        store.observe([reading("a", 1, "off"), reading("a", 1, "bright", "watts")], user="gw")
    assert store.revision() == seq and store.readings("lamps", "a") == ([], 0)
    assert values(store.load("lamps", ALL), "status") == ["on"]
    assert store.observe([reading("a", 1, "off")], user="gw").changed == 1
    store.close()


@pytest.mark.postgis
def test_postgis_recovers_when_its_connections_are_killed(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    from layers.postgis import PostGISStore

    store = PostGISStore(pg_url, raster_dir=tmp_path)
    store.write(lamps(["a"], [114.3], ["on"]), source="f", user="u")
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as db:
        killed = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    assert store.revision() == 1 and len(store.load("lamps", ALL)) == 1
    store.close()


@pytest.mark.postgis
def test_postgis_writers_in_parallel_number_the_log_without_gaps(
    pg_url: str, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from layers.postgis import PostGISStore

    stores = [PostGISStore(pg_url, raster_dir=tmp_path) for _ in range(3)]
    stores[0].write(lamps(["x"], [114.0], ["on"]), source="f", user="u")

    def work(k: int) -> int:
        s = stores[k % 3]
        if k % 2:  # a late reading (an earlier time than one already in) changes nothing
            return s.observe([reading("x", k, f"s{k}")], user=f"gw{k}").changed
        return s.write(lamps([f"k{k}"], [114.0 + k / 100], ["on"]), source=f"s{k}", user="u").added

    with ThreadPoolExecutor(6) as pool:
        changed = sum(pool.map(work, range(24)))
    assert changed >= 13  # 12 new lamps, and at least the first reading
    log = stores[1].changes(0)
    assert (
        [c.seq for c in log]
        == list(range(1, changed + 2))
        == list(range(1, stores[2].revision() + 1))
    )
    assert len(stores[0].load("lamps", ALL)) == 13
    # The newest reading by time won, whichever thread wrote last.
    assert values(stores[2].features("lamps", ["x"], ALL), "status") == ["s23"]
    for s in stores:
        s.close()


@pytest.mark.postgis
def test_postgis_moves_a_raster_staged_beside_its_rasters(pg_url: str, tmp_path: Path) -> None:
    from layers.postgis import PostGISStore

    store = PostGISStore(pg_url, raster_dir=tmp_path / "rasters")
    staged = store.staging_dir() / ".import-1" / "dem.tif"
    staged.parent.mkdir()
    made = _tiny_raster(staged, 3.0).read_bytes()
    info = store.put_raster(RasterInfo("dem", "DEM", staged), user="u", source="dem.tif")
    assert not staged.exists() and info.path == tmp_path / "rasters" / "dem.tif"
    assert info.path.read_bytes() == made
    assert sorted(p.name for p in (tmp_path / "rasters").iterdir()) == [".import-1", "dem.tif"]
    store.close()


def test_the_store_setting_names_a_directory_or_a_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from layers.settings import StoreSettings

    monkeypatch.setenv("TWIN_STORE", "postgresql://twin:pw@db.city.gov:6432/twin")
    monkeypatch.setenv("TWIN_RASTER_DIR", str(tmp_path / "cogs"))
    url = StoreSettings(_env_file=None)  # type: ignore[call-arg]
    assert url.store == "postgresql://twin:pw@db.city.gov:6432/twin" and url.backend == "postgis"
    assert url.raster_dir == tmp_path / "cogs"
    monkeypatch.setenv("TWIN_STORE", "postgres://localhost/twin")
    assert StoreSettings(_env_file=None).store == "postgres://localhost/twin"  # type: ignore[call-arg]
    monkeypatch.setenv("TWIN_STORE", "data//twin")
    folder = StoreSettings(_env_file=None)  # type: ignore[call-arg]
    assert folder.store == Path("data/twin") and folder.backend == "gpkg"
    monkeypatch.delenv("TWIN_STORE")
    assert StoreSettings(_env_file=None).store == Path("twin-data")  # type: ignore[call-arg]
    assert StoreSettings(store=tmp_path).store == tmp_path


def test_two_layers_may_share_a_title(store: Any) -> None:
    """Titles are free text: two layers of one title both land (a GeoPackage's identifiers
    are unique, so the embedded store tells them apart there) and keep their own title."""
    a = lamps(["a"], [1.0], ["on"])
    other = dataclasses.replace(a.schema, name="lamps_two")
    b = Layer(other, a.ids, a.geometry, a.attrs)
    store.write(a, source="f", user="u")
    store.write(b, source="f", user="u")
    got = store.layers(ALL)
    assert got["lamps"].schema.title == got["lamps_two"].schema.title == a.schema.title
    assert got["lamps"].count == got["lamps_two"].count == 1
