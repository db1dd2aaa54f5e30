"""Grid-cell statistics on the demo city add up at every level, against shapely and pyproj.

The reference is computed independently: what lies inside a level's cells is each feature
intersected with the union of the cells, measured with `pyproj.Geod`; per cell, each feature is
clipped by the cell with geopandas and measured with `pyproj.Geod`, less the part lying on an
edge shared with an earlier cell (grid order), which that earlier cell holds.
"""

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
from layers.schemas import GRID_LEVELS
from tests.twin.query_fixtures import demo_store_fixture, query_app  # noqa: F401  (fixture)

GEOD = Geod(ellps="WGS84")
LAYERS = ("pipes", "parks", "lights", "valves")


def _length(g: shapely.Geometry) -> float:
    return float(GEOD.geometry_length(g)) if g is not None and not g.is_empty else 0.0


def _area(g: shapely.Geometry) -> float:
    if g is None or g.is_empty:
        return 0.0
    return abs(float(GEOD.geometry_area_perimeter(shapely.orient_polygons(g))[0]))


@pytest.fixture(scope="module")
def frames(demo_store: Path) -> dict[str, gpd.GeoDataFrame]:
    store = GeoPackageStore(demo_store, create=False)
    try:
        out = {}
        for name in (*LAYERS, "grids"):
            layer = store.load(name, Access.RESTRICTED)
            df = pd.DataFrame(
                {
                    "fid": layer.ids,
                    "level": layer.attrs.get("level"),
                    "network": layer.attrs.get("network"),
                }
            )
            out[name] = gpd.GeoDataFrame(df, geometry=layer.geometry, crs=4326)
        return out
    finally:
        store.close()


@pytest.fixture(scope="module")
def client(demo_store: Path):
    with TestClient(query_app(demo_store, scope="restricted")) as c:
        yield c


def _cells(frames, level: str) -> gpd.GeoDataFrame:
    grid = frames["grids"]
    return grid[grid["level"] == level][["fid", "geometry"]].reset_index(drop=True)


def _per_cell(features: gpd.GeoDataFrame, cells: gpd.GeoDataFrame, measure) -> pd.DataFrame:
    """Each (feature, cell) piece's measure, less what lies in earlier cells' edges."""
    pieces = gpd.overlay(
        features[["fid", "geometry"]],
        cells.reset_index(names="order").rename(columns={"fid": "cell"}),
        how="intersection",
        keep_geom_type=False,
    )
    earlier = {
        i: shapely.union_all(cells.geometry[:i][cells.geometry[:i].intersects(c)].to_numpy())
        for i, c in enumerate(cells.geometry)
    }
    values = []
    for g, i in zip(pieces.geometry, pieces["order"], strict=True):
        e = earlier[i]
        on_edge = shapely.intersection(g, e) if e is not None and not e.is_empty else None
        values.append(measure(g) - measure(on_edge))
    return pd.DataFrame({"fid": pieces["fid"], "order": pieces["order"], "value": values})


@pytest.mark.parametrize("level", GRID_LEVELS)
def test_demo_cells_add_up_to_what_lies_inside_them(client, frames, level: str) -> None:
    body = client.get(
        "/query/stats", params={"level": level, "collections": ",".join(LAYERS)}
    ).json()
    cells = _cells(frames, level)
    assert [f["id"] for f in body["features"]] == cells["fid"].tolist()
    got = pd.DataFrame([f["properties"] for f in body["features"]])
    union = shapely.union_all(cells.geometry.to_numpy())
    # Totals: what lies inside the union of the level's cells.
    for name, col, measure in (("pipes", "length_m", _length), ("parks", "area_m2", _area)):
        inside = shapely.intersection(frames[name].geometry.to_numpy(), union)
        ref = sum(measure(g) for g in inside)
        assert ref > 0
        assert body["totals"][f"{name}_{col}"] == pytest.approx(ref, rel=1e-4), (name, level)
        assert got[f"{name}_{col}"].sum() == pytest.approx(ref, rel=1e-4)
        meets = shapely.intersects(frames[name].geometry.to_numpy(), union).sum()
        assert body["totals"][f"{name}_count"] == meets
    for name in ("lights", "valves"):
        assert (
            body["totals"][f"{name}_count"]
            == shapely.intersects(frames[name].geometry.to_numpy(), union).sum()
        )
    # Per cell: an independent clip and measure.
    for name, col, measure in (("pipes", "length_m", _length), ("parks", "area_m2", _area)):
        ref = _per_cell(frames[name], cells, measure)
        per = ref.groupby("order")["value"].sum().reindex(range(len(cells)), fill_value=0.0)
        np.testing.assert_allclose(got[f"{name}_{col}"], per, rtol=1e-4, atol=0.05)
        # Counted once, in the cell holding the largest part (the first of equals).
        best = ref.sort_values(["fid", "value", "order"], ascending=[True, False, True])
        best = best.drop_duplicates("fid")
        best = best[best["value"] > 1e-6]
        counts = best.groupby("order").size().reindex(range(len(cells)), fill_value=0)
        # Features that only touch the cells are counted too, by the first they meet.
        assert (got[f"{name}_count"] >= counts).all(), (name, level)
        assert got[f"{name}_count"].sum() - counts.sum() == (
            shapely.intersects(frames[name].geometry.to_numpy(), union).sum() - len(best)
        )
    # Points: each in the first cell it falls in.
    for name in ("lights", "valves"):
        j = gpd.sjoin(
            frames[name][["fid", "geometry"]],
            cells.reset_index(names="order"),
            predicate="intersects",
        )
        j = j.sort_values(["fid_left", "order"]).drop_duplicates("fid_left")
        ref_n = j.groupby("order").size().reindex(range(len(cells)), fill_value=0)
        assert got[f"{name}_count"].tolist() == ref_n.tolist()


def test_demo_pipe_totals_are_the_same_at_every_level(client) -> None:
    totals = [
        client.get("/query/stats", params={"level": lv, "collections": "pipes"}).json()["totals"]
        for lv in GRID_LEVELS
    ]
    lengths = [t["pipes_length_m"] for t in totals]
    assert max(lengths) - min(lengths) < 1e-4 * max(lengths)
    assert len({t["pipes_count"] for t in totals}) == 1


@pytest.mark.parametrize("level", ["street", "cell"])
def test_demo_filtered_pipes_add_up_per_cell(client, frames, level: str) -> None:
    """A filter keeps the split exact: water mains per cell against the same independent clip
    over the water mains alone."""
    body = client.get(
        "/query/stats",
        params={"level": level, "collections": "pipes", "filter": "network = 'water'"},
    ).json()
    cells = _cells(frames, level)
    got = pd.DataFrame([f["properties"] for f in body["features"]])
    water = frames["pipes"][frames["pipes"]["network"] == "water"]
    assert 0 < len(water) < len(frames["pipes"])
    ref = _per_cell(water, cells, _length)
    per = ref.groupby("order")["value"].sum().reindex(range(len(cells)), fill_value=0.0)
    np.testing.assert_allclose(got["pipes_length_m"], per, rtol=1e-4, atol=0.05)
    union = shapely.union_all(cells.geometry.to_numpy())
    assert (
        body["totals"]["pipes_count"] == shapely.intersects(water.geometry.to_numpy(), union).sum()
    )
