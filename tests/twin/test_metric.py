"""The metric engine against pyproj.Geod and UTM references."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Geod

from layers.schemas import LIGHTS, PARKS, PIPES
from tests.twin.query_fixtures import cambridge, geodesic_distance_ref, make_layer
from twin import metric
from twin.errors import InvalidParameter

GEOD = Geod(ellps="WGS84")


def _ring_of_points(lon: float, lat: float, n: int, max_m: float, seed: int) -> np.ndarray:
    """`n` points at random bearings and distances (0..max_m) around a place, via Geod.fwd."""
    rng = np.random.default_rng(seed)
    lons, lats, _ = GEOD.fwd(
        np.full(n, lon), np.full(n, lat), rng.uniform(0, 360, n), rng.uniform(0, max_m, n)
    )
    return shapely.points(lons, lats)


@pytest.mark.parametrize("lat", [0.0, 30.35, 42.37, 60.17, 70.0, 79.0, 85.0, -33.9])
@pytest.mark.parametrize("length", [0.3, 25.0, 980.0, 4_999.0, 5_001.0, 60_000.0])
def test_geodesic_matches_geod(lat: float, length: float) -> None:
    rng = np.random.default_rng(int(abs(lat) * 10 + length))
    n = 400
    lon1 = rng.uniform(-180, 180, n)
    lat1 = np.clip(lat + rng.uniform(-0.5, 0.5, n), -89.9, 89.9)
    lon2, lat2, _ = GEOD.fwd(lon1, lat1, rng.uniform(0, 360, n), np.full(n, length))
    d = metric.geodesic_m(lon1, lat1, lon2, lat2)
    np.testing.assert_allclose(d, length, atol=0.005, rtol=0)


def test_geodesic_across_antimeridian() -> None:
    d = metric.geodesic_m(179.9995, 10.0, -179.9995, 10.0)
    ref = GEOD.inv(179.9995, 10.0, -179.9995, 10.0)[2]
    assert abs(float(d) - ref) < 0.001
    assert 100 < ref < 120


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (-71.11, 42.37, 32619),  # Cambridge MA
        (-72.5, 42.37, 32618),
        (24.94, 60.17, 32635),  # Helsinki
        (151.2, -33.9, 32756),  # Sydney
        (114.32, 30.35, 4547),  # Wuhan Jiangxia: CGCS2000 GK CM 114E
        (116.4, 39.9, 4548),  # Beijing: CM 117E
        (74.0, 40.0, 4534),  # western edge: CM 75E
    ],
)
def test_zone_of_the_place(lon: float, lat: float, epsg: int) -> None:
    assert metric.zone_epsg(lon, lat) == epsg
    p = metric.projection(epsg)
    assert p is metric.projection(epsg)  # built once
    # The zone's own scale factor is close to 1 at the place (TM within its zone).
    assert 0.9995 < p.scale(lon, lat) < 1.0011


def _brute(geoms: np.ndarray, point: shapely.Point, radius: float) -> tuple[np.ndarray, np.ndarray]:
    ref = geodesic_distance_ref(geoms, point)
    return np.flatnonzero(ref <= radius), ref


def _assert_same(layer, point, radius, ref_rows, ref):
    rows, d = metric.within(layer, point, radius)
    # Nearest first, each distance equal to the reference within 0.1 m.
    assert np.all(np.diff(d) >= 0)
    np.testing.assert_allclose(d, ref[rows], atol=0.1, rtol=0)
    # Same set: nothing within the radius missing, nothing beyond it returned (apart from
    # features within 0.1 m of the boundary, where the reference itself is that precise).
    borderline = np.flatnonzero(np.abs(ref - radius) <= 0.1)
    assert set(ref_rows) - set(borderline) <= set(rows.tolist())
    assert set(rows.tolist()) - set(borderline) <= set(ref_rows)
    return rows


@pytest.mark.parametrize(
    ("where", "lon", "lat", "radius"),
    [
        ("centre", 0.0, 0.0, 50.0),
        ("far from the centre", 1.7, -0.9, 4_000.0),
        ("across a UTM zone edge", 0.0, 0.0, 5_000.0),
        ("zero radius", 0.0, 0.0, 0.0),
    ],
)
def test_within_points_equals_brute_force(
    where: str, lon: float, lat: float, radius: float
) -> None:
    # A layer straddling the UTM zone 18/19 edge at 72° W, dense in the middle.
    base_lon, base_lat = -72.0, 42.37
    geoms = np.concatenate(
        [
            _ring_of_points(base_lon, base_lat, 3_000, 8_000.0, 1),
            _ring_of_points(base_lon + 1.7, base_lat - 0.9, 500, 6_000.0, 2),
        ]
    )
    layer = make_layer(LIGHTS, geoms)
    point = shapely.Point(base_lon + lon, base_lat + lat)
    if radius == 0.0:  # a point exactly on a feature
        point = geoms[17]
    c = shapely.get_coordinates(geoms)
    ref = GEOD.inv(np.full(len(c), point.x), np.full(len(c), point.y), c[:, 0], c[:, 1])[2]
    ref_rows = np.flatnonzero(ref <= radius)
    rows = _assert_same(layer, point, radius, ref_rows, ref)
    assert len(rows) >= 1
    if where == "across a UTM zone edge":
        lons = shapely.get_x(geoms[rows])
        assert (lons < -72).any() and (lons > -72).any()


@pytest.mark.parametrize("lat", [0.0, 30.35, 60.17, 80.0, 88.5, -70.0])
@pytest.mark.parametrize("radius", [1.0, 100.0, 5_000.0])
def test_within_finds_everything_just_inside_the_radius_at_every_bearing(
    lat: float, radius: float
) -> None:
    # Points and short east-west and north-south lines whose nearest point lies 1 cm inside
    # the radius, at 720 bearings: where lon/lat degrees are most unequal (high latitudes,
    # due east and west) is where a search in degrees would first miss one.
    lon = 114.3
    az = np.arange(720) / 2.0
    n = len(az)
    x, y, _ = GEOD.fwd(np.full(n, lon), np.full(n, lat), az, np.full(n, radius - 0.01))
    xo, yo, _ = GEOD.fwd(np.full(n, lon), np.full(n, lat), az, np.full(n, radius + 0.02))
    pts = shapely.points(np.concatenate([x, xo]), np.concatenate([y, yo]))
    point = shapely.Point(lon, lat)
    rows, d = metric.within(make_layer(LIGHTS, pts), point, radius)
    assert np.all(np.diff(d) >= 0)
    assert set(rows.tolist()) == set(range(n))
    np.testing.assert_allclose(d, radius - 0.01, atol=0.005)
    # A few candidates are sifted in degrees first (as `at` does): the same answer.
    for k in range(0, n, 30):
        few_rows, few_d = metric.within(make_layer(LIGHTS, pts[[k, n + k]]), point, radius)
        assert few_rows.tolist() == [0]
        assert abs(few_d[0] - (radius - 0.01)) < 0.005
    # Lines through each inside point, across the bearing (their nearest point is that one).
    bx, by, _ = GEOD.fwd(x, y, az + 90, np.full(n, 0.5 * radius))
    cx, cy, _ = GEOD.fwd(x, y, az - 90, np.full(n, 0.5 * radius))
    lines = shapely.linestrings(np.stack([np.stack([bx, x, cx], 1), np.stack([by, y, cy], 1)], 2))
    ref = geodesic_distance_ref(lines, point, step_m=max(0.2, radius / 500))
    rows, d = metric.within(make_layer(PIPES, lines), point, radius)
    assert set(rows.tolist()) == set(np.flatnonzero(ref <= radius).tolist())
    assert len(rows) == n
    # Kilometre lines 1.5° from the pole bend in the local frame (its scale changes by 3 %
    # across them), so there the nearest point found is up to ~0.6 m off (2e-4 of the radius);
    # no city lies there.
    np.testing.assert_allclose(
        d, ref[rows], atol=0.1 if abs(lat) <= 80 else max(0.1, 2e-4 * radius)
    )


def test_within_across_the_antimeridian() -> None:
    geoms = _ring_of_points(180.0, -16.8, 800, 3_000.0, 3)
    # Normalise to [-180, 180]: points east of the antimeridian get negative longitudes.
    x, y = shapely.get_x(geoms), shapely.get_y(geoms)
    geoms = shapely.points(np.where(x > 180, x - 360, x), y)
    layer = make_layer(LIGHTS, geoms)
    point = shapely.Point(179.999, -16.8)
    c = shapely.get_coordinates(geoms)
    ref = GEOD.inv(np.full(len(c), point.x), np.full(len(c), point.y), c[:, 0], c[:, 1])[2]
    rows = _assert_same(layer, point, 1_500.0, np.flatnonzero(ref <= 1_500.0), ref)
    assert (shapely.get_x(geoms[rows]) < 0).any()


def test_within_lines_and_polygons_equals_brute_force() -> None:
    rng = np.random.default_rng(7)
    lon0, lat0 = 24.94, 60.17  # Helsinki: strong lon/lat anisotropy
    starts = _ring_of_points(lon0, lat0, 150, 1_500.0, 4)
    sx, sy = shapely.get_x(starts), shapely.get_y(starts)
    lines = shapely.linestrings(
        [
            [(x, y), (x + rng.uniform(-0.004, 0.004), y + rng.uniform(-0.002, 0.002))]
            for x, y in zip(sx, sy, strict=True)
        ]
    )
    polys = shapely.buffer(starts[:60], rng.uniform(0.0002, 0.001, 60), quad_segs=3)
    point = shapely.Point(lon0 + 0.001, lat0 - 0.0005)
    for schema, geoms, radius in ((PIPES, lines, 400.0), (PARKS, polys, 600.0)):
        layer = make_layer(schema, geoms)
        ref_rows, ref = _brute(geoms, point, radius)
        rows = _assert_same(layer, point, radius, ref_rows, ref)
        assert len(rows) >= 3


def test_within_a_polygon_query_and_rows_subset() -> None:
    geoms = _ring_of_points(-71.1, 42.37, 700, 3_000.0, 5)
    layer = make_layer(LIGHTS, geoms)
    site = shapely.Polygon([(-71.105, 42.368), (-71.095, 42.368), (-71.1, 42.375)])
    rows, d = metric.within(layer, site, 100.0)
    inside = shapely.covers(site, geoms)
    ref = np.full(len(geoms), np.inf)
    near = np.flatnonzero(shapely.intersects(site.buffer(0.003), geoms))  # ~250 m, plain degrees
    for i in near:
        ref[i] = 0.0 if inside[i] else geodesic_distance_ref(np.array([site.boundary]), geoms[i])[0]
    expect = np.flatnonzero(ref <= 100.0)
    assert set(rows.tolist()) == set(expect.tolist())
    np.testing.assert_allclose(d, ref[rows], atol=0.1)
    assert (d[: inside.sum()] == 0).all()
    subset = expect[::2]
    r2, _ = metric.within(layer, site, 100.0, rows=subset)
    assert set(r2.tolist()) == set(subset.tolist())


def test_within_a_wide_query_shape() -> None:
    # A query spread over 0.8° finds nearest points in its zone projection, not the local frame.
    places = [(-71.5, 42.0), (-71.1, 42.4), (-70.7, 42.8)]
    query = shapely.MultiPoint(places)
    pts = np.concatenate(
        [_ring_of_points(x, y, 300, 2_500.0, i) for i, (x, y) in enumerate(places)]
    )
    rng = np.random.default_rng(9)
    sx, sy = shapely.get_x(pts[:200]), shapely.get_y(pts[:200])
    lines = shapely.linestrings(
        [[(x, y), (x + rng.uniform(-0.01, 0.01), y + 0.004)] for x, y in zip(sx, sy, strict=True)]
    )
    for schema, geoms in ((LIGHTS, pts), (PIPES, lines)):
        ref = np.min([geodesic_distance_ref(geoms, shapely.Point(p), 0.5) for p in places], axis=0)
        rows = _assert_same(
            make_layer(schema, geoms), query, 1_000.0, np.flatnonzero(ref <= 1e3), ref
        )
        assert len(rows) > 10


@pytest.mark.shared_data
def test_within_on_cambridge_lights_and_parks() -> None:
    lights = cambridge("INFRA_StreetLights")
    parks = cambridge("RECREATION_OpenSpace")
    lyr_l = make_layer(LIGHTS, lights.geometry.values)
    lyr_p = make_layer(PARKS, parks.geometry.values)
    c = shapely.get_coordinates(lights.geometry.values)
    centre = shapely.Point(*c.mean(axis=0))
    # The light farthest from the centre, and a point 3 km beyond it, away from the centre.
    _, _, from_centre = GEOD.inv(np.full(len(c), centre.x), np.full(len(c), centre.y), *c.T)
    edge = int(np.argmax(from_centre))
    az = GEOD.inv(centre.x, centre.y, *c[edge])[0]
    outside = shapely.Point(*GEOD.fwd(*c[edge], az, 3_000.0)[:2])
    for point, radius in (
        (centre, 250.0),
        (shapely.Point(c[edge]), 1_200.0),  # at the edge of the city
        (outside, 5_000.0),  # outside the city, at the maximum radius
    ):
        ref = GEOD.inv(np.full(len(c), point.x), np.full(len(c), point.y), c[:, 0], c[:, 1])[2]
        rows = _assert_same(lyr_l, point, radius, np.flatnonzero(ref <= radius), ref)
        assert len(rows) > 20
        # Parks: brute force over the parks whose box is within a generous plain-degree margin.
        near = np.flatnonzero(
            shapely.intersects(parks.geometry.values, point.buffer(radius / 50_000))
        )
        ref_p = np.full(len(parks), np.inf)
        ref_p[near] = geodesic_distance_ref(parks.geometry.values[near], point)
        rows_p = _assert_same(lyr_p, point, radius, np.flatnonzero(ref_p <= radius), ref_p)
        assert len(rows_p) >= 1


def test_point_to_polygons_with_holes_and_multilines() -> None:
    ring = [(-71.11, 42.37), (-71.09, 42.37), (-71.09, 42.38), (-71.11, 42.38)]
    hole = [(-71.104, 42.373), (-71.096, 42.373), (-71.1, 42.377)]
    shapes = np.array(
        [
            shapely.Polygon(ring, holes=[hole]),
            shapely.MultiPolygon(
                [
                    shapely.box(-71.2, 42.3, -71.19, 42.31),
                    shapely.box(-71.1, 42.39, -71.099, 42.391),
                ]
            ),
            shapely.MultiLineString(
                [[(-71.12, 42.36), (-71.12, 42.365)], [(-71.1, 42.3745), (-71.099, 42.3747)]]
            ),
            shapely.LinearRing([(-71.0, 42.0), (-71.0, 42.1), (-70.9, 42.0)]),
        ],
        dtype=object,
    )
    for point in (
        shapely.Point(-71.1, 42.3745),  # in the hole, 1.5 m-ish from the second line
        shapely.Point(-71.1, 42.3715),  # inside the polygon proper
        shapely.Point(-71.13, 42.385),  # outside everything
    ):
        ref = geodesic_distance_ref(shapes, point)
        np.testing.assert_allclose(metric.distances(shapes, point), ref, atol=0.1)
    assert metric.distances(shapes[:1], shapely.Point(-71.1, 42.3715))[0] == 0.0
    assert metric.distances(shapes[:1], shapely.Point(-71.1, 42.3745))[0] > 100


def test_distance_m_between_shapes() -> None:
    a = shapely.Point(-71.1, 42.37)
    b = shapely.LineString([(-71.09, 42.36), (-71.09, 42.38)])
    ref = geodesic_distance_ref(np.array([b]), a)[0]
    assert abs(metric.distance_m(a, b) - ref) < 0.1
    assert metric.distance_m(a, a.buffer(0.001)) == 0.0
    d = metric.distances(np.array([a, None, shapely.Point()], dtype=object), b)
    assert abs(d[0] - ref) < 0.1 and np.isnan(d[1]) and np.isnan(d[2])


@pytest.mark.parametrize(
    "geometry",
    [
        shapely.Point(-71.1, 42.37),
        shapely.LineString([(-71.1, 42.37), (-71.09, 42.372), (-71.085, 42.38)]),
        shapely.Polygon([(114.3, 30.3), (114.31, 30.3), (114.31, 30.31), (114.3, 30.31)]),
        shapely.Point(-72.0001, 42.37),  # on a zone edge
    ],
)
@pytest.mark.parametrize("distance", [5.0, 150.0, 2_000.0])
def test_buffer_against_utm_and_geod(geometry: shapely.Geometry, distance: float) -> None:
    buf = metric.buffer(geometry, distance)
    assert buf.is_valid and buf.geom_type == "Polygon"
    src = gpd.GeoSeries([geometry], crs=4326)
    utm = src.estimate_utm_crs()
    ref_area = src.to_crs(utm).buffer(distance, quad_segs=64).area.iloc[0]
    our_area = gpd.GeoSeries([buf], crs=4326).to_crs(utm).area.iloc[0]
    assert abs(our_area - ref_area) / ref_area < 0.005
    # Every vertex of the outline lies `distance` metres (geodesic) from the shape.
    outline = shapely.points(shapely.get_coordinates(buf.exterior))
    d = np.array(
        [geodesic_distance_ref(np.array([geometry]), p, step_m=0.5)[0] for p in outline[::7]]
    )
    # (Where two arcs' chords cross, a vertex may sit inside the circle by one chord's sagitta.)
    sagitta = distance * (1 - np.cos(np.pi / 64))
    assert (d <= distance * 1.0005 + 0.01).all()
    assert (d >= distance * 0.9995 - sagitta - 0.01).all()
    assert np.median(d) == pytest.approx(distance, rel=0.0005, abs=0.01)


def test_length_and_area_against_geod() -> None:
    parks = [
        shapely.Polygon(
            [(-71.1, 42.37), (-71.09, 42.37), (-71.09, 42.38), (-71.1, 42.38)],
            holes=[[(-71.097, 42.373), (-71.093, 42.373), (-71.095, 42.377)]],
        ),
        shapely.MultiPolygon(
            [
                shapely.box(24.9, 60.1, 24.92, 60.11),
                shapely.box(24.93, 60.1, 24.94, 60.105),
            ]
        ),
    ]
    lines = [
        shapely.LineString([(114.3, 30.3), (114.35, 30.32), (114.36, 30.4)]),  # a 9 km segment
        shapely.MultiLineString([[(0, 0), (0.001, 0.001)], [(0.5, 0.5), (0.5, 0.501)]]),
    ]
    for g in [*parks, *lines]:
        area, _ = GEOD.geometry_area_perimeter(shapely.orient_polygons(g))  # holes clockwise
        # Polygons: the whole boundary, holes included (as ST_Perimeter and shapely count it).
        ring_or_line = g.boundary if g.geom_type.endswith("Polygon") else g
        assert metric.length_m(g) == pytest.approx(GEOD.geometry_length(ring_or_line), abs=0.01)
        expected = abs(area) if g.geom_type.endswith("Polygon") else 0.0
        assert metric.area_m2(g) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    arr = np.array([*parks, *lines, shapely.Point(1, 1), None], dtype=object)
    lengths = metric.length_m(arr)
    assert lengths.shape == (6,) and lengths[4] == 0 and lengths[5] == 0
    assert metric.area_m2(arr)[2:].tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_distances_are_refused(bad: float) -> None:
    layer = make_layer(LIGHTS, [shapely.Point(0, 0)])
    with pytest.raises(InvalidParameter, match="metres"):
        metric.within(layer, shapely.Point(0, 0), bad)
    with pytest.raises(InvalidParameter, match="metres"):
        metric.buffer(shapely.Point(0, 0), bad)


def test_empty_inputs() -> None:
    layer = make_layer(LIGHTS, [])
    rows, d = metric.within(layer, shapely.Point(0, 0), 10.0)
    assert len(rows) == 0 and len(d) == 0
    with pytest.raises(InvalidParameter, match="empty"):
        metric.within(make_layer(LIGHTS, [shapely.Point(0, 0)]), shapely.Point(), 10.0)
