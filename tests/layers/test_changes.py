"""The store's change log and a catalog following it: every write is logged feature by feature
(or as one whole-layer entry), and a catalog over another connection applies the changes so its
layers equal a fresh load of the store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import morecantile
import numpy as np
import pandas as pd
import shapely

from layers.catalog import Catalog
from layers.gpkg import FEED_FEATURES_MAX, GeoPackageStore
from layers.layer import Layer
from layers.models import Access, Bounds, ChangeKind, Reading
from layers.schemas import LIGHTS, VALVES
from tests.twin.serve_fixtures import make_layer
from tiles.grid import Tile
from tiles.prepared import prepare
from tiles.render import render_tile
from tiles.settings import TileSettings

ALL = Access.RESTRICTED


def lights(ids: list[str], xs: list[float], status: list[str | None]) -> Layer:
    return make_layer(
        LIGHTS, shapely.points(np.array(xs), np.full(len(xs), 30.35)), ids, status=status
    )


def same_layer(a: Layer, b: Layer) -> None:
    """Two layers hold the same features, in the same order, with the same values."""
    assert a.ids.tolist() == b.ids.tolist()
    assert shapely.equals_exact(a.geometry, b.geometry, tolerance=0).all()
    pd.testing.assert_frame_equal(a.attrs, b.attrs)
    assert a.schema == b.schema


def test_each_write_logs_its_features_with_their_boxes(tmp_path: Path) -> None:
    store = GeoPackageStore(tmp_path)
    assert store.revision() == 0 and store.changes(0) == []
    first = lights(["a", "b", "c"], [114.30, 114.31, 114.32], ["on", "on", "on"])
    store.write(first, source="f1", user="ann")
    (created,) = store.changes(0)  # a new layer: one entry for the whole collection
    assert created.kind is ChangeKind.LAYER and created.id is None and created.user == "ann"
    seq = store.revision()
    assert seq == created.seq
    # b moves east and fails, c is left alone, d is new; with replace, a (absent) is removed.
    second = lights(["b", "c", "d"], [114.35, 114.32, 114.40], ["fault", "on", "on"])
    result = store.write(second, source="f1", user="bob", mode="replace")
    assert (result.added, result.updated, result.unchanged, result.removed) == (1, 1, 1, 1)
    got = {c.id: c for c in store.changes(seq)}
    assert set(got) == {"a", "b", "d"}
    assert got["b"].kind is ChangeKind.UPDATED
    assert got["b"].old == Bounds(114.31, 30.35, 114.31, 30.35)
    assert got["b"].new == Bounds(114.35, 30.35, 114.35, 30.35)
    assert got["b"].properties == ("geometry", "status")  # what the update changed
    assert got["d"].properties is None and got["a"].properties is None
    assert got["d"].kind is ChangeKind.ADDED and got["d"].old is None
    assert got["d"].new == Bounds(114.40, 30.35, 114.40, 30.35)
    assert got["a"].kind is ChangeKind.REMOVED and got["a"].new is None
    assert got["a"].old == Bounds(114.30, 30.35, 114.30, 30.35)
    assert all(c.user == "bob" and "f1" in c.why for c in got.values())
    assert [c.seq for c in store.changes(seq)] == sorted(c.seq for c in got.values())
    # The same file again changes nothing and logs nothing.
    before = store.revision()
    store.write(second, source="f1", user="bob", mode="replace")
    assert store.revision() == before
    # Deleting by id logs each feature that was there.
    assert store.delete_features("lights", ["c", "zz"], user="eve", source="api") == 1
    (gone,) = store.changes(before)
    assert (gone.id, gone.kind, gone.old) == (
        "c",
        ChangeKind.REMOVED,
        Bounds(114.32, 30.35, 114.32, 30.35),
    )
    store.close()


def test_a_large_write_is_one_whole_layer_entry(tmp_path: Path) -> None:
    store = GeoPackageStore(tmp_path)
    n = FEED_FEATURES_MAX + 1
    xs = np.linspace(114.3, 114.4, n).tolist()
    store.write(lights([f"l{i}" for i in range(n)], xs, ["on"] * n), source="s", user="u")
    seq = store.revision()
    store.write(lights([f"l{i}" for i in range(n)], xs, ["off"] * n), source="s", user="u")
    (entry,) = store.changes(seq)
    assert entry.kind is ChangeKind.LAYER and entry.id is None
    store.close()


def test_patched_layer_equals_a_fresh_load(tmp_path: Path) -> None:
    store = GeoPackageStore(tmp_path)
    store.write(
        lights(["a", "b", "c", "d"], [114.30, 114.31, 114.32, 114.33], ["on", None, "on", "off"]),
        source="s",
        user="u",
    )
    held = store.load("lights", ALL)
    seq = store.revision()
    store.write(lights(["b", "e"], [114.50, 114.60], ["fault", "on"]), source="s", user="u")
    store.delete_features("lights", ["c"], user="u", source="api")
    ids = [c.id for c in store.changes(seq) if c.id is not None]
    now = store.features("lights", ids, ALL)
    assert sorted(now.ids.tolist()) == ["b", "e"]
    patched = held.patched(now, set(ids) - set(now.ids.tolist()))
    same_layer(patched, store.load("lights", ALL))
    store.close()


def test_a_catalog_follows_writes_from_another_connection(tmp_path: Path) -> None:
    GeoPackageStore(tmp_path).write(
        lights(["a", "b", "c"], [114.30, 114.31, 114.32], ["on", "on", "on"]),
        source="s",
        user="u",
    )
    catalog = Catalog(GeoPackageStore(tmp_path))
    heard: list[tuple[str, list | None]] = []
    catalog.subscribe(
        lambda name, boxes: heard.append((name, None if boxes is None else boxes.tolist()))
    )
    prepared: list[int] = []
    catalog.prepare = lambda layer: prepared.append(len(layer))
    assert catalog.follow() == []
    other = GeoPackageStore(tmp_path)  # as `twin import` in another process
    other.write(lights(["b"], [114.35], ["fault"]), source="s", user="u")
    held = catalog.layer("lights", ALL)
    applied = catalog.follow()
    assert [c.id for c in applied] == ["b"]
    assert catalog.seq == other.revision()
    served = catalog.layer("lights", ALL)
    assert served is not held  # a new layer swapped in; the one being served is untouched
    assert held.attrs["status"].tolist() == ["on", "on", "on"]
    same_layer(served, other.load("lights", ALL))
    assert prepared == [3]
    # One call with every box the change touched: where b was and where it is.
    assert heard == [
        ("lights", [[114.31, 30.35, 114.31, 30.35], [114.35, 30.35, 114.35, 30.35]]),
    ]
    # A new collection (a whole-layer entry) is loaded; nothing is applied twice.
    valves = make_layer(VALVES, shapely.points([114.3], [30.36]), ["v1"], kind=["gate"])
    other.write(valves, source="s", user="u")
    (entry,) = catalog.follow()
    assert entry.kind is ChangeKind.LAYER
    same_layer(catalog.layer("valves", ALL), other.load("valves", ALL))
    assert catalog.follow() == []
    other.close()
    catalog.store.close()


def test_an_update_in_place_shares_what_did_not_change(tmp_path: Path) -> None:
    n = 400
    xs = list(np.linspace(114.30, 114.31, n))
    store = GeoPackageStore(tmp_path)
    store.write(lights([f"L{i}" for i in range(n)], xs, ["on"] * n), source="s", user="u")
    held = store.load("lights", ALL)
    _ = held.tree, held.json_column("lamp_type"), held.json_column("status"), prepare(held)
    seq = store.revision()
    t = dt.datetime(2026, 12, 7, 9, tzinfo=dt.UTC)
    store.observe(
        [Reading("lights", f"L{i}", "status", t, "fault") for i in range(0, n, 7)], user="u"
    )
    ids = [c.id for c in store.changes(seq) if c.id is not None]
    patched = held.patched(store.features("lights", ids, ALL))
    fresh = store.load("lights", ALL)
    same_layer(patched, fresh)
    assert patched.origin is not None and patched.origin.same_geometry
    assert patched.origin.columns == {"status", "_version", "_updated"}
    assert patched.tree is held.tree and patched.geometry is held.geometry
    assert patched.json_column("lamp_type") is held.json_column("lamp_type")
    assert patched.json_column("status") is not held.json_column("status")
    assert patched.json_column("status").values(np.array([0, 1])) == ["fault", "on"]
    # Tiles drawn from the arrays derived from the earlier layer's equal fresh ones.
    for z in (14, 16):
        t = morecantile.tms.get("WebMercatorQuad").tile(114.305, 30.35, z)
        tile = Tile(t.x, t.y, z)
        assert render_tile([(patched, None)], tile, TileSettings()) == render_tile(
            [(fresh, None)], tile, TileSettings()
        )
    store.close()


def test_readings_are_applied_from_the_log_as_the_store_holds_them(tmp_path: Path) -> None:
    n = 50
    store = GeoPackageStore(tmp_path)
    layer = make_layer(
        LIGHTS,
        shapely.points(np.linspace(114.30, 114.31, n), np.full(n, 30.35)),
        [f"L{i}" for i in range(n)],
        status=["on"] * n,
        wattage_w=[60.0] * n,
    )
    store.write(layer, source="s", user="u")
    catalog = Catalog(GeoPackageStore(tmp_path))
    read_back: list[list[str]] = []
    real = catalog.store.features

    def features(name, ids, scope):  # the fast path must not need it
        read_back.append(list(ids))
        return real(name, ids, scope)

    catalog.store.features = features  # type: ignore[method-assign]
    t = dt.datetime(2026, 12, 7, 9, tzinfo=dt.UTC)
    rng = np.random.default_rng(5)
    for k in range(4):  # several batches, lamps read twice, two properties, nulls
        batch = [
            Reading(
                "lights",
                f"L{i}",
                "status",
                t + dt.timedelta(minutes=k, seconds=j),
                ["on", "off", "fault"][int(rng.integers(3))],
            )
            for j, i in enumerate(rng.integers(0, n, 30))
        ]
        batch += [Reading("lights", "L3", "wattage_w", t + dt.timedelta(minutes=k), 75.5 + k)]
        batch += [Reading("lights", "L4", "wattage_w", t + dt.timedelta(minutes=k), None)]
        store.observe(batch, user="sensor")
    applied = catalog.follow()
    assert all(c.state is not None for c in applied) and read_back == []
    same_layer(catalog.layer("lights", ALL), store.load("lights", ALL))
    # An entry without values (an import) is read back as before.
    store.write(lights(["L7"], [114.5], ["fault"]), source="s", user="u")
    catalog.follow()
    assert read_back == [["L7"]]
    same_layer(catalog.layer("lights", ALL), store.load("lights", ALL))
    store.close()
