"""Grid-cell statistics against a geopandas overlay reference, through the real app."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from fastapi.testclient import TestClient
from pyproj import Geod

from layers.gpkg import GeoPackageStore
from layers.models import Access
from layers.schemas import LIGHTS, PARKS, PIPES
from tests.twin.query_fixtures import (
    cambridge_store_fixture,  # noqa: F401  (fixture)
    make_layer,
    query_app,
)
from twin.stats import layer_stats

UTM = 32619
GEOD = Geod(ellps="WGS84")


@pytest.fixture(scope="module")
def client(cambridge_store: Path):
    with TestClient(query_app(cambridge_store)) as c:
        yield c


@pytest.fixture(scope="module")
def frames(cambridge_store: Path) -> dict[str, gpd.GeoDataFrame]:
    """The stored layers as GeoDataFrames with their ids (the reference's input)."""
    store = GeoPackageStore(cambridge_store)
    try:
        out = {}
        for name in ("lights", "parks", "roads", "grids"):
            layer = store.load(name, Access.RESTRICTED)
            df = layer.attrs.copy()
            df["fid"] = layer.ids
            out[name] = gpd.GeoDataFrame(df, geometry=layer.geometry, crs=4326)
        return out
    finally:
        store.close()


def _cells(frames, level: str) -> gpd.GeoDataFrame:
    grid = frames["grids"]
    return grid[grid["level"] == level][["fid", "geometry"]].reset_index(drop=True)


def _ref_counts(points: gpd.GeoDataFrame, cells: gpd.GeoDataFrame) -> pd.Series:
    """Points per cell, a point on a shared edge counted in the first cell (grid order)."""
    j = gpd.sjoin(
        points[["fid", "geometry"]], cells.reset_index(names="order"), predicate="intersects"
    )
    j = j.sort_values(["fid_left", "order"]).drop_duplicates("fid_left")
    return j.groupby("fid_right").size()


@pytest.mark.shared_data
@pytest.mark.parametrize("level", ["cell", "district"])
def test_cell_stats_equal_a_geopandas_overlay(client, frames, level: str) -> None:
    body = client.get(
        "/query/stats", params={"level": level, "collections": "lights,roads,parks"}
    ).json()
    cells = _cells(frames, level)
    got = pd.DataFrame([{"fid": f["id"], **f["properties"]} for f in body["features"]])
    got = got.set_index("fid")
    assert set(got.index) == set(cells["fid"]) and body["level"] == level
    # Counts, exact: points once, in the first cell; lines and polygons once each.
    ref_lights = _ref_counts(frames["lights"], cells).reindex(got.index, fill_value=0)
    assert (got["lights_count"] == ref_lights).all()
    for name in ("roads", "parks"):
        j = gpd.sjoin(frames[name][["fid", "geometry"]], cells, predicate="intersects")
        assert got[f"{name}_count"].sum() == j["fid_left"].nunique(), name
    # Lengths and areas within 0.5% of the overlay measured in UTM.
    roads = gpd.overlay(frames["roads"], cells, how="intersection", keep_geom_type=True)
    # A road on an edge two cells share is the earlier cell's (grid order).
    order = {fid: i for i, fid in enumerate(cells["fid"])}
    earlier = [shapely.union_all(cells.geometry[:i].to_numpy()) for i in range(len(cells))]
    prior = [earlier[order[c]] for c in roads["fid_2"]]
    on_edge = gpd.GeoSeries(shapely.intersection(roads.geometry.to_numpy(), prior), crs=4326)
    length = roads.to_crs(UTM).length - on_edge.to_crs(UTM).length.to_numpy()
    ref_len = length.groupby(roads["fid_2"]).sum().reindex(got.index, fill_value=0)
    np.testing.assert_allclose(got["roads_length_m"], ref_len, rtol=0.005, atol=0.05)
    parks = gpd.overlay(frames["parks"], cells, how="intersection", keep_geom_type=True)
    # Where cells overlap, the overlap is the earlier cell's.
    prior = [earlier[order[c]] for c in parks["fid_2"]]
    in_prior = gpd.GeoSeries(shapely.intersection(parks.geometry.to_numpy(), prior), crs=4326)
    area = parks.to_crs(UTM).area - in_prior.to_crs(UTM).area.to_numpy()
    ref_area = area.groupby(parks["fid_2"]).sum().reindex(got.index, fill_value=0)
    np.testing.assert_allclose(got["parks_area_m2"], ref_area, rtol=0.005, atol=0.5)
    assert got["roads_length_m"].sum() > 50_000 and got["lights_count"].sum() > 1_000
    assert body["totals"]["lights_count"] == int(got["lights_count"].sum())


@pytest.mark.shared_data
def test_cell_stats_with_a_cql2_filter(client, frames) -> None:
    body = client.get("/query/stats", params={"level": "cell", "filter": "lamp_type = 'A2'"}).json()
    assert body["collections"] == ["lights"]  # the only visible layer the filter applies to
    cells = _cells(frames, "cell")
    lights = frames["lights"]
    ref = _ref_counts(lights[lights["lamp_type"] == "A2"], cells)
    got = {f["id"]: f["properties"]["lights_count"] for f in body["features"]}
    assert got == ref.reindex(list(got), fill_value=0).to_dict()
    assert 0 < sum(got.values()) < len(lights)


@pytest.mark.shared_data
def test_cell_stats_never_count_a_layer_above_the_caller(client) -> None:
    body = client.get("/query/stats", params={"level": "cell"}).json()
    assert "secret_valves" not in body["collections"]
    assert not any(k.startswith("secret") for k in body["totals"])
    r = client.get("/query/stats", params={"level": "cell", "collections": "secret_valves"})
    assert r.status_code == 404


def test_layer_stats_on_a_hand_made_grid() -> None:
    # Two 0.01° cells side by side; a point on their shared edge; a line across both.
    west, east = shapely.box(0, 0, 0.01, 0.01), shapely.box(0.01, 0, 0.02, 0.01)
    cells = np.array([west, east], dtype=object)
    pts = make_layer(LIGHTS, shapely.points([(0.005, 0.005), (0.01, 0.005), (0.015, 0.002)]))
    s = layer_stats(pts, np.arange(3), cells)
    assert s["count"].tolist() == [2, 1] and set(s) == {"count"}
    line = shapely.LineString([(0.002, 0.002), (0.018, 0.008)])
    pipes = make_layer(PIPES, [line, shapely.LineString([(0.03, 0.0), (0.04, 0.0)])])
    s = layer_stats(pipes, np.arange(2), cells)
    halves = [
        shapely.clip_by_rect(line, 0, 0, 0.01, 0.01),
        shapely.clip_by_rect(line, 0.01, 0, 0.02, 0.01),
    ]
    np.testing.assert_allclose(s["length_m"], [GEOD.geometry_length(h) for h in halves], atol=0.01)
    assert s["count"].sum() == 1  # once, in the cell holding more of it
    # A line on the shared edge (and one mostly east) is the west cell's once, not both cells'.
    edge = shapely.LineString([(0.01, 0.001), (0.01, 0.009)])
    mostly_east = shapely.LineString([(0.008, 0.005), (0.019, 0.005)])
    pipes = make_layer(PIPES, [edge, mostly_east])
    s = layer_stats(pipes, np.arange(2), cells)
    west_part = GEOD.geometry_length(shapely.LineString([(0.008, 0.005), (0.01, 0.005)]))
    np.testing.assert_allclose(
        s["length_m"],
        [GEOD.geometry_length(edge) + west_part, GEOD.geometry_length(mostly_east) - west_part],
        rtol=1e-9,
    )
    assert s["count"].tolist() == [1, 1]
    park = shapely.box(0.008, 0.0, 0.012, 0.004)
    parks = make_layer(PARKS, [park])
    s = layer_stats(parks, np.arange(1), cells)
    ref = [
        abs(GEOD.geometry_area_perimeter(shapely.orient_polygons(shapely.intersection(park, c)))[0])
        for c in cells
    ]
    np.testing.assert_allclose(s["area_m2"], ref, rtol=1e-5)
    # Filtering to no rows gives zeros, not an error.
    empty = layer_stats(parks, np.array([], dtype=np.int64), cells)
    assert empty["count"].tolist() == [0, 0]
