"""The embedded GeoPackage store: atomic writes by id, history, scope, GDAL-readable file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyogrio
import pytest
import shapely

from layers.errors import StoreError, UnknownCollection
from layers.gpkg import GeoPackageStore
from layers.layer import SOURCE, VERSION, Layer, coerce, empty_attrs
from layers.models import Access
from layers.schemas import LIGHTS, PIPES, custom_schema


def make_pipes(n: int, *, material: str = "PE", shift: float = 0.0, source: str = "a") -> Layer:
    attrs = empty_attrs(PIPES, n)
    attrs["material"] = coerce([material] * n, PIPES.field("material").type)
    attrs["diameter_mm"] = coerce(np.arange(n) * 10.0 + 100, PIPES.field("diameter_mm").type)
    attrs["install_year"] = coerce(np.arange(n) % 50 + 1970, PIPES.field("install_year").type)
    attrs[SOURCE] = coerce([source] * n, PIPES.field("material").type)
    x = 114.3 + np.arange(n) * 1e-4 + shift
    geom = shapely.linestrings(
        np.stack([np.c_[x, np.full(n, 30.3)], np.c_[x, np.full(n, 30.301)]], 1)
    )
    return Layer(PIPES, np.array([f"p{i}" for i in range(n)], dtype=object), geom, attrs)


def test_round_trip_keeps_geometry_and_typed_attributes(store):
    src = make_pipes(50)
    assert store.write(src, source="a", user="t").added == 50
    back = store.load("pipes", Access.PUBLIC)
    assert back.ids.tolist() == src.ids.tolist()
    assert shapely.equals_exact(back.geometry, src.geometry, tolerance=0).all()
    assert back.attrs["diameter_mm"].tolist() == src.attrs["diameter_mm"].tolist()
    assert back.attrs["install_year"].tolist() == src.attrs["install_year"].tolist()
    assert back.attrs["network"].isna().all()
    assert (back.attrs[VERSION] == 1).all()


def test_rewrite_same_data_changes_nothing(store):
    store.write(make_pipes(20), source="a", user="t")
    r = store.write(make_pipes(20), source="a", user="t")
    assert (r.added, r.updated, r.unchanged, r.removed) == (0, 0, 20, 0)
    assert (store.load("pipes", Access.PUBLIC).attrs[VERSION] == 1).all()


def test_newer_version_updates_adds_and_replace_removes(store):
    store.write(make_pipes(20), source="a", user="t")
    newer = make_pipes(25).take(np.r_[5:25])  # p0..p4 gone, p20..p24 new
    newer.attrs.loc[newer.ids == "p10", "material"] = "DI"
    r = store.write(newer, source="a", user="t")
    assert (r.added, r.updated, r.unchanged, r.removed) == (5, 1, 14, 0)
    assert len(store.load("pipes", Access.PUBLIC)) == 25
    r = store.write(newer, source="a", user="t", mode="replace")
    assert (r.added, r.updated, r.unchanged, r.removed) == (0, 0, 20, 5)
    back = store.load("pipes", Access.PUBLIC)
    assert sorted(back.ids) == sorted(newer.ids)
    row = back.row("p10")
    assert back.attrs.loc[row, "material"] == "DI" and back.attrs.loc[row, VERSION] == 2


def test_replace_only_removes_features_of_the_same_source(store):
    store.write(make_pipes(10, source="toronto"), source="toronto", user="t")
    other = make_pipes(3, source="ottawa")
    other.ids = np.array(["o1", "o2", "o3"], dtype=object)
    store.write(other, source="ottawa", user="t", mode="replace")
    assert len(store.load("pipes", Access.PUBLIC)) == 13


def test_failed_write_leaves_previous_version(store, monkeypatch):
    store.write(make_pipes(10), source="a", user="t")
    before = store.load("pipes", Access.PUBLIC)
    import layers.gpkg as gpkg

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gpkg.GeoPackageStore, "_touch", boom)
    with pytest.raises(RuntimeError):
        store.write(make_pipes(30, material="CI"), source="a", user="t", mode="replace")
    after = store.load("pipes", Access.PUBLIC)
    assert after.ids.tolist() == before.ids.tolist()
    assert (after.attrs["material"] == "PE").all()
    assert len(store.history("pipes")) == 1


def test_killed_write_leaves_previous_version(store_dir):
    s = GeoPackageStore(store_dir)
    s.write(make_pipes(100), source="a", user="t")
    s.close()
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from tests.layers.test_gpkg import make_pipes
        from layers.gpkg import GeoPackageStore
        import layers.gpkg as g
        s = GeoPackageStore({str(store_dir)!r})
        real = g.GeoPackageStore._touch
        def slow(*a, **k):
            real(*a, **k)
            print("touched", flush=True)
            time.sleep(60)
        g.GeoPackageStore._touch = slow
        s.write(make_pipes(5000, material="CI"), source="a", user="t", mode="replace")
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "touched"
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = GeoPackageStore(store_dir)
    back = s.load("pipes", Access.PUBLIC)
    assert len(back) == 100 and (back.attrs["material"] == "PE").all()
    s.close()


def test_duplicate_ids_are_refused(store):
    lyr = make_pipes(3)
    lyr.ids = np.array(["x", "x", "y"], dtype=object)
    with pytest.raises(StoreError):
        store.write(lyr, source="a", user="t")


def test_history_records_each_import(store):
    store.write(make_pipes(5), source="a.geojson", user="alice", details={"rejected": 2})
    store.write(make_pipes(6), source="a.geojson", user="bob")
    h = store.history("pipes")
    assert [r.user for r in h] == ["bob", "alice"]
    assert (h[0].added, h[0].unchanged) == (1, 5)
    assert h[1].rejected == 2 and h[1].source == "a.geojson"


def test_scope_hides_classified_layers(store):
    secret = custom_schema({"name": "gasmains", "geometry": "line", "classification": "restricted"})
    lyr = Layer(
        secret,
        np.array(["g1"], dtype=object),
        np.array([shapely.LineString([(0, 0), (1, 1)])]),
        empty_attrs(secret, 1),
    )
    store.write(lyr, source="s", user="t")
    assert "gasmains" not in store.layers(Access.INTERNAL)
    assert "gasmains" in store.layers(Access.RESTRICTED)
    with pytest.raises(UnknownCollection):
        store.load("gasmains", Access.PUBLIC)
    assert len(store.load("gasmains", Access.RESTRICTED)) == 1


def test_file_is_a_geopackage_gdal_reads(store):
    store.write(make_pipes(7), source="a", user="t")
    lights = Layer(
        LIGHTS,
        np.array(["l1"], dtype=object),
        np.array([shapely.Point(114.3, 30.3)]),
        empty_attrs(LIGHTS, 1),
    )
    store.write(lights, source="b", user="t")
    layers = dict(pyogrio.list_layers(store.file).tolist())
    assert layers["pipes"] is not None and layers["lights"] is not None
    df = pyogrio.read_dataframe(store.file, layer="pipes")
    assert len(df) == 7 and df.crs.to_epsg() == 4326
    assert sorted(df["id"]) == sorted(f"p{i}" for i in range(7))
    info = pyogrio.read_info(store.file, layer="pipes")
    assert info["features"] == 7
    np.testing.assert_allclose(info["total_bounds"], [114.3, 30.3, 114.3006, 30.301])


def test_layers_report_counts_bounds_and_last_change(store):
    store.write(make_pipes(4), source="a", user="t")
    info = store.layers(Access.PUBLIC)["pipes"]
    assert info.count == 4
    assert info.bounds is not None
    np.testing.assert_allclose(info.bounds, (114.3, 30.3, 114.3003, 30.301))
    assert info.last_change is not None and info.last_change.endswith("Z")
