"""GCJ-02 and BD-09 offsets undone to within 0.5 m, checked with pyproj.Geod distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from pyproj import Geod

from importers.coords import (
    bd09_to_wgs84,
    gcj02_to_wgs84,
    in_china,
    undo_offsets,
    wgs84_to_gcj02,
)

GEOD = Geod(ellps="WGS84")


def reference_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """The published WGS84 -> GCJ-02 formula, written out point by point as a reference."""
    a, ee = 6378245.0, 0.00669342162296594323
    x, y = lon - 105.0, lat - 35.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlat += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2 / 3
    dlat += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2 / 3
    dlat += (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2 / 3
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    dlon += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2 / 3
    dlon += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2 / 3
    dlon += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2 / 3
    rad = lat / 180.0 * math.pi
    magic = 1 - ee * math.sin(rad) ** 2
    sq = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((a * (1 - ee)) / (magic * sq) * math.pi)
    dlon = (dlon * 180.0) / (a / sq * math.cos(rad) * math.pi)
    return lon + dlon, lat + dlat


def reference_bd09(lon: float, lat: float) -> tuple[float, float]:
    """WGS84 -> BD-09: GCJ-02 first, then Baidu's published formula."""
    x, y = reference_gcj02(lon, lat)
    x_pi = math.pi * 3000.0 / 180.0
    z = math.sqrt(x * x + y * y) + 0.00002 * math.sin(y * x_pi)
    theta = math.atan2(y, x) + 0.000003 * math.cos(x * x_pi)
    return z * math.cos(theta) + 0.0065, z * math.sin(theta) + 0.006


# Known WGS84 points: Jiangxia district, Wuhan centre, Beijing, Shanghai, Urumqi, Harbin.
TRUE = np.array(
    [
        (114.3200, 30.3500),
        (114.3055, 30.5928),
        (116.3975, 39.9087),
        (121.4737, 31.2304),
        (87.6168, 43.8256),
        (126.5350, 45.8038),
    ]
)


def distances_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    return np.abs(GEOD.inv(lon1, lat1, lon2, lat2)[2])


def test_forward_matches_reference_and_offset_is_hundreds_of_metres():
    fx, fy = wgs84_to_gcj02(TRUE[:, 0], TRUE[:, 1])
    ref = np.array([reference_gcj02(x, y) for x, y in TRUE])
    np.testing.assert_allclose(np.c_[fx, fy], ref, rtol=0, atol=1e-12)
    offset = distances_m(TRUE[:, 0], TRUE[:, 1], fx, fy)
    assert (offset > 100).all() and (offset < 1000).all()


@pytest.mark.parametrize(
    "reference, inverse", [(reference_gcj02, gcj02_to_wgs84), (reference_bd09, bd09_to_wgs84)]
)
def test_inverse_lands_within_half_a_metre(reference, inverse):
    shifted = np.array([reference(x, y) for x, y in TRUE])
    back_x, back_y = inverse(shifted[:, 0], shifted[:, 1])
    err = distances_m(TRUE[:, 0], TRUE[:, 1], back_x, back_y)
    assert err.max() < 0.5
    assert err.max() < 0.001  # the iteration converges far below the requirement


def test_points_outside_china_are_left_alone():
    lon, lat = np.array([-71.1, 2.35, 139.69]), np.array([42.37, 48.86, 35.69])
    assert not in_china(lon, lat).any()
    x, y = gcj02_to_wgs84(lon, lat)
    np.testing.assert_array_equal(x, lon)
    np.testing.assert_array_equal(y, lat)


def test_undo_offsets_moves_every_vertex_of_every_geometry():
    grid = np.array([(114.30 + i * 0.01, 30.30 + j * 0.01) for i in range(5) for j in range(5)])
    shifted = np.array([reference_gcj02(x, y) for x, y in grid])
    geoms = np.array(
        [
            shapely.Point(shifted[0]),
            shapely.LineString(shifted[:5]),
            shapely.Polygon(shifted[[0, 4, 24, 20]]),
            None,
        ],
        dtype=object,
    )
    out = undo_offsets(geoms, "gcj02")
    assert out[3] is None
    got = shapely.get_coordinates(out[:3])
    want = np.vstack([grid[[0]], grid[:5], grid[[0, 4, 24, 20, 0]]])
    err = distances_m(got[:, 0], got[:, 1], want[:, 0], want[:, 1])
    assert err.max() < 0.5


def test_gcj02_and_bd09_files_land_within_half_a_metre_with_their_text(store, tmp_path):
    import geopandas as gpd

    from tests.importers.conftest import by_id, load, max_distance_m, run_import

    names = ["江夏区政府", "武汉站", "黄鹤楼", "光谷广场", "汉口站", "东湖"]
    for coords, reference in (("gcj02", reference_gcj02), ("bd09", reference_bd09)):
        shifted = [reference(x, y) for x, y in TRUE]
        path = tmp_path / f"{coords}.geojson"
        ids = [f"{coords}-{i}" for i in range(len(TRUE))]
        gpd.GeoDataFrame(
            {"LIGHT_ID": ids, "CIRCUIT": names},
            geometry=[shapely.Point(p) for p in shifted],
            crs="EPSG:4326",
        ).to_file(path, driver="GeoJSON")
        report = run_import(store, "lights", path, coords=coords)
        assert report.added == len(TRUE) and report.coords == coords
        layer = load(store, "lights")
        rows = [layer.row(f"{coords}:{i}") for i in ids]
        assert max_distance_m(layer.geometry[rows], shapely.points(TRUE)) < 0.5
        circuits = by_id(layer, "circuit")
        assert [circuits[f"{coords}:{i}"] for i in ids] == names
        # Without --coords the same file sits hundreds of metres off.
        run_import(store, "lights", path, source="raw")
        layer = load(store, "lights")
        raw = [layer.row(f"raw:{i}") for i in ids]
        assert max_distance_m(layer.geometry[raw], shapely.points(TRUE)) > 100
