"""Raster sampling: nearest equals rasterio's own sample, bilinear equals a hand-computed
interpolation of the four neighbours, nodata is None, profiles follow the ground."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Geod, Transformer
from rasterio.transform import from_origin

from layers.raster import (
    MemoryRaster,
    RasterSampleError,
    ground_step_m,
    memory_bytes,
    profile,
    read_into_memory,
    sample,
    sample_point,
)
from tests.conftest import shared

GEOD = Geod(ellps="WGS84")
NODATA = -9999.0


def write_tif(path: Path, data: np.ndarray, transform, crs: str | None, nodata=None, **kw) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        **kw,
    ) as dst:
        dst.write(data, 1)
    return path


@pytest.fixture
def ramp_utm(tmp_path: Path) -> tuple[Path, Transformer]:
    """A plane z = 0.01 x - 0.02 y + 5 on a UTM 50N grid near Jiangxia, 10 m cells."""
    x0, y0, res = 230_000.0, 3_362_000.0, 10.0
    rows, cols = np.mgrid[0:60, 0:80]
    x = x0 + (cols + 0.5) * res
    y = y0 - (rows + 0.5) * res
    z = (0.01 * (x - x0) - 0.02 * (y0 - y) + 5).astype("float32")
    z[10, 10] = NODATA
    path = write_tif(tmp_path / "ramp.tif", z, from_origin(x0, y0, res, res), "EPSG:32650", NODATA)
    return path, Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)


def lonlat_inside(path: Path, n: int, seed: int = 1, margin: float = 0.0):
    with rasterio.open(path) as ds:
        b = ds.bounds
        rng = np.random.default_rng(seed)
        w, h = b.right - b.left, b.top - b.bottom
        x = rng.uniform(b.left + margin * w, b.right - margin * w, n)
        y = rng.uniform(b.bottom + margin * h, b.top - margin * h, n)
        to_ll = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        lon, lat = to_ll.transform(x, y)
    return np.asarray(lon), np.asarray(lat), x, y


def rasterio_nearest(path: Path | str, x, y) -> list[float | None]:
    with rasterio.open(path) as ds:
        out = []
        for v in ds.sample(zip(x, y, strict=True), masked=True):
            out.append(None if np.ma.is_masked(v[0]) else float(v[0]))
        return out


def hand_bilinear(path: Path | str, x: float, y: float) -> float | None:
    """Interpolate between the four cell centres around (x, y), read one by one."""
    with rasterio.open(path) as ds:
        col_f, row_f = ~ds.transform @ (x, y)
        own = ds.read(
            1, window=((int(row_f), int(row_f) + 1), (int(col_f), int(col_f) + 1)), masked=True
        )
        if np.ma.is_masked(own[0, 0]):
            return None
        u, v = col_f - 0.5, row_f - 0.5
        c0, r0 = math.floor(u), math.floor(v)
        fx, fy = u - c0, v - r0
        num = den = 0.0
        for dr, dc, w in (
            (0, 0, (1 - fx) * (1 - fy)),
            (0, 1, fx * (1 - fy)),
            (1, 0, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            r = min(max(r0 + dr, 0), ds.height - 1)
            c = min(max(c0 + dc, 0), ds.width - 1)
            z = ds.read(1, window=((r, r + 1), (c, c + 1)), masked=True)[0, 0]
            if np.ma.is_masked(z) or w == 0:
                continue
            num += w * float(z)
            den += w
        return num / den if den > 0 else None


def test_bilinear_reproduces_a_plane_exactly(ramp_utm):
    path, _ = ramp_utm
    lon, lat, x, y = lonlat_inside(path, 300, margin=0.05)
    got = sample(path, lon, lat, method="bilinear")
    x0, y0 = 230_000.0, 3_362_000.0
    expected = 0.01 * (x - x0) - 0.02 * (y0 - y) + 5
    near_hole = (np.abs(x - (x0 + 105)) < 25) & (np.abs(y - (y0 - 105)) < 25)
    for g, e, skip in zip(got, expected, near_hole, strict=True):
        if not skip:
            assert g == pytest.approx(e, abs=1e-4)


def test_nearest_matches_rasterio_sample_and_crs_transform(ramp_utm):
    path, _ = ramp_utm
    lon, lat, x, y = lonlat_inside(path, 400)
    assert sample(path, lon, lat, method="nearest") == rasterio_nearest(path, x, y)


def test_nodata_and_outside_are_none(ramp_utm):
    path, _ = ramp_utm
    ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    hole_lon, hole_lat = ll.transform(230_105.0, 3_362_000.0 - 105.0)  # centre of cell (10, 10)
    far_lon, far_lat = ll.transform(229_000.0, 3_362_000.0)
    assert sample_point(path, hole_lon, hole_lat, method="nearest") is None
    # a point in a nodata cell has no value, whatever its neighbours hold
    assert sample_point(path, hole_lon, hole_lat, method="bilinear") is None
    assert sample(path, [far_lon, float("nan")], [far_lat, 30.0]) == [None, None]


def test_bilinear_next_to_nodata_renormalises_the_valid_neighbours(ramp_utm):
    path, _ = ramp_utm
    ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    x, y = 230_000.0 + 112.0, 3_362_000.0 - 112.0  # in cell (11, 11), next to the hole
    lon, lat = ll.transform(x, y)
    got = sample_point(path, lon, lat)
    assert got is not None
    assert got == pytest.approx(hand_bilinear(path, x, y), abs=1e-4)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "name", ["dem/pysheds_dem.tif", "dem/N10W110.hgt.zip", "dem/osmnx_elevation2.tif"]
)
def test_real_dems_nearest_equals_rasterio_and_bilinear_equals_hand(name):
    path = shared(name)
    gdal = f"zip://{path}!N10W110.hgt" if name.endswith(".zip") else str(path)
    with rasterio.open(gdal) as ds:
        b = ds.bounds
        rng = np.random.default_rng(7)
        x = rng.uniform(b.left, b.right, 500)
        y = rng.uniform(b.bottom, b.top, 500)
        if name.endswith(".zip"):
            # the Clipperton tile is ocean but for the island: sample around it too
            ys, xs = np.nonzero(ds.read(1) > 0)
            cx, cy = ds.xy(ys, xs)
            pick = rng.choice(len(cx), 100)
            x = np.r_[x, np.asarray(cx)[pick] + rng.uniform(-1e-3, 1e-3, 100)]
            y = np.r_[y, np.asarray(cy)[pick] + rng.uniform(-1e-3, 1e-3, 100)]
        ours = sample(ds, x, y, method="nearest")
        assert ours == rasterio_nearest(gdal, x, y)
        assert sum(v is not None for v in ours) > 0.9 * len(ours)
        bil = sample(ds, x[:60], y[:60], method="bilinear")
    for xi, yi, got in zip(x[:60], y[:60], bil, strict=True):
        ref = hand_bilinear(gdal, xi, yi)
        assert (got is None) == (ref is None)
        if ref is not None:
            assert got == pytest.approx(ref, abs=1e-9)


def test_scale_and_offset_give_physical_units(tmp_path):
    data = np.arange(20, dtype="int16").reshape(4, 5)
    path = write_tif(
        tmp_path / "scaled.tif", data, from_origin(114.0, 30.0, 0.01, 0.01), "EPSG:4326"
    )
    with rasterio.open(path, "r+") as ds:
        ds.scales = (0.5,)
        ds.offsets = (100.0,)
    # centre of cell row 1, col 2 holds 7 -> 7 * 0.5 + 100
    assert sample_point(path, 114.025, 29.985, method="nearest") == pytest.approx(103.5)


def test_profile_distances_are_geodesic_and_values_sampled(ramp_utm):
    path, _ = ramp_utm
    ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    xs = np.array([230_050.0, 230_500.0, 230_700.0])
    ys = np.array([3_361_950.0, 3_361_700.0, 3_361_500.0])
    lon, lat = ll.transform(xs, ys)
    line = shapely.LineString(np.c_[lon, lat])
    prof = profile(path, line, step_m=7.5)
    total = GEOD.line_length(lon, lat)
    assert prof.distance_m[0] == 0.0
    assert prof.distance_m[-1] == pytest.approx(total, abs=1e-6)
    assert np.all(np.diff(prof.distance_m) <= 7.5 + 1e-9)
    assert np.all(np.diff(prof.distance_m) > 0)
    # the middle vertex is a sample, at its own position and distance
    mid = GEOD.line_length(lon[:2], lat[:2])
    i = int(np.argmin(np.abs(prof.distance_m - mid)))
    assert prof.distance_m[i] == pytest.approx(mid, abs=1e-6)
    assert (prof.lon[i], prof.lat[i]) == (lon[1], lat[1])
    # each sample point lies at its stated ground distance from the start along the line
    seg = GEOD.inv(np.full(len(prof), lon[0]), np.full(len(prof), lat[0]), prof.lon, prof.lat)[2]
    first = prof.distance_m <= mid
    assert np.allclose(seg[first], prof.distance_m[first], atol=1e-3)
    assert prof.values == sample(path, prof.lon, prof.lat)
    # the plane's value along the ground, from the UTM position of each sample
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)
    px, py = to_utm.transform(prof.lon, prof.lat)
    expected = 0.01 * (np.asarray(px) - 230_000) - 0.02 * (3_362_000 - np.asarray(py)) + 5
    assert np.allclose(np.array(prof.values, dtype=float), expected, atol=1e-3)
    js = prof.to_json()
    assert js[0] == {"distance_m": 0.0, "lon": lon[0], "lat": lat[0], "value": prof.values[0]}


def test_profile_default_step_is_the_cell_size_and_is_capped(ramp_utm):
    path, _ = ramp_utm
    with rasterio.open(path) as ds:
        step = ground_step_m(ds)
    assert step == pytest.approx(10.0, rel=2e-3)  # the UTM scale factor
    ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    lon, lat = ll.transform([230_010.0, 230_790.0], [3_361_990.0, 3_361_990.0])
    prof = profile(path, list(zip(lon, lat, strict=True)))
    assert len(prof) == math.ceil(GEOD.line_length(lon, lat) / step) + 1
    capped = profile(path, list(zip(lon, lat, strict=True)), step_m=0.01, max_samples=50)
    assert len(capped) <= 50


@pytest.mark.parametrize(
    "line, message",
    [([(114.0, 30.0)], "at least two"), ([(114.0, 30.0), (float("inf"), 30.0)], "non-finite")],
)
def test_profile_refuses_bad_lines(ramp_utm, line, message):
    with pytest.raises(RasterSampleError, match=message):
        profile(ramp_utm[0], line)


def test_unknown_band_and_method_are_refused(ramp_utm):
    with pytest.raises(RasterSampleError, match="no band 2"):
        sample(ramp_utm[0], [114.3], [30.3], band=2)
    with pytest.raises(RasterSampleError, match="unknown sampling method"):
        sample(ramp_utm[0], [114.3], [30.3], method="cubic")  # type: ignore[arg-type]


# -- rasters held in memory ---------------------------------------------------------------------


@pytest.fixture
def two_bands(tmp_path: Path) -> Path:
    """Two lon/lat float32 bands with nodata holes, the second with a scale and offset."""
    rng = np.random.default_rng(3)
    z = rng.normal(30, 5, (70, 90)).astype("float32")
    z[rng.random(z.shape) < 0.05] = NODATA
    path = tmp_path / "two.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=90,
        height=70,
        count=2,
        dtype="float32",
        crs="EPSG:4326",
        transform=from_origin(114.2, 30.5, 0.001, 0.001),
        nodata=NODATA,
    ) as dst:
        dst.write(z, 1)
        dst.write(np.round(z * 3), 2)
        dst.scales, dst.offsets = (1.0, 0.25), (0.0, -10.0)
    return path


@pytest.fixture
def int16_scaled(tmp_path: Path) -> Path:
    """An int16 DEM (decimetres) with nodata holes and a scale and offset to metres, as
    integer DEMs are stored."""
    rng = np.random.default_rng(4)
    z = rng.integers(-2000, 30000, (60, 80)).astype("int16")
    z[rng.random(z.shape) < 0.05] = -32768
    path = write_tif(
        tmp_path / "int16.tif", z, from_origin(114.2, 30.5, 0.001, 0.001), "EPSG:4326", -32768
    )
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (0.1,), (-5.0,)
    return path


def _points(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random points over the raster and a margin around it, with a NaN among them."""
    with rasterio.open(path) as ds:
        b = ds.bounds
        to_ll = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    rng = np.random.default_rng(11)
    w, h = b.right - b.left, b.top - b.bottom
    x = rng.uniform(b.left - 0.05 * w, b.right + 0.05 * w, n)
    y = rng.uniform(b.bottom - 0.05 * h, b.top + 0.05 * h, n)
    lon, lat = (np.asarray(v) for v in to_ll.transform(x, y))
    lon[0] = np.nan
    return lon, lat


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_memory_raster_samples_exactly_as_the_file(ramp_utm, two_bands, int16_scaled, method):
    for path in (ramp_utm[0], two_bands, int16_scaled):
        mem = read_into_memory(path)
        assert isinstance(mem, MemoryRaster)
        lon, lat = _points(path, 3000)
        with rasterio.open(path) as ds:
            assert mem.count == ds.count
            assert [b.dtype for b in mem.bands] == [np.dtype(t) for t in ds.dtypes]
            for band in range(1, ds.count + 1):
                from_file = sample(ds, lon, lat, method=method, band=band)
                from_memory = sample(mem, lon, lat, method=method, band=band)
                assert from_memory == from_file  # the same floats and Nones, not approximately
                assert 0 < sum(v is None for v in from_file) < len(from_file)


def test_memory_raster_nodata_scale_and_profile(two_bands):
    mem = read_into_memory(two_bands)
    assert mem is not None
    with rasterio.open(two_bands) as ds:
        z = ds.read(1)
        row, col = map(int, np.argwhere(z == NODATA)[0])
        lon, lat = ds.xy(row, col)
        raw = float(ds.read(2)[5, 7])
        lon2, lat2 = ds.xy(5, 7)
        # a nodata cell is None from memory too, and band 2 is scaled to physical units
        assert sample_point(mem, lon, lat, method="nearest") is None
        assert sample_point(mem, lon2, lat2, method="nearest", band=2) == raw * 0.25 - 10.0
        line = [(114.201, 30.499), (114.27, 30.45), (114.285, 30.44)]
        assert profile(mem, line).values == profile(ds, line).values
        assert ground_step_m(mem) == ground_step_m(ds)


def test_memory_raster_byte_limit(two_bands):
    with rasterio.open(two_bands) as ds:
        need = memory_bytes(ds)
    assert need == 70 * 90 * 2 * (4 + 1)
    assert read_into_memory(two_bands, max_bytes=need - 1) is None
    mem = read_into_memory(two_bands, max_bytes=need)
    assert mem is not None and mem.nbytes <= need
    with pytest.raises(RasterSampleError, match="no band 3"):
        sample(mem, [114.21], [30.49], band=3)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["dem/pysheds_dem.tif", "dem/osmnx_elevation2.tif"])
def test_real_dems_sample_the_same_from_memory(name):
    path = shared(name)
    mem = read_into_memory(path)
    assert mem is not None
    lon, lat = _points(path, 2000)
    for method in ("nearest", "bilinear"):
        assert sample(mem, lon, lat, method=method) == sample(path, lon, lat, method=method)


def test_a_few_points_give_the_same_values_as_many(ramp_utm, two_bands):
    # Up to a few points take the one-by-one path; many the array path: same floats.
    for path in (ramp_utm[0], two_bands):
        mem = read_into_memory(path)
        lon, lat = _points(path, 400)
        with rasterio.open(path) as ds:
            for src in (ds, mem):
                for band in range(1, ds.count + 1):
                    many = sample(src, lon, lat, band=band)
                    one_by_one = [
                        sample(src, [a], [b], band=band)[0] for a, b in zip(lon, lat, strict=True)
                    ]
                    assert one_by_one == many
                    assert sample(src, lon[:3], lat[:3], band=band) == many[:3]
