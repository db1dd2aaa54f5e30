"""DEM tiles: relief colours and hillshade against references computed independently."""

from __future__ import annotations

import io

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Geod, Transformer
from rasterio.transform import from_origin

from tests.conftest import shared
from tiles.errors import InvalidTileRequest, RasterError
from tiles.grid import TMS, Tile, xy_bounds
from tiles.raster import ALTITUDE, AZIMUTH, relief_colour, render_raster_tile

LON0, LAT0, RES, N = 114.20, 30.45, 0.0005, 400
A, B, C = 3000.0, -2000.0, 150.0  # metres per degree of longitude and latitude, base height


def plane(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return C + A * (lon - LON0) + B * (lat - LAT0)


@pytest.fixture(scope="module")
def dem(tmp_path_factory) -> tuple[str, float, float]:
    """A tilted plane DEM in EPSG:4326 with a nodata hole; bilinear reads of a plane are exact."""
    path = tmp_path_factory.mktemp("dem") / "plane.tif"
    cols, rows = np.meshgrid(np.arange(N), np.arange(N))
    lon = LON0 + (cols + 0.5) * RES
    lat = LAT0 - (rows + 0.5) * RES
    z = plane(lon, lat).astype(np.float32)
    z[300:360, 300:360] = -9999
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=N,
        height=N,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=from_origin(LON0, LAT0, RES, RES),
        nodata=-9999,
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as dst:
        dst.write(z, 1)
    valid = z[z != -9999]
    return str(path), float(valid.min()), float(valid.max())


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _centres(t: Tile) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of every output pixel centre, by pyproj."""
    b = xy_bounds(t)
    size = (b.maxx - b.minx) / 256
    x = b.minx + (np.arange(256) + 0.5) * size
    y = b.maxy - (np.arange(256) + 0.5) * size
    xx, yy = np.meshgrid(x, y)
    return Transformer.from_crs(3857, 4326, always_xy=True).transform(xx, yy)


def _inner_tile(z: int) -> Tile:
    t = TMS.tile(LON0 + 0.05, LAT0 - 0.05, z)
    return Tile(t.x, t.y, t.z)


def test_relief_colours_follow_the_elevation(dem) -> None:
    path, low, high = dem
    t = _inner_tile(13)
    px = _pixels(render_raster_tile(path, t, "relief"))
    assert px.shape == (256, 256, 4)
    lon, lat = _centres(t)
    inside = (
        (lon > LON0 + 2 * RES)
        & (lon < LON0 + (N - 2) * RES)
        & (lat < LAT0 - 2 * RES)
        & (lat > LAT0 - (N - 2) * RES)
    )
    expected = relief_colour(plane(lon, lat), low, high)
    diff = np.abs(px[..., :3].astype(int) - expected.astype(int))[inside]
    assert inside.sum() > 10_000
    assert diff.max() <= 1
    assert (px[..., 3][inside] == 255).all()
    assert len(np.unique(px[..., 0][inside])) > 20  # a real gradient, not a flat fill


def test_hillshade_of_a_plane_is_the_cosine_to_the_sun(dem) -> None:
    path, _, _ = dem
    t = _inner_tile(13)
    px = _pixels(render_raster_tile(path, t, "hillshade"))
    assert px.shape == (256, 256, 2)
    lon, lat = _centres(t)
    # Slope from ground distances on the WGS84 ellipsoid (pyproj.Geod), not from our code.
    geod = Geod(ellps="WGS84")
    lat_c = float(np.mean(lat))
    _, _, m_per_deg_lon = geod.inv(LON0, lat_c, LON0 + 1e-3, lat_c)
    _, _, m_per_deg_lat = geod.inv(LON0, lat_c, LON0, lat_c + 1e-3)
    dz_east, dz_north = A / (m_per_deg_lon * 1e3), B / (m_per_deg_lat * 1e3)
    normal = np.array([-dz_east, -dz_north, 1.0]) / np.sqrt(dz_east**2 + dz_north**2 + 1)
    az, alt = np.radians(AZIMUTH), np.radians(ALTITUDE)
    sun = np.array([np.sin(az) * np.cos(alt), np.cos(az) * np.cos(alt), np.sin(alt)])
    expected = 255 * max(float(normal @ sun), 0.0)
    inside = (
        (lon > LON0 + 3 * RES)
        & (lon < LON0 + 290 * RES)
        & (lat < LAT0 - 3 * RES)
        & (lat > LAT0 - 290 * RES)
    )
    grey = px[..., 0][inside].astype(float)
    assert abs(grey.mean() - expected) <= 1.5
    assert np.abs(grey - expected).max() <= 3
    assert (px[..., 1][inside] == 255).all()


def test_nodata_is_transparent_and_outside_is_none(dem) -> None:
    path, _, _ = dem
    hole_lon, hole_lat = LON0 + 330 * RES, LAT0 - 330 * RES
    t = TMS.tile(hole_lon, hole_lat, 13)
    t = Tile(t.x, t.y, t.z)
    for style in ("relief", "hillshade"):
        png = render_raster_tile(path, t, style)
        px = _pixels(png)
        lon, lat = _centres(t)
        in_hole = (np.abs(lon - hole_lon) < 20 * RES) & (np.abs(lat - hole_lat) < 20 * RES)
        assert in_hole.sum() > 100 and (px[..., -1][in_hole] == 0).all()
    far = TMS.tile(10.0, 50.0, 12)
    assert render_raster_tile(path, Tile(far.x, far.y, far.z), "relief") is None


def test_bad_style_and_unreadable_file(dem, tmp_path) -> None:
    path, _, _ = dem
    with pytest.raises(InvalidTileRequest):
        render_raster_tile(path, _inner_tile(12), "contours")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(RasterError):
        render_raster_tile(broken, _inner_tile(12), "relief")


def test_relief_of_a_real_dem_matches_rasterio_samples() -> None:
    path = shared("dem/pysheds_dem.tif")
    with rasterio.open(path) as src:
        z = src.read(1).astype(float)
        nodata = src.nodata
        z[z == nodata] = np.nan
        low, high = float(np.nanmin(z)), float(np.nanmax(z))
        t = TMS.tile(-97.33, 32.67, 13)
        t = Tile(t.x, t.y, t.z)
        px = _pixels(render_raster_tile(path, t, "relief"))
        lon, lat = _centres(t)
        rng = np.random.default_rng(1)
        picks = rng.integers(0, 256, (300, 2))
        tf = src.transform

        def colrow(x: float, y: float) -> tuple[float, float]:
            return (x - tf.c) / tf.a, (y - tf.f) / tf.e

        checked = 0
        for r, c in picks:
            col, row = colrow(lon[r, c], lat[r, c])
            c0, r0 = int(np.floor(col - 0.5)), int(np.floor(row - 0.5))
            if not (0 <= c0 < src.width - 1 and 0 <= r0 < src.height - 1):
                continue
            around = z[r0 : r0 + 2, c0 : c0 + 2]
            if np.isnan(around).any():
                continue
            # Bilinear resampling lands between the 4 source pixels around the centre.
            candidates = relief_colour(np.linspace(around.min(), around.max(), 64), low, high)
            got = px[r, c, :3].astype(int)
            assert np.abs(candidates.astype(int) - got).max(axis=1).min() <= 2, (r, c, around)
            assert px[r, c, 3] == 255
            checked += 1
        assert checked > 200
        # rasterio's own sampling agrees with the array read used above.
        sample = next(src.sample([(lon[128, 128], lat[128, 128])]))[0]
        col, row = colrow(lon[128, 128], lat[128, 128])
        assert sample == z[int(row), int(col)]
