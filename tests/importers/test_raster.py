"""`twin import-raster`: real DEMs become COGs with the same cells; bad rasters change nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from typer.testing import CliRunner

from importers.errors import InvalidOption, UnknownCRS
from importers.raster import gdal_path, import_raster
from layers.models import Access
from layers.raster import sample
from tests.conftest import shared
from twin.cli import app

DEMS = [
    "dem/pysheds_dem.tif",
    "dem/N10W110.hgt.zip",
    "dem/osmnx_elevation1.tif",
    "dem/osmnx_elevation2.tif",
]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def tif(
    path: Path, data: np.ndarray, *, crs: str | None = "EPSG:4326", transform=None, nodata=None
) -> Path:
    """A one-band GeoTIFF written at test time (default: 0.01° cells at 114.3E, 30.4N)."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=crs,
        nodata=nodata,
        transform=transform if transform is not None else from_origin(114.3, 30.4, 0.01, 0.01),
    ) as dst:
        dst.write(data, 1)
    return path


def snapshot(store_dir: Path) -> dict:
    """Everything a user could see change in a store: files' bytes, layers, history."""
    from layers.gpkg import GeoPackageStore

    files = {
        p.relative_to(store_dir).as_posix(): p.read_bytes()
        for p in sorted(store_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("twin.gpkg")
    }
    db = GeoPackageStore(store_dir, create=False)
    try:
        return {
            "files": files,
            "rasters": {k: (v.path, v.meta) for k, v in db.rasters(Access.RESTRICTED).items()},
            "layers": {k: v.count for k, v in db.layers(Access.RESTRICTED).items()},
            "history": [(h.collection, h.source, h.time) for h in db.history()],
        }
    finally:
        db.close()


@pytest.mark.shared_data
@pytest.mark.parametrize("name", DEMS)
def test_real_dem_becomes_a_cog_with_identical_cells(store, name):
    path = shared(name)
    report = import_raster(store, "dem", path, user="tester")
    with rasterio.open(gdal_path(path)) as src, rasterio.open(report.path) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.crs == src.crs
        assert cog.transform.almost_equals(src.transform)
        assert cog.nodata == src.nodata
        assert cog.dtypes == src.dtypes
        assert np.array_equal(cog.read(1), src.read(1))
        if max(src.width, src.height) > 256:
            assert cog.block_shapes == [(256, 256)]
            assert cog.overviews(1), "a raster larger than one tile gets overviews"
        valid = src.read(1, masked=True)
        assert report.minimum == float(valid.min()) and report.maximum == float(valid.max())
        # sampled values from the store equal rasterio's own sample of the source
        b = src.bounds
        rng = np.random.default_rng(3)
        x = rng.uniform(b.left, b.right, 300)
        y = rng.uniform(b.bottom, b.top, 300)
        expected = [
            None if np.ma.is_masked(v[0]) else float(v[0])
            for v in src.sample(zip(x, y, strict=True), masked=True)
        ]
    assert sample(report.path, x, y, method="nearest") == expected
    info = store.rasters(Access.PUBLIC)["dem"]
    assert info.path == report.path and info.meta["source"] == path.name
    assert info.meta["bounds"] == pytest.approx(list(b), abs=1e-9)
    assert store.history("dem")[0].source == path.name


def test_projected_raster_keeps_its_crs_and_reports_lonlat_bounds(store, tmp_path):
    data = np.arange(64 * 48, dtype="float32").reshape(48, 64)
    data[0, :5] = -1.0
    src = tif(
        tmp_path / "utm.tif",
        data,
        crs="EPSG:32650",
        transform=from_origin(230_000, 3_362_000, 5, 5),
        nodata=-1.0,
    )
    report = import_raster(store, "terrain", src, user="t", title="Terrain")
    assert report.crs == "EPSG:32650"
    assert report.nodata == -1.0 and report.minimum == 5.0
    to_ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    xs, ys = np.meshgrid(np.linspace(230_000, 230_320, 50), np.linspace(3_361_760, 3_362_000, 50))
    lon, lat = to_ll.transform(xs.ravel(), ys.ravel())
    assert report.bounds == pytest.approx((min(lon), min(lat), max(lon), max(lat)), abs=1e-7)
    assert store.rasters(Access.PUBLIC)["terrain"].title == "Terrain"
    # nodata survives: the first cells read as None through the store's COG
    lon0, lat0 = to_ll.transform(230_002.5, 3_361_997.5)
    assert sample(report.path, [lon0], [lat0], method="nearest") == [None]


def test_reimport_replaces_the_raster(store, tmp_path):
    def make(value: int) -> Path:
        return tif(tmp_path / f"v{value}.tif", np.full((4, 4), value, dtype="int16"))

    import_raster(store, "dem", make(1), user="t")
    report = import_raster(store, "dem", make(2), user="t")
    assert sample(report.path, [114.315], [30.385]) == [2.0]
    assert [h.source for h in store.history("dem")] == ["v2.tif", "v1.tif"]
    assert not [p for p in report.path.parent.iterdir() if p.name.startswith(".")]


def test_builtin_layer_names_and_bad_names_are_refused(store, tmp_path):
    with pytest.raises(InvalidOption, match="built-in"):
        import_raster(store, "pipes", tmp_path / "x.tif", user="t")
    with pytest.raises(InvalidOption):
        import_raster(store, "Bad Name", tmp_path / "x.tif", user="t")


@pytest.fixture
def no_crs_tif(tmp_path: Path) -> Path:
    return tif(
        tmp_path / "nocrs.tif",
        np.ones((8, 8), dtype="uint8"),
        crs=None,
        transform=from_origin(114.3, 30.4, 0.001, 0.001),
    )


def test_raster_without_crs_is_refused_and_imports_with_crs(store, no_crs_tif):
    with pytest.raises(UnknownCRS, match="--crs"):
        import_raster(store, "dem", no_crs_tif, user="t")
    assert store.rasters(Access.RESTRICTED) == {}
    report = import_raster(store, "dem", no_crs_tif, user="t", crs="EPSG:4326")
    assert report.crs == "EPSG:4326"
    assert sample(report.path, [114.3005], [30.3995]) == [1.0]


def _bad_inputs(tmp_path: Path, no_crs: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(os.urandom(4096))
    bad_zip = tmp_path / "N00E000.hgt.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really a zip")
    not_georef = tmp_path / "plain.tif"
    with rasterio.open(
        not_georef, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8"
    ) as dst:
        dst.write(np.zeros((4, 4), dtype="uint8"), 1)
    return {
        "no crs": (no_crs, "declares no coordinate reference system"),
        "zero bytes": (empty, "empty (0 bytes)"),
        "junk": (junk, "cannot read junk.tif as a raster"),
        "bad zip": (bad_zip, "zip archive N00E000.hgt.zip is damaged or truncated"),
        "not georeferenced": (not_georef, "declares no coordinate reference system"),
        "missing": (tmp_path / "nothere.tif", "no such file"),
    }


@pytest.mark.parametrize(
    "case", ["no crs", "zero bytes", "junk", "bad zip", "not georeferenced", "missing"]
)
def test_bad_raster_gives_one_message_nonzero_exit_and_store_unchanged(
    tmp_path, store_dir, no_crs_tif, case
):
    good = tif(tmp_path / "good.tif", np.full((4, 4), 7, dtype="int16"))
    first = run("import-raster", "dem", str(good), "--store", str(store_dir))
    assert first.exit_code == 0, first.output
    before = snapshot(store_dir)
    path, message = _bad_inputs(tmp_path, no_crs_tif)[case]
    result = run("import-raster", "dem", str(path), "--store", str(store_dir))
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("twin: ") and message in lines[0]
    assert "Traceback" not in result.output
    assert snapshot(store_dir) == before


def test_bad_raster_into_a_fresh_store_creates_nothing(tmp_path, no_crs_tif):
    store_dir = tmp_path / "fresh"
    result = run("import-raster", "dem", str(no_crs_tif), "--store", str(store_dir))
    assert result.exit_code != 0
    assert not store_dir.exists()


@pytest.mark.shared_data
def test_cli_imports_zipped_hgt_and_prints_the_report(tmp_path):
    path = shared("dem/N10W110.hgt.zip")
    result = run("import-raster", "srtm", str(path), "--store", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert "1201 x 1201 cells" in result.stdout and "SRTMHGT" in result.stdout
    assert (tmp_path / "s" / "rasters" / "srtm.tif").exists()


@pytest.mark.shared_data
def test_plain_hgt_equals_the_zipped_one(store, tmp_path):
    import zipfile

    zipped = shared("dem/N10W110.hgt.zip")
    with zipfile.ZipFile(zipped) as zf:
        zf.extract("N10W110.hgt", tmp_path)
    a = import_raster(store, "hgt_zip", zipped, user="t")
    b = import_raster(store, "hgt_plain", tmp_path / "N10W110.hgt", user="t")
    assert b.driver == "SRTMHGT" and b.crs == "EPSG:4326"
    with rasterio.open(a.path) as da, rasterio.open(b.path) as db:
        assert np.array_equal(da.read(1), db.read(1)) and da.transform == db.transform
