"""The spatial query API through the real app, on real Cambridge layers, against independent
references (pyproj.Geod brute force, geopandas in UTM, rasterio, scipy)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from fastapi.testclient import TestClient
from pyproj import Geod, Transformer
from rasterio.io import DatasetReader
from scipy.interpolate import RegularGridInterpolator

from layers.gpkg import GeoPackageStore
from layers.models import Access
from layers.raster import MemoryRaster
from layers.store import RasterInfo
from tests.twin.query_fixtures import (
    DEM_CRS,
    cambridge_store_fixture,  # noqa: F401  (fixture)
    geodesic_distance_ref,
    query_app,
)
from twin import queries

pytestmark = pytest.mark.shared_data

GEOD = Geod(ellps="WGS84")
UTM = 32619  # the UTM zone of Cambridge MA


@pytest.fixture(scope="module")
def client(cambridge_store: Path):
    with TestClient(query_app(cambridge_store, max_results=20_000)) as c:
        yield c


@pytest.fixture(scope="module")
def layers(cambridge_store: Path):
    store = GeoPackageStore(cambridge_store)
    try:
        names = ("lights", "parks", "roads", "grids", "pipes", "secret_valves")
        return {n: store.load(n, Access.RESTRICTED) for n in names}
    finally:
        store.close()


def _utm(geoms) -> gpd.GeoSeries:
    return gpd.GeoSeries(np.asarray(geoms, dtype=object), crs=4326).to_crs(UTM)


def _by_key(body: dict) -> dict[tuple[str, str], float]:
    return {(f["collection"], f["id"]): f["distance_m"] for f in body["features"]}


def _assert_matches_reference(got: dict, ref: dict, radius: float) -> None:
    """Same features within the radius (bar those within 0.1 m of its edge), same distances."""
    border = {k for k, d in ref.items() if abs(d - radius) <= 0.1}
    inside = {k for k, d in ref.items() if d <= radius}
    assert inside - border <= set(got), f"missing: {sorted(inside - border - set(got))[:5]}"
    assert set(got) - border <= inside, f"extra: {sorted(set(got) - border - inside)[:5]}"
    for k, d in got.items():
        assert d == pytest.approx(ref[k], abs=0.1), k


# -- near ---------------------------------------------------------------------------------------


def _reference_points(lights) -> list[tuple[shapely.Point, float]]:
    c = shapely.get_coordinates(lights.geometry)
    centre = c.mean(axis=0)
    _, _, from_centre = GEOD.inv(np.full(len(c), centre[0]), np.full(len(c), centre[1]), *c.T)
    edge = c[int(np.argmax(from_centre))]
    az = GEOD.inv(*centre, *edge)[0]
    outside = GEOD.fwd(*edge, az, 3_000.0)[:2]
    return [
        (shapely.Point(centre), 250.0),
        (shapely.Point(edge), 1_200.0),
        (shapely.Point(outside), 5_000.0),
    ]


def test_near_equals_a_geod_brute_force(client, layers) -> None:
    lights, parks = layers["lights"], layers["parks"]
    c = shapely.get_coordinates(lights.geometry)
    for point, radius in _reference_points(lights):
        body = client.get(
            "/query/near",
            params={
                "lon": point.x,
                "lat": point.y,
                "radius": radius,
                "collections": "lights,parks",
                "limit": 20_000,
            },
        ).json()
        got = _by_key(body)
        assert body["numberMatched"] == body["numberReturned"] == len(got) > 10
        dists = [f["distance_m"] for f in body["features"]]
        assert dists == sorted(dists)
        ref = {}
        d_l = GEOD.inv(np.full(len(c), point.x), np.full(len(c), point.y), *c.T)[2]
        ref.update({("lights", i): d for i, d in zip(lights.ids.tolist(), d_l, strict=True)})
        # Parks: brute force over the parks within a generous plain-degree margin.
        near = np.flatnonzero(shapely.intersects(parks.geometry, point.buffer(radius / 50_000)))
        d_p = geodesic_distance_ref(parks.geometry[near], point)
        ref.update({("parks", i): d for i, d in zip(parks.ids[near].tolist(), d_p, strict=True)})
        _assert_matches_reference(got, ref, radius)
        summary = {s["collection"]: s for s in body["summary"]}
        assert summary["lights"]["count"] == sum(1 for k in got if k[0] == "lights")


def test_near_limit_keeps_the_nearest_and_counts_all(client, layers) -> None:
    point, _ = _reference_points(layers["lights"])[0]
    params = {"lon": point.x, "lat": point.y, "radius": 400, "collections": "lights"}
    full = client.get("/query/near", params={**params, "limit": 20_000}).json()
    top = client.get("/query/near", params={**params, "limit": 5}).json()
    assert top["numberReturned"] == 5 and top["numberMatched"] == full["numberMatched"] > 5
    assert [f["id"] for f in top["features"]] == [f["id"] for f in full["features"][:5]]


def test_near_never_shows_a_layer_above_the_caller(client, cambridge_store, layers) -> None:
    k1 = layers["secret_valves"].geometry[0]
    params = {"lon": k1.x, "lat": k1.y, "radius": 200, "limit": 20_000}
    body = client.get("/query/near", params=params).json()
    assert body["numberMatched"] > 0
    assert {f["collection"] for f in body["features"]} <= {"lights", "parks", "roads", "pipes"}
    named = client.get("/query/near", params={**params, "collections": "secret_valves"})
    assert named.status_code == 404 and "secret_valves" in named.json()["description"]
    with TestClient(query_app(cambridge_store, scope="restricted")) as admin:
        seen = admin.get(
            "/query/near", params={**params, "limit": 10, "collections": "secret_valves"}
        ).json()
    assert seen["features"][0]["id"] == "k1", seen


# -- at -----------------------------------------------------------------------------------------


def _dem_reference(path: Path, lon: float, lat: float) -> tuple[float, float]:
    """rasterio's own sample (the cell holding the point) and a bilinear value between cell
    centres from scipy, at a lon/lat point."""
    x, y = Transformer.from_crs(4326, DEM_CRS, always_xy=True).transform(lon, lat)
    with rasterio.open(path) as ds:
        nearest = float(next(ds.sample([(x, y)]))[0])
        z = ds.read(1).astype(np.float64)
        t = ds.transform
        xs = t.c + (np.arange(ds.width) + 0.5) * t.a
        ys = t.f + (np.arange(ds.height) + 0.5) * t.e
    interp = RegularGridInterpolator((ys[::-1], xs), z[::-1])
    return nearest, float(interp([[y, x]])[0])


def test_at_inside_a_park(client, cambridge_store, layers) -> None:
    parks, grids = layers["parks"], layers["grids"]
    big = int(np.argmax(shapely.area(parks.geometry)))
    point = parks.geometry[big].representative_point()
    body = client.get("/query/at", params={"lon": point.x, "lat": point.y}).json()
    assert parks.ids[big] in {f["id"] for f in body["layers"]["parks"]["features"]}
    assert all(f["distance_m"] == 0 for f in body["layers"]["parks"]["features"])
    # The grid cells holding the point, at every level, district first.
    holding = np.flatnonzero(shapely.intersects(grids.geometry, point))
    assert {c["id"] for c in body["cells"]} == set(grids.ids[holding].tolist())
    levels = [c["level"] for c in body["cells"]]
    assert levels[0] == "district" and "cell" in levels
    # Ground elevation: bilinear by default, rasterio's own sample when asked for nearest.
    nearest, bilinear = _dem_reference(cambridge_store / "rasters" / "dem.tif", point.x, point.y)
    assert body["dem"] == "dem"
    assert body["ground_elevation_m"] == pytest.approx(bilinear, abs=1e-4)
    assert body["rasters"]["dem"]["value"] == pytest.approx(bilinear, abs=1e-4)
    exact = client.get(
        "/query/at", params={"lon": point.x, "lat": point.y, "sampling": "nearest"}
    ).json()
    assert exact["rasters"]["dem"]["value"] == nearest
    assert "secret_valves" not in body["layers"]


def test_at_a_buried_pipe_gives_its_depth_below_ground(client, cambridge_store, layers) -> None:
    pipes = layers["pipes"]
    line = pipes.geometry[5]
    point = shapely.line_interpolate_point(line, 0.5, normalized=True)
    body = client.get("/query/at", params={"lon": point.x, "lat": point.y}).json()
    hit = {f["id"]: f for f in body["layers"]["pipes"]["features"]}[pipes.ids[5]]
    _, ground = _dem_reference(cambridge_store / "rasters" / "dem.tif", point.x, point.y)
    under = hit["underground"]
    assert under["ground_elevation_m"] == pytest.approx(ground, abs=1e-4)
    assert under["depth_m"] == hit["properties"]["depth_m"] == 1.5
    assert under["top_elevation_m"] == pytest.approx(ground - 1.5, abs=1e-3)
    assert hit["distance_m"] < 0.01


def test_at_outside_the_dem_has_no_ground(client) -> None:
    body = client.get("/query/at", params={"lon": -70.0, "lat": 42.0, "tolerance": 5}).json()
    assert body["rasters"]["dem"]["value"] is None and body["ground_elevation_m"] is None
    assert body["layers"] == {} and body["cells"] == []


def test_at_caps_each_layer_and_survives_an_unreadable_raster(client, layers, tmp_path) -> None:
    point, _ = _reference_points(layers["lights"])[0]
    body = client.get(
        "/query/at", params={"lon": point.x, "lat": point.y, "tolerance": 300, "limit": 3}
    ).json()
    groups = body["layers"].values()
    assert all(g["numberReturned"] == len(g["features"]) <= 3 for g in groups)
    assert max(g["numberMatched"] for g in groups) > 3
    d = [f["distance_m"] for f in body["layers"]["lights"]["features"]]
    assert d == sorted(d) and d[-1] <= 300
    broken = RasterInfo("dem", "DEM", tmp_path / "gone.tif")
    assert queries.RasterReader().values(broken, point, "bilinear") == []


def test_at_bytes_equal_the_dict_answer_and_memory_equals_the_file(
    client, layers, monkeypatch
) -> None:
    catalog = client.app.state.catalog
    line = layers["pipes"].geometry[5]
    point = shapely.line_interpolate_point(line, 0.3, normalized=True)
    sampled: list[type] = []  # what each `at` sampled: the file or the raster in memory
    sample_xy = queries.sample_xy

    def spy(ds, *args, **kwargs):
        sampled.append(type(ds))
        return sample_xy(ds, *args, **kwargs)

    monkeypatch.setattr(queries, "sample_xy", spy)
    from_file = queries.at(catalog, Access.RESTRICTED, point, 40.0, raster_memory_bytes=0)
    assert sampled.pop() is DatasetReader
    in_memory = queries.at(catalog, Access.RESTRICTED, point, 40.0, raster_memory_bytes=2**30)
    assert sampled.pop() is MemoryRaster
    assert from_file.ground_m is not None
    assert in_memory.rasters == from_file.rasters  # the same floats, not approximately
    assert "pipes" in {g.collection for g in in_memory.groups}
    for limit in (None, 2):
        assert json.loads(in_memory.to_bytes(limit)) == from_file.to_json(limit)
    # A raster over the byte limit is read from the file again.
    again = queries.at(catalog, Access.RESTRICTED, point, 40.0, raster_memory_bytes=10)
    assert sampled.pop() is DatasetReader
    assert again.rasters == from_file.rasters


def test_near_bytes_equal_the_dict_answer(client, layers) -> None:
    catalog = client.app.state.catalog
    point, _ = _reference_points(layers["lights"])[0]
    groups = queries.near(catalog, Access.RESTRICTED, point, 400.0)
    assert len(groups) >= 3
    for limit in (None, 25):
        text = queries.feature_collection_bytes(groups, limit, {"radius": 400.0})
        assert json.loads(text) == {
            **queries.feature_collection(groups, limit),
            "radius": 400.0,
        }


# -- buffer -------------------------------------------------------------------------------------


def test_asset_buffer_area_and_lengths_against_utm(client, layers) -> None:
    parks, roads = layers["parks"], layers["roads"]
    areas = shapely.area(parks.geometry)
    row = int(np.argsort(areas)[len(areas) // 2 + 40])  # a mid-sized park
    fid, distance = parks.ids[row], 30.0
    body = client.get(
        "/query/buffer",
        params={"collection": "parks", "id": fid, "distance": distance, "collections": "roads"},
    ).json()
    park_utm = _utm([parks.geometry[row]]).iloc[0]
    ref_buffer = park_utm.buffer(distance, quad_segs=64)
    ours = _utm([shapely.from_geojson(json.dumps(body["buffer"]))]).iloc[0]
    assert abs(ours.area - ref_buffer.area) / ref_buffer.area < 0.005
    assert body["buffer_area_m2"] == pytest.approx(ref_buffer.area, rel=0.005)
    # Roads within the distance, each with the length of it inside the buffer.
    roads_utm = _utm(roads.geometry)
    dist = roads_utm.distance(park_utm).to_numpy()
    ref = {roads.ids[i]: dist[i] for i in range(len(roads))}
    got = {f["id"]: f for f in body["features"]}
    _assert_matches_reference(
        {("roads", k): f["distance_m"] for k, f in got.items()},
        {("roads", k): d for k, d in ref.items()},
        distance,
    )
    assert len(got) >= 3
    for k, f in got.items():
        i = int(np.flatnonzero(roads.ids == k)[0])
        inside = roads_utm.iloc[i].intersection(ref_buffer).length
        assert f["length_inside_m"] == pytest.approx(inside, rel=0.005, abs=0.05), k


def test_asset_buffer_searches_the_other_layers(client, layers) -> None:
    roads = layers["roads"]
    fid = roads.ids[100]
    body = client.get(
        "/query/buffer", params={"collection": "roads", "id": fid, "distance": 60}
    ).json()
    found = {f["collection"] for f in body["features"]}
    assert "roads" not in found and "lights" in found and "secret_valves" not in found
    assert body["asset"] == {"collection": "roads", "id": fid}
    own = client.get(
        "/query/buffer",
        params={"collection": "roads", "id": fid, "distance": 60, "collections": "roads"},
    ).json()
    ids = {f["id"] for f in own["features"]}
    assert fid not in ids and len(ids) >= 1  # neighbouring roads, not the road itself


# -- dig check ----------------------------------------------------------------------------------


def test_dig_check_conflicts_by_layer(client, layers) -> None:
    pipes = layers["pipes"]
    mid = shapely.line_interpolate_point(pipes.geometry[5], 0.5, normalized=True)
    lon, lat = mid.x, mid.y
    site = shapely.Polygon(
        [(lon - 0.0003, lat - 0.0002), (lon + 0.0003, lat - 0.0002), (lon + 0.0001, lat + 0.0003)]
    )
    body = {
        "geometry": shapely.geometry.mapping(site),
        "buffer_m": 15,
        "dig_depth_m": 2.0,
        "limit": 10_000,
    }
    r = client.post("/query/intersects", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    site_utm = _utm([site]).iloc[0]
    ref = {}
    for name in ("lights", "parks", "roads", "pipes"):
        layer = layers[name]
        d = _utm(layer.geometry).distance(site_utm).to_numpy()
        ref.update({(name, i): v for i, v in zip(layer.ids.tolist(), d, strict=True)})
    _assert_matches_reference(_by_key(out), ref, 15.0)
    assert out["dig_depth_m"] == 2.0 and out["buffer_m"] == 15
    conflicts = {c["collection"]: c for c in out["summary"]}
    assert conflicts["pipes"]["count"] >= 1 and conflicts["pipes"]["nearest_m"] == 0.0
    assert conflicts["pipes"]["shallowest_depth_m"] == 1.5
    assert all(f["reached"] is True for f in out["features"] if f["collection"] == "pipes")
    assert "secret_valves" not in conflicts
    area = _utm([shapely.from_geojson(json.dumps(out["area"]))]).iloc[0]
    assert area.area == pytest.approx(site_utm.buffer(15, quad_segs=64).area, rel=0.005)
    area_ll = shapely.from_geojson(json.dumps(out["area"]))
    touched = np.flatnonzero(shapely.intersects(layers["grids"].geometry, area_ll))
    assert {c["id"] for c in out["cells"]} == set(layers["grids"].ids[touched].tolist())
    assert len(out["cells"]) >= 1


# -- bad input ----------------------------------------------------------------------------------

_SELF_CROSSING = {
    "type": "Polygon",
    "coordinates": [
        [[-71.1, 42.37], [-71.09, 42.38], [-71.09, 42.37], [-71.1, 42.38], [-71.1, 42.37]]
    ],
}


@pytest.mark.parametrize(
    ("path", "params", "status", "phrase"),
    [
        ("/query/near", {"lon": -71.1, "lat": 91}, 400, "lat=91"),
        ("/query/near", {"lon": 181, "lat": 42}, 400, "lon=181"),
        ("/query/near", {"lon": -71.1, "lat": "north"}, 400, "lat"),
        ("/query/near", {"lon": -71.1, "lat": 42.37, "radius": -5}, 400, "radius=-5"),
        ("/query/near", {"lon": -71.1, "lat": 42.37, "radius": 1e7}, 400, "maximum of 5000 m"),
        ("/query/near", {"lon": -71.1, "lat": 42.37, "radius": "nan"}, 400, "radius"),
        ("/query/near", {"lon": -71.1, "lat": 42.37, "limit": 0}, 400, "limit=0"),
        ("/query/near", {"lon": -71.1, "lat": 42.37, "limit": 10**6}, 400, "maximum of 20000"),
        ("/query/near", {"lon": -71.1, "lat": 42.37, "collections": "nope"}, 404, "'nope'"),
        ("/query/near", {"lon": -71.1, "lat": 42.37, "collections": "dem"}, 400, "raster"),
        ("/query/at", {"lon": -71.1, "lat": -91}, 400, "lat=-91"),
        ("/query/at", {"lon": -71.1, "lat": 42.37, "tolerance": -1}, 400, "tolerance=-1"),
        ("/query/at", {"lon": -71.1, "lat": 42.37, "sampling": "cubic"}, 400, "sampling"),
        ("/query/buffer", {"collection": "parks", "id": "nope", "distance": 10}, 404, "'nope'"),
        ("/query/buffer", {"collection": "nope", "id": "x", "distance": 10}, 404, "'nope'"),
        (
            "/query/buffer",
            {"collection": "secret_valves", "id": "k1", "distance": 10},
            404,
            "secret",
        ),
        ("/query/buffer", {"collection": "parks", "id": "x", "distance": 1e6}, 400, "distance"),
        ("/query/buffer", {"collection": "parks", "id": "x"}, 400, "distance"),
        ("/query/stats", {"level": "galaxy"}, 400, "galaxy"),
        ("/query/stats", {"level": "cell", "filter": "status = "}, 400, "filter"),
        (
            "/query/stats",
            {"level": "cell", "collections": "roads", "filter": "wattage_w > 3"},
            400,
            "wattage_w",
        ),
    ],
)
def test_bad_query_parameters_answer_4xx_naming_the_problem(client, path, params, status, phrase):
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "description"}
    assert phrase in body["description"]


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        ({"geometry": _SELF_CROSSING}, 400, "Self-intersection"),
        ({"geometry": {"type": "FeatureCollection", "features": []}}, 400, "FeatureCollection"),
        ({"geometry": {"type": "GeometryCollection", "geometries": []}}, 400, "GeometryCollection"),
        ({"geometry": {"type": "Polygon", "coordinates": "here"}}, 400, "not a valid GeoJSON"),
        ({"geometry": {"type": "Point", "coordinates": [200, 10]}}, 400, "outside longitude"),
        (
            {"geometry": {"type": "Point", "coordinates": [-71.1, 42.37]}, "buffer_m": -3},
            400,
            "buffer_m",
        ),
        (
            {"geometry": {"type": "Point", "coordinates": [-71.1, 42.37]}, "buffer_m": 9e9},
            400,
            "maximum",
        ),
        (
            {"geometry": {"type": "Point", "coordinates": [-71.1, 42.37]}, "collections": ["nope"]},
            404,
            "nope",
        ),
        (
            {"geometry": {"type": "Point", "coordinates": [-71.1, 42.37]}, "colour": "red"},
            400,
            "colour",
        ),
        ({"buffer_m": 3}, 400, "geometry"),
        ([1, 2, 3], 400, "intersects request"),
    ],
)
def test_bad_intersects_bodies_answer_4xx_naming_the_problem(client, body, status, phrase):
    r = client.post("/query/intersects", json=body)
    assert r.status_code == status, r.text
    assert phrase in r.json()["description"]


def test_not_json_and_empty_bodies(client) -> None:
    for raw in (b"{not json", b"", b"   "):
        r = client.post(
            "/query/intersects", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        assert "body" in r.json()["description"]


def _many_vertices(n: int) -> dict:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.c_[-71.1 + 0.01 * np.cos(t), 42.37 + 0.01 * np.sin(t)]
    return {"type": "Polygon", "coordinates": [[*ring.tolist(), ring[0].tolist()]]}


def test_a_100k_vertex_polygon_is_refused(client, cambridge_store) -> None:
    body = {"geometry": _many_vertices(100_000)}
    r = client.post("/query/intersects", json=body)  # over the default 1 MB body limit
    assert r.status_code == 413 and "bytes" in r.json()["description"]
    with TestClient(query_app(cambridge_store, max_body_bytes=20_000_000)) as big:
        r = big.post("/query/intersects", json=body)
    assert r.status_code == 400
    assert "100001 vertices, more than the maximum of 10000" in r.json()["description"]
