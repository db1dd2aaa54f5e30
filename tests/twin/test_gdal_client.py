"""Real OGC clients against a real uvicorn server: GDAL's OAPIF driver and OWSLib."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import numpy as np
import pyogrio
import pytest

from importers.options import ImportOptions
from importers.pipeline import import_file
from layers.gpkg import GeoPackageStore
from layers.store import RasterInfo
from tests.conftest import needs, shared
from tests.twin.query_fixtures import write_dem
from tests.twin.serve_fixtures import (
    STREETLIGHTS,
    LiveServer,
    app_for,
    live_server_fixture,  # noqa: F401  (fixture)
    secret_layer,
    served_store_fixture,  # noqa: F401  (fixture)
    streetlights_frame,
)


@pytest.fixture(autouse=True)
def _gdal() -> None:
    needs(shutil.which("ogr2ogr") is not None, "GDAL's ogr2ogr (Debian gdal-bin)")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def imported_server(tmp_path_factory):
    """The real street-light file imported by the real pipeline, served by uvicorn."""
    path = tmp_path_factory.mktemp("imported") / "store"
    store = GeoPackageStore(path)
    report = import_file(store, "lights", shared(STREETLIGHTS), ImportOptions(), user="tests")
    store.write(secret_layer(), source="test", user="tests")
    # A raster collection too: listed in /collections for its map tiles, not a feature layer.
    dem = write_dem(path.parent / "dem.tif", (-71.16, 42.35, -71.06, 42.41))
    store.put_raster(RasterInfo("dem", "Ground elevation", dem), user="tests", source="dem.tif")
    store.close()
    with LiveServer(app_for(path)) as server:
        yield server, report


def test_ogrinfo_lists_the_layers(imported_server, live_server):
    server, _ = imported_server
    r = run("ogrinfo", "-ro", "-q", f"OAPIF:{server.url}/")
    assert r.returncode == 0, r.stderr
    assert ": lights" in r.stdout
    # GDAL leaves the raster out instead of asking for its items (no ERROR on the way),
    # though /collections lists it (for its map tiles).
    assert ": dem" not in r.stdout
    assert r.stderr == ""
    listed = httpx.get(f"{server.url}/collections").json()["collections"]
    assert [c.get("layerDataType") for c in listed if c["id"] == "dem"] == ["Coverage"]
    assert "secret_valves" not in r.stdout  # above the anonymous caller's scope
    r = run("ogrinfo", "-ro", "-q", f"OAPIF:{live_server.url}/")
    for name in ("lights", "pipes", "sites"):
        assert f": {name}" in r.stdout


def test_ogr2ogr_copies_every_light(imported_server, tmp_path):
    server, report = imported_server
    out = tmp_path / "out.gpkg"
    r = run("ogr2ogr", "-f", "GPKG", str(out), f"OAPIF:{server.url}/", "lights")
    assert r.returncode == 0, r.stderr
    got = pyogrio.read_dataframe(out, layer="lights")
    ref = streetlights_frame()
    assert report.added == len(ref) == 6117 and not report.rejected
    assert len(got) == len(ref)
    # The importer keys features by source and PoleID; compare positions pole by pole.
    got.index = got["id"].str.split(":", n=1).str[1]
    ref = ref.set_index("PoleID")
    assert set(got.index) == set(ref.index)
    dx = got.geometry.x.to_numpy() - ref.geometry.x.reindex(got.index).to_numpy()
    dy = got.geometry.y.to_numpy() - ref.geometry.y.reindex(got.index).to_numpy()
    assert np.abs(dx).max() < 1e-9 and np.abs(dy).max() < 1e-9
    fixture = ref["FixtureType"].reindex(got.index)
    known = got["lamp_type"].notna()
    junk = sum(n.count for n in report.cleaned if n.field == "lamp_type")
    assert known.sum() == fixture.notna().sum() - junk > 4000
    assert (got["lamp_type"][known] == fixture[known]).all()


def test_ogr2ogr_with_a_spatial_and_attribute_filter(live_server, tmp_path):
    out = tmp_path / "faults.gpkg"
    box = (-71.12, 42.37, -71.10, 42.38)
    r = run(
        "ogr2ogr",
        "-f",
        "GPKG",
        str(out),
        f"OAPIF:{live_server.url}/",
        "lights",
        "-spat",
        *map(str, box),
        "-where",
        "status = 'fault'",
    )
    assert r.returncode == 0, r.stderr
    got = pyogrio.read_dataframe(out)
    assert len(got) > 0 and (got["status"] == "fault").all()
    x, y = got.geometry.x, got.geometry.y
    assert ((x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])).all()


def test_owslib_features_reads_items(live_server):
    from owslib.ogcapi.features import Features

    api = Features(live_server.url)
    ids = [c["id"] for c in api.collections()["collections"]]
    assert "lights" in ids
    q = api.collection_queryables("pipes")
    assert "diameter_mm" in q["properties"]
    items = api.collection_items("lights", limit=25, status="fault")
    assert items["numberReturned"] == 25
    assert all(f["properties"]["status"] == "fault" for f in items["features"])
    ref = streetlights_frame()
    assert items["numberMatched"] == len(ref[np.arange(len(ref)) % 13 == 0]) - sum(
        1 for i in range(0, len(ref), 13) if i % 17 == 5
    )
