"""Geometry repair and rejection, each with its row and reason."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

from importers.errors import WrongGeometryType
from importers.repair import repair
from layers.models import GeometryFamily
from tests.importers.conftest import load, run_import

X, Y = 114.32, 30.35


def bowtie() -> shapely.Polygon:
    # Self-intersecting at its centre: two triangles of 0.01 x 0.01 / 4 degrees^2 each.
    return shapely.Polygon([(X, Y), (X + 0.01, Y + 0.01), (X + 0.01, Y), (X, Y + 0.01)])


def test_polygons_are_repaired_oriented_or_rejected_with_reasons():
    cw = shapely.Polygon([(X, Y), (X, Y + 0.01), (X + 0.01, Y + 0.01), (X + 0.01, Y)])
    collapsed = shapely.Polygon([(X, Y), (X + 0.01, Y), (X + 0.02, Y), (X, Y)])
    geoms = np.array(
        [bowtie(), cw, None, shapely.Polygon(), collapsed, shapely.Point(X, Y)], dtype=object
    )
    check = repair(geoms, GeometryFamily.POLYGON)
    assert check.keep.tolist() == [True, True, False, False, False, False]
    fixed = check.geometry[0]
    assert fixed.is_valid and fixed.geom_type == "MultiPolygon"
    assert fixed.area == pytest.approx(2 * 0.01 * 0.01 / 4, rel=1e-9)
    assert list(check.repaired) == ["invalid geometry made valid (Self-intersection)"]
    assert shapely.is_ccw(check.geometry[1].exterior)
    assert check.normalised == {"polygon rings turned counter-clockwise": 2}
    assert {k: v.tolist() for k, v in check.rejected.items()} == {
        "no geometry (missing or unreadable)": [2],
        "empty geometry": [3],
        "a polygon with no area (Self-intersection)": [4],
        "Point geometry in a polygon layer": [5],
    }


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_lines_points_and_coordinates():
    geoms = np.array(
        [
            shapely.LineString([(X, Y, 5), (X + 0.01, Y, 6)]),
            shapely.LineString([(X, Y), (X, Y)]),
            shapely.LineString([(X, Y), (np.nan, Y)]),
            shapely.LineString([(500000, 3300000), (500010, 3300000)]),
            shapely.GeometryCollection(
                [
                    shapely.LineString([(X, Y), (X, Y + 1e-3)]),
                    shapely.LineString([(X, Y), (X + 1e-3, Y)]),
                ]
            ),
            shapely.GeometryCollection(
                [shapely.Point(X, Y), shapely.LineString([(X, Y), (X, 31)])]
            ),
            shapely.MultiLineString([[(X, Y), (X, Y + 1e-3)], [(X + 1, Y), (X + 1, Y + 1e-3)]]),
        ],
        dtype=object,
    )
    check = repair(geoms, GeometryFamily.LINE)
    assert check.keep.tolist() == [True, False, False, False, True, False, True]
    assert not shapely.has_z(check.geometry[0]) and check.normalised["heights (Z) dropped"] == 1
    assert check.geometry[4].geom_type == "MultiLineString"
    assert shapely.get_num_geometries(check.geometry[6]) == 2  # multi-part stays whole
    assert {k: v.tolist() for k, v in check.rejected.items()} == {
        "a line with fewer than 2 distinct points (Too few points in geometry component)": [1],
        "coordinates are not finite numbers": [2],
        "coordinates outside longitude/latitude": [3],
        "geometry collection of mixed or wrong kinds": [5],
    }


def test_through_the_pipeline_counts_add_up(store, tmp_path):
    good = [shapely.box(X + i * 0.01, Y, X + i * 0.01 + 0.005, Y + 0.005) for i in range(5)]
    geoms = [*good, bowtie(), shapely.Polygon(), shapely.LineString([(X, Y), (X, Y + 0.1)])]
    frame = gpd.GeoDataFrame(
        {"PARK_ID": [f"p{i}" for i in range(len(geoms))], "NAME": ["park"] * len(geoms)},
        geometry=geoms,
        crs="EPSG:4326",
    )
    path = tmp_path / "parks.geojson"
    frame.to_file(path, driver="GeoJSON")
    report = run_import(store, "parks", path)
    assert report.read == 8
    assert report.added == 6 == report.read - len(report.rejected)
    assert [(r.row, r.source_id) for r in report.rejected] == [(7, "PARK_ID p6"), (8, "PARK_ID p7")]
    assert [r.row for r in report.repaired] == [6]
    assert len(load(store, "parks")) == 6


def test_a_file_of_the_wrong_kind_is_refused_whole(store, tmp_path):
    path = tmp_path / "points.geojson"
    gpd.GeoDataFrame(
        {"a": [1, 2]}, geometry=[shapely.Point(X, Y), shapely.Point(X, Y + 1e-3)], crs="EPSG:4326"
    ).to_file(path, driver="GeoJSON")
    with pytest.raises(WrongGeometryType, match=r"holds Point geometries.*pipes layer takes lines"):
        run_import(store, "pipes", path)
