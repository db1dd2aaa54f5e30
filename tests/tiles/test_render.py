"""render_tile at full detail against a geopandas reference: same features, right places."""

from __future__ import annotations

import geopandas as gpd
import mapbox_vector_tile
import numpy as np
import pytest
import shapely

from layers.layer import Layer
from layers.models import Field, FieldType
from layers.schemas import PARKS, PIPES, VALVES
from tests.tiles.conftest import make_layer
from tiles.grid import TMS, Tile, tile, xy_bounds
from tiles.render import render_tile
from tiles.settings import TileSettings

LON, LAT = 114.32, 30.35
SETTINGS = TileSettings(_env_file=None)
EXTENT = SETTINGS.extent


def _city(seed: int = 3) -> tuple[Layer, Layer, Layer]:
    """Pipes, valves and parks scattered over ~2 km, with the usual mess mixed in."""
    rng = np.random.default_rng(seed)
    deg = 0.02

    def walk(k: int) -> np.ndarray:
        start = np.array([LON, LAT]) + rng.uniform(-deg, deg, 2)
        return start + np.cumsum(rng.normal(0, 0.0008, (k, 2)), axis=0)

    pipes = [shapely.linestrings(walk(int(rng.integers(2, 12)))) for _ in range(400)]
    pipes += [
        shapely.MultiLineString([walk(3), walk(4)]),
        shapely.LineString(),  # empty
        None,  # no geometry at all
    ]
    pipe_ids = [str(i) for i in range(len(pipes))]
    pipe_ids[5] = "P-0005"  # not numeric: only the `id` property carries it
    pipes_layer = make_layer(
        PIPES,
        pipes,
        ids=pipe_ids,
        diameter_mm=rng.choice([100.0, 150.0, 300.0, 600.0], len(pipes)),
        material=[None if i % 7 == 0 else "PE" for i in range(len(pipes))],
        install_year=rng.integers(1950, 2024, len(pipes)),
    )
    pts = np.array([LON, LAT]) + rng.uniform(-deg, deg, (300, 2))
    valves = make_layer(
        VALVES,
        list(shapely.points(pts)),
        ids=[f"V{i}" for i in range(len(pts))],
        normally_open=[bool(i % 3) for i in range(len(pts))],
    )
    parks = []
    for _ in range(40):
        c = np.array([LON, LAT]) + rng.uniform(-deg, deg, 2)
        outer = shapely.Point(*c).buffer(rng.uniform(0.0005, 0.003), quad_segs=6)
        parks.append(outer.difference(shapely.Point(*c).buffer(0.0002)))
    parks_layer = make_layer(PARKS, parks, name=[f"Park {i}" for i in range(len(parks))])
    return pipes_layer, valves, parks_layer


@pytest.fixture(scope="module")
def city() -> tuple[Layer, Layer, Layer]:
    return _city()


def _reference(layer: Layer, t: Tile) -> gpd.GeoDataFrame:
    """Features that cross the tile, by geopandas in EPSG:3857 (pyproj, not our projection)."""
    gdf = gpd.GeoDataFrame({"id": layer.ids}, geometry=list(layer.geometry), crs="EPSG:4326")
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)].to_crs(3857)
    b = xy_bounds(t)
    return gdf[gdf.intersects(shapely.box(*b))]


def _decoded_in_3857(geometry: dict, t: Tile) -> shapely.Geometry:
    b = xy_bounds(t)
    scale = (b.maxx - b.minx) / EXTENT

    def to_xy(c: np.ndarray) -> np.ndarray:
        return np.column_stack([b.minx + c[:, 0] * scale, b.miny + c[:, 1] * scale])

    return shapely.transform(shapely.geometry.shape(geometry), to_xy)


def _tiles_around(z: int) -> list[Tile]:
    centre = TMS.tile(LON, LAT, z)
    return [Tile(centre.x + dx, centre.y + dy, z) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]


@pytest.mark.parametrize("z", [14, 15, 16])
def test_tiles_hold_every_feature_crossing_them_at_the_right_place(city, z: int) -> None:
    pipes, valves, parks = city
    checked = 0
    for t in _tiles_around(z):
        raw = render_tile([(pipes, None), (valves, None), (parks, None)], t, SETTINGS)
        decoded = mapbox_vector_tile.decode(raw) if raw else {}
        b = xy_bounds(t)
        unit = (b.maxx - b.minx) / EXTENT
        clip = shapely.box(*b).buffer(SETTINGS.buffer * unit, join_style="mitre")
        for layer in city:
            ref = _reference(layer, t)
            got = decoded.get(layer.name, {"features": []})["features"]
            got_ids = [f["properties"]["id"] for f in got]
            assert sorted(got_ids) == sorted(ref["id"]), (layer.name, t)
            by_id = {f["properties"]["id"]: f for f in got}
            for fid, geom in zip(ref["id"], ref.geometry, strict=True):
                mine = _decoded_in_3857(by_id[fid]["geometry"], t)
                expected = shapely.clip_by_rect(geom, *clip.bounds)
                # Within one tile unit (1/4096 of the tile; a pixel is 8 units) both ways.
                assert (
                    shapely.hausdorff_distance(
                        mine.boundary if mine.geom_type.endswith("Polygon") else mine,
                        expected.boundary if expected.geom_type.endswith("Polygon") else expected,
                    )
                    <= unit
                ), (layer.name, fid)
                checked += 1
    assert checked > 50


def test_ids_properties_and_feature_ids(city) -> None:
    pipes, _, _ = city
    target = pipes.row("P-0005")
    g = pipes.geometry[target]
    x, y = g.coords[0]
    t = TMS.tile(x, y, 16)
    decoded = mapbox_vector_tile.decode(render_tile([(pipes, None)], Tile(t.x, t.y, t.z), SETTINGS))
    feats = {f["properties"]["id"]: f for f in decoded["pipes"]["features"]}
    assert "P-0005" in feats
    assert feats["P-0005"]["id"] == 0  # no numeric id: the decoder reports 0
    numeric = [f for fid, f in feats.items() if fid.isdigit()]
    assert numeric and all(f["id"] == int(f["properties"]["id"]) for f in numeric)
    row = pipes.row(numeric[0]["properties"]["id"])
    props = numeric[0]["properties"]
    assert props["diameter_mm"] == pipes.attrs["diameter_mm"][row]
    assert props["install_year"] == pipes.attrs["install_year"][row]
    assert ("material" in props) == (row % 7 != 0)


def test_row_subset_limits_the_tile(city) -> None:
    pipes, _, _ = city
    t = Tile(*TMS.tile(LON, LAT, 14)[:2], 14)
    everything = mapbox_vector_tile.decode(render_tile([(pipes, None)], t, SETTINGS))
    all_ids = sorted(f["properties"]["id"] for f in everything["pipes"]["features"])
    rows = np.sort(np.array([pipes.row(i) for i in all_ids[::3]]))
    subset = mapbox_vector_tile.decode(render_tile([(pipes, rows)], t, SETTINGS))
    assert sorted(f["properties"]["id"] for f in subset["pipes"]["features"]) == sorted(
        all_ids[::3]
    )
    assert render_tile([(pipes, np.array([], dtype=np.int64))], t, SETTINGS) == b""


def test_empty_tile_and_minzoom(city) -> None:
    pipes, valves, _ = city
    far = tile(14, 0, 0)
    assert render_tile([(pipes, None), (valves, None)], far, SETTINGS) == b""
    # Valves appear from zoom 12: a zoom-11 tile over them has pipes only.
    t = TMS.tile(LON, LAT, 11)
    decoded = mapbox_vector_tile.decode(
        render_tile([(pipes, None), (valves, None)], Tile(t.x, t.y, 11), SETTINGS)
    )
    assert set(decoded) == {"pipes"}
    assert render_tile([(Layer.empty(PIPES), None)], Tile(t.x, t.y, 11), SETTINGS) == b""


def _with_extras() -> Layer:
    """Valves with two extra attributes (text and integer) kept from a source file."""
    extras = (
        Field("Street", FieldType.STRING, extra=True),
        Field("Lamps", FieldType.INTEGER, extra=True),
    )
    schema = VALVES.with_extras(extras)
    pts = shapely.points(LON + np.arange(200) * 2e-5, np.full(200, LAT))
    return make_layer(
        schema,
        list(pts),
        ids=[f"V{i}" for i in range(200)],
        Street=[f"Street number {i} of a long list of street names" for i in range(200)],
        Lamps=list(range(200)),
        kind=["valve"] * 200,
    )


def _decode(raw: bytes) -> dict:
    return mapbox_vector_tile.decode(raw) if raw else {}


def test_extras_ride_in_tiles_narrowed_by_setting_and_go_first_over_budget() -> None:
    layer = _with_extras()
    t = Tile(*TMS.tile(LON + 2e-3, LAT, 14)[:2], 14)
    full = _decode(render_tile([(layer, None)], t, SETTINGS))["valves"]["features"]
    assert full and all({"Street", "Lamps", "kind"} <= set(f["properties"]) for f in full)
    by_id = {f["properties"]["id"]: f["properties"] for f in full}
    assert by_id["V50"]["Lamps"] == 50 and by_id["V50"]["Street"].startswith("Street number 50 ")
    narrow = TileSettings(_env_file=None, properties={"valves": ["kind"]})
    got = _decode(render_tile([(layer, None)], t, narrow))["valves"]["features"]
    assert len(got) == len(full)
    assert all(set(f["properties"]) == {"id", "kind"} for f in got)
    # A budget the features fit without their extras: every feature stays, the extras go.
    lean = render_tile([(layer, None)], t, narrow)
    budget = TileSettings(_env_file=None, max_bytes=len(lean) + 200)
    raw = render_tile([(layer, None)], t, budget)
    kept = _decode(raw)["valves"]["features"]
    assert len(kept) == len(full) and len(raw) <= budget.max_bytes
    assert all("Street" not in f["properties"] and "kind" in f["properties"] for f in kept)
