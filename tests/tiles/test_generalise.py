"""The low-zoom policy on a generated layer: minzoom, sub-pixel drops, clusters, priorities,
feature cap, byte budget, simplification."""

from __future__ import annotations

import geopandas as gpd
import mapbox_vector_tile
import numpy as np
import pytest
import shapely

from layers.layer import Layer
from layers.schemas import LIGHTS, PIPES
from tests.tiles.conftest import make_layer
from tiles.grid import TMS, Tile, xy_bounds
from tiles.render import render_tile
from tiles.settings import TileSettings

LON, LAT = 114.32, 30.35


@pytest.fixture(scope="module")
def pipes() -> Layer:
    """6 000 pipes over ~40 km: long mains, ordinary pipes, and stubs of a few metres."""
    rng = np.random.default_rng(11)
    n = 6000
    start = np.array([LON, LAT]) + rng.normal(0, 0.08, (n, 2))
    length = np.where(
        rng.random(n) < 0.1, rng.uniform(0.00002, 0.00006, n), rng.uniform(0.001, 0.02, n)
    )
    ang = rng.uniform(0, 2 * np.pi, n)
    mid = start + np.column_stack([np.cos(ang), np.sin(ang)]) * length[:, None] / 2
    end = start + np.column_stack([np.cos(ang), np.sin(ang)]) * length[:, None]
    jitter = rng.normal(0, 0.00001, (n, 2))
    geoms = shapely.linestrings(np.stack([start, mid + jitter, end], axis=1))
    return make_layer(
        PIPES, list(geoms), diameter_mm=rng.choice([100.0, 200.0, 300.0, 600.0, 1200.0], n)
    )


@pytest.fixture(scope="module")
def lights() -> Layer:
    rng = np.random.default_rng(12)
    pts = np.array([LON, LAT]) + rng.normal(0, 0.02, (5000, 2))
    return make_layer(LIGHTS, list(shapely.points(pts)), status=rng.choice(["on", "off"], 5000))


def _gdf(layer: Layer) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"id": layer.ids, **{c: layer.attrs[c] for c in layer.schema.field_names}},
        geometry=list(layer.geometry),
        crs="EPSG:4326",
    ).to_crs(3857)


def _centre_tile(z: int) -> Tile:
    t = TMS.tile(LON, LAT, z)
    return Tile(t.x, t.y, z)


def _decode(raw: bytes) -> dict:
    return mapbox_vector_tile.decode(raw) if raw else {}


def test_below_minzoom_a_layer_is_absent(pipes, lights) -> None:
    s = TileSettings(_env_file=None)
    assert render_tile([(pipes, None)], _centre_tile(7), s) == b""
    assert render_tile([(lights, None)], _centre_tile(11), s) == b""
    assert "pipes" in _decode(render_tile([(pipes, None)], _centre_tile(8), s))
    forced = TileSettings(_env_file=None, minzoom={"pipes": 0})
    # Forced down to zoom 0, the world tile stays small: the whole city is sub-pixel there.
    assert len(render_tile([(pipes, None)], Tile(0, 0, 0), forced)) < 500_000


@pytest.mark.parametrize("z", [9, 11, 13])
def test_sub_pixel_features_go_and_the_most_important_stay(pipes, z: int) -> None:
    cap = 400
    s = TileSettings(_env_file=None, max_features=cap)
    t = _centre_tile(z)
    b = xy_bounds(t)
    px = (b.maxx - b.minx) / 512
    ref = _gdf(pipes)
    ref = ref[ref.intersects(shapely.box(*b))]
    bx = ref.geometry.bounds
    size = np.maximum(bx.maxx - bx.minx, bx.maxy - bx.miny)
    visible = ref[size >= px]
    sub_pixel = set(ref[size < px]["id"])
    got = _decode(render_tile([(pipes, None)], t, s))["pipes"]["features"]
    got_ids = {f["properties"]["id"] for f in got}
    assert len(got) == min(cap, len(visible))
    assert not got_ids & sub_pixel
    assert got_ids <= set(visible["id"])
    # Priority: no dropped pipe is larger in diameter than a kept one.
    kept = visible[visible["id"].isin(got_ids)]
    dropped = visible[~visible["id"].isin(got_ids)]
    if len(dropped):
        assert kept["diameter_mm"].min() >= dropped["diameter_mm"].max()
    assert sub_pixel, "the fixture has stubs smaller than a pixel at this zoom"


def test_simplified_lines_stay_within_half_a_pixel(pipes) -> None:
    s = TileSettings(_env_file=None)
    t = _centre_tile(12)
    b = xy_bounds(t)
    unit = (b.maxx - b.minx) / s.extent
    px = (b.maxx - b.minx) / 512
    ref = _gdf(pipes).set_index("id")
    got = _decode(render_tile([(pipes, None)], t, s))["pipes"]["features"]
    fewer = 0
    for f in got[:300]:
        coords = np.array(f["geometry"]["coordinates"], dtype=float)
        mine = shapely.LineString(
            np.column_stack([b.minx + coords[:, 0] * unit, b.miny + coords[:, 1] * unit])
        )
        orig = shapely.clip_by_rect(
            ref.geometry[f["properties"]["id"]],
            *shapely.box(*b).buffer(s.buffer * unit, join_style="mitre").bounds,
        )
        assert shapely.hausdorff_distance(mine, orig) <= s.simplify_px * px + unit
        fewer += len(coords) < shapely.get_num_coordinates(orig)
    assert fewer > 0  # the middle vertex, off the line by ~1 m, is simplified away somewhere


@pytest.mark.parametrize("z", [12, 13])
def test_points_are_clustered_and_every_point_is_counted(lights, z: int) -> None:
    s = TileSettings(_env_file=None)
    t = _centre_tile(z)
    b = xy_bounds(t)
    ref = _gdf(lights)
    inside = ref[ref.intersects(shapely.box(*b))]
    got = _decode(render_tile([(lights, None)], t, s))["lights"]["features"]
    clusters = [f for f in got if "point_count" in f["properties"]]
    lone = [f for f in got if "point_count" not in f["properties"]]
    assert clusters and len(got) < len(inside)
    assert sum(f["properties"]["point_count"] for f in clusters) + len(lone) == len(inside)
    assert all(f["properties"]["point_count"] >= 2 for f in clusters)
    # A lone point keeps its id and attributes, at its own place.
    unit = (b.maxx - b.minx) / s.extent
    by_id = inside.set_index("id").loc[[f["properties"]["id"] for f in lone]]
    xy = np.array([f["geometry"]["coordinates"] for f in lone], dtype=float)
    assert np.abs(b.minx + xy[:, 0] * unit - by_id.geometry.x.to_numpy()).max() <= unit
    assert np.abs(b.miny + xy[:, 1] * unit - by_id.geometry.y.to_numpy()).max() <= unit
    assert [f["properties"]["status"] for f in lone] == by_id["status"].tolist()
    # A cluster sits where its points are: within a grid cell (cluster_px pixels) of them.
    cell = s.cluster_px * (b.maxx - b.minx) / 512
    cxy = np.array([f["geometry"]["coordinates"] for f in clusters], dtype=float) * unit
    cxy += [b.minx, b.miny]
    px, py = inside.geometry.x.to_numpy(), inside.geometry.y.to_numpy()
    near = (np.abs(cxy[:, :1] - px) <= cell + unit) & (np.abs(cxy[:, 1:] - py) <= cell + unit)
    counts = np.array([f["properties"]["point_count"] for f in clusters])
    assert (near.sum(axis=1) >= counts).all()


def test_byte_budget_sheds_the_least_important(pipes) -> None:
    t = _centre_tile(11)
    full = render_tile([(pipes, None)], t, TileSettings(_env_file=None))
    budget = len(full) // 4
    small = render_tile([(pipes, None)], t, TileSettings(_env_file=None, max_bytes=budget))
    assert 0 < len(small) <= budget
    big = _decode(full)["pipes"]["features"]
    kept = _decode(small)["pipes"]["features"]
    assert len(kept) < len(big)
    kept_ids = {f["properties"]["id"] for f in kept}
    dropped = [f["properties"]["diameter_mm"] for f in big if f["properties"]["id"] not in kept_ids]
    assert min(f["properties"]["diameter_mm"] for f in kept) >= max(dropped)


def test_budget_applies_at_full_detail_too(lights) -> None:
    t = _centre_tile(14)
    raw = render_tile([(lights, None)], t, TileSettings(_env_file=None, max_bytes=2_000))
    assert 0 < len(raw) <= 2_000
