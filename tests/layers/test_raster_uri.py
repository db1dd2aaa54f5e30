"""Rasters referred to by URI with their stored bounds: a DEM served over HTTP (with byte
ranges, as an object store serves a COG) is registered in PostGIS where it is, read there by
every server, placed on the map from the bounds the store recorded; the embedded store copies
it in byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import morecantile
import numpy as np
import psycopg
import pytest
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from fastapi.testclient import TestClient
from pyproj import Transformer

from importers.transfer import copy_store
from layers.errors import StoreError
from layers.gpkg import GeoPackageStore
from layers.layer import Layer
from layers.models import Access
from layers.postgis import PostGISStore
from layers.schemas import ROADS
from layers.store import RasterInfo
from tests.layers.test_store_contract import layer
from tests.twin.serve_fixtures import app_for
from tiles.raster import render_raster_tile

pytestmark = [pytest.mark.postgis]

CRS = "EPSG:4547"  # CGCS2000 / 3-degree Gauss-Kruger CM 114E (Wuhan)
ORIGIN = (530_000.0, 3_382_000.0)
CELL = 10.0
TMS = morecantile.tms.get("WebMercatorQuad")


def _make_dem(path: Path) -> None:
    """A 160 x 120 cell hill (metres) in CGCS2000 Gauss-Kruger, written as a COG."""
    rows, cols = np.mgrid[0:120, 0:160].astype(np.float64)
    z = 20 + 30 * np.exp(-(((cols - 80) / 40) ** 2 + ((rows - 60) / 30) ** 2))
    plain = path.with_suffix(".plain.tif")
    with rasterio.open(
        plain,
        "w",
        driver="GTiff",
        width=160,
        height=120,
        count=1,
        dtype="float32",
        crs=CRS,
        transform=Affine(CELL, 0, ORIGIN[0], 0, -CELL, ORIGIN[1]),
        nodata=-9999.0,
    ) as ds:
        ds.write(z.astype(np.float32), 1)
    rasterio.shutil.copy(str(plain), str(path), driver="COG")
    plain.unlink()


class Served:
    """The file server process: its URL for the COG, the requests it saw, and a stop."""

    def __init__(self, root: Path) -> None:
        self.log = root.parent / "requests.log"
        self.log.touch()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.layers.ranged_http", str(root), str(self.log)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}/dem.tif"

    def hits(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    """A COG served over HTTP with byte ranges by a process of its own, and the file."""
    root = tmp_path / "bucket"
    root.mkdir()
    cog = root / "dem.tif"
    _make_dem(cog)
    server = Served(root)
    try:
        yield server, cog
    finally:
        server.stop()


def _lonlat_bounds(cog: Path) -> tuple[float, float, float, float]:
    """The raster's lon/lat bounds by pyproj (21 points along each edge)."""
    with rasterio.open(cog) as ds:
        b = ds.bounds
    to_lonlat = Transformer.from_crs(CRS, "OGC:CRS84", always_xy=True)
    return to_lonlat.transform_bounds(b.left, b.bottom, b.right, b.top, densify_pts=21)


@pytest.fixture
def pg_store(pg_url: str, tmp_path: Path) -> Iterator[PostGISStore]:
    """A PostGIS store on a fresh database, its own rasters in `tmp_path / "rasters"`."""
    store = PostGISStore(pg_url, raster_dir=tmp_path / "rasters")
    try:
        yield store
    finally:
        store.close()


def test_postgis_registers_a_remote_raster_where_it_is(pg_store, served, tmp_path) -> None:
    server, cog = served
    url = server.url
    store = pg_store
    info = store.put_raster(RasterInfo("dem", "Ground", url), user="t", source="bucket")
    assert info.uri == url and info.remote and info.version
    expected = _lonlat_bounds(cog)
    assert info.bounds == pytest.approx(expected, abs=1e-9)
    # Registered by reference: nothing was copied into the store's raster folder.
    assert not any((tmp_path / "rasters").glob("*.tif"))
    listed = store.rasters(Access.PUBLIC)["dem"]
    assert listed.uri == url and listed.bounds == pytest.approx(expected, abs=1e-9)
    assert listed.version == info.version
    with pytest.raises(StoreError, match="not a file"):
        _ = listed.path
    # Registered again (the file replaced upstream): a new version for the caches.
    again = store.put_raster(RasterInfo("dem", "Ground", url), user="t", source="bucket")
    assert again.version != info.version
    # A URL nothing answers is refused, and the registration is left as it was.
    with pytest.raises(StoreError, match="cannot read the raster http"):
        store.put_raster(
            RasterInfo("dem", "Gone", url.replace("dem.tif", "gone.tif")),
            user="t",
            source="bucket",
        )
    assert store.rasters(Access.PUBLIC)["dem"].version == again.version
    assert any(h.startswith("GET /dem.tif bytes=") for h in server.hits())  # read in ranges


def test_a_server_on_postgis_reads_the_raster_at_its_url(pg_url: str, pg_store, served) -> None:
    server, cog = served
    pg_store.put_raster(RasterInfo("dem", "Ground", server.url), user="t", source="bucket")
    pg_store.close()
    west, south, east, north = _lonlat_bounds(cog)
    lon, lat = west + 0.37 * (east - west), south + 0.58 * (north - south)
    x, y = Transformer.from_crs("OGC:CRS84", CRS, always_xy=True).transform(lon, lat)
    with rasterio.open(cog) as ds:
        nearest = float(next(ds.sample([(x, y)]))[0])
    t = TMS.tile(lon, lat, 14)
    # The server places the raster from the bounds the store recorded, not from the file:
    # with the recorded box moved by hand, the collection document follows the record.
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE twin_layers SET min_x = min_x - 0.5 WHERE name = 'dem'")
    with TestClient(app_for(pg_url)) as c:  # type: ignore[arg-type]
        doc = c.get("/collections/dem").json()
        assert doc["extent"]["spatial"]["bbox"][0] == pytest.approx(
            [west - 0.5, south, east, north]
        )
        tile_url = f"/collections/dem/map/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}"
        for style in ("hillshade", "relief"):
            got = c.get(tile_url, params={"style": style})
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            assert got.content == render_raster_tile(cog, t, style)  # the local file's tile
        body = c.get("/query/at", params={"lon": lon, "lat": lat, "sampling": "nearest"}).json()
        assert body["rasters"]["dem"]["value"] == nearest


def test_the_embedded_store_copies_a_remote_raster_in(served, tmp_path) -> None:
    server, cog = served
    url = server.url
    store = GeoPackageStore(tmp_path / "store")
    try:
        info = store.put_raster(RasterInfo("dem", "Ground", url), user="t", source="bucket")
        assert not info.remote and info.path.read_bytes() == cog.read_bytes()
        assert info.bounds == pytest.approx(_lonlat_bounds(cog), abs=1e-9)
        listed = store.rasters(Access.PUBLIC)["dem"]
        assert listed.path == info.path and listed.version == info.version
    finally:
        store.close()


def _roads() -> Layer:
    """One road (a built-in layer) in lon/lat."""
    line = shapely.LineString([(114.30, 30.40), (114.31, 30.41)])
    return layer(ROADS, [line], ["r1"], name=["汤逊湖北路"])


def test_moving_a_twin_out_of_postgis_copies_its_remote_raster(
    pg_url: str, served, tmp_path
) -> None:
    server, cog = served
    url = server.url
    source = PostGISStore(pg_url, raster_dir=tmp_path / "rasters")
    target = GeoPackageStore(tmp_path / "store")
    try:
        source.migrate()
        source.put_raster(RasterInfo("dem", "Ground", url), user="t", source="bucket")
        source.write(_roads(), source="osm", user="t", files={"graphs/x.graphml": b"<g/>"})
        done = copy_store(source, target, user="t")
        assert done.rasters == ["dem"] and done.layers == {"roads": 1}
        moved = target.rasters(Access.PUBLIC)["dem"]
        assert moved.path.read_bytes() == cog.read_bytes()
        # The files kept with a layer move with it.
        assert target.files("roads") == {"graphs/x.graphml": b"<g/>"}
    finally:
        source.close()
        target.close()


def test_twin_import_raster_registers_a_url(pg_url: str, served, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from twin.cli import app

    server, cog = served
    monkeypatch.setenv("TWIN_RASTER_DIR", str(tmp_path / "rasters"))
    run = CliRunner().invoke
    done = run(app, ["import-raster", "dem", server.url, "--store", pg_url, "--title", "Ground"])
    assert done.exit_code == 0, done.output
    assert f"dem: registered {server.url} (GTiff) where it is" in done.output
    listed = run(app, ["layers", "--store", pg_url, "--json"])
    (row,) = [r for r in json.loads(listed.output) if r["name"] == "dem"]
    assert row["kind"] == "raster" and row["path"] == server.url
    # Not a COG (stripped, untiled): refused, the store unchanged.
    flat = cog.parent / "flat.tif"
    with rasterio.open(cog) as src:
        profile = {**src.profile, "driver": "GTiff", "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(flat, "w", **profile) as out:
            out.write(src.read())
    refused = run(
        app, ["import-raster", "flat", server.url.replace("dem.tif", "flat.tif"), "--store", pg_url]
    )
    assert refused.exit_code != 0 and "not tiled" in refused.output
    listed = run(app, ["layers", "--store", pg_url, "--json"])
    assert [r["name"] for r in json.loads(listed.output) if r["kind"] == "raster"] == ["dem"]
