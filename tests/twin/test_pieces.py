"""A shape of many vertices searched piece by piece (`metric.Pieces`) finds the same features at
the same distances as measured against the whole shape (`metric.within`), and the query caps
count the pairs the join measures, so a long corridor is answered where a zig-zag over the
whole district is refused."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from layers.schemas import LIGHTS, PIPES
from tests.twin.serve_fixtures import make_layer
from twin import metric, queries
from twin.errors import LimitExceeded

LON, LAT = 114.32, 30.35


def city(n: int = 3000, seed: int = 3):
    """Pipes (short lines) and lights (points) scattered over ~4 km around the centre."""
    rng = np.random.default_rng(seed)
    x, y = LON + rng.uniform(-0.02, 0.02, n), LAT + rng.uniform(-0.02, 0.02, n)
    dx, dy = rng.normal(0, 4e-4, n), rng.normal(0, 4e-4, n)
    pipes = make_layer(
        PIPES,
        shapely.linestrings(np.stack([np.c_[x, y], np.c_[x + dx, y + dy]], 1)),
        [f"p{i}" for i in range(n)],
    )
    lights = make_layer(LIGHTS, shapely.points(x + dy, y - dx), [f"l{i}" for i in range(n)])
    return [pipes, lights]


def shapes() -> dict[str, shapely.Geometry]:
    t = np.linspace(0, 1, 2000)
    road = np.c_[LON - 0.018 + 0.036 * t + 5e-4 * np.sin(t * 150), LAT + 0.012 * np.cos(t * 6)]
    ang = np.linspace(0, 2 * np.pi, 800, endpoint=False)
    r = 0.008 + 0.002 * np.sin(ang * 40)
    ring = np.c_[LON + r * np.cos(ang), LAT + r * np.sin(ang)]
    hole = np.c_[LON + 0.003 * np.cos(ang), LAT + 0.003 * np.sin(ang)][::-1]
    rng = np.random.default_rng(5)
    return {
        "road": shapely.LineString(road),
        "polygon with a hole": shapely.Polygon(ring, [hole]),
        "multipoint": shapely.MultiPoint(
            np.c_[LON + rng.normal(0, 0.005, 500), LAT + rng.normal(0, 0.005, 500)]
        ),
        "multilinestring": shapely.MultiLineString(
            [road[:700], road[800:1500] + np.array([0, 0.003])]
        ),
    }


@pytest.mark.parametrize("name", list(shapes()))
@pytest.mark.parametrize("distance_m", [3.0, 40.0, 400.0])
def test_pieces_find_what_the_whole_shape_finds(name, distance_m):
    shape = shapes()[name]
    pieces = metric.Pieces.cut(shape, distance_m)
    assert pieces is not None
    assert (pieces.vertices <= metric.PIECE_VERTICES).all()
    for layer in city():
        expected_rows, expected_d = metric.within(layer, shape, distance_m)
        cand = metric.candidates(layer, shape, distance_m)
        rows, d = pieces.within(layer, cand, distance_m)
        assert len(expected_rows) > 0
        np.testing.assert_array_equal(np.sort(rows), np.sort(expected_rows))
        order = np.argsort(rows)
        np.testing.assert_allclose(
            d[order], expected_d[np.argsort(expected_rows)], rtol=0, atol=1e-6
        )


def test_features_deep_inside_a_polygon_are_at_zero():
    """A light in the middle of a big polygon is far from every piece's box of a 3 m search,
    and still found, at 0 m."""
    ang = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    big = shapely.Polygon(np.c_[LON + 0.01 * np.cos(ang), LAT + 0.01 * np.sin(ang)])
    layer = make_layer(LIGHTS, [shapely.Point(LON, LAT)], ["centre"])
    pieces = metric.Pieces.cut(big, 3.0)
    assert pieces is not None
    rows, d = pieces.within(layer, metric.candidates(layer, big, 3.0), 3.0)
    assert rows.tolist() == [0] and d.tolist() == [0.0]


def test_a_long_shape_costs_its_nearby_candidates_and_a_folded_one_is_refused():
    """A 2,000-vertex road's 40 m corridor is measured piece by piece, the candidates near it
    against their nearest piece, within a cap that measuring every candidate against every
    vertex would break a hundredfold, and finds what the whole-shape measurement finds. A
    zig-zag folding over the whole town within its 2 km buffer brings every piece near every
    feature: refused under the same cap before any distance is measured."""
    layers = city()
    road = shapes()["road"]
    candidates = sum(len(metric.candidates(lyr, road, 40.0)) for lyr in layers)
    caps = queries.Caps(max_candidates=10**6, max_work=candidates * metric.PIECE_VERTICES * 4)
    assert candidates * shapely.get_num_coordinates(road) > 10 * caps.max_work
    found = {g.collection: g for g in queries._search(layers, road, 40.0, caps)}
    for layer in layers:
        rows, d = metric.within(layer, road, 40.0)
        np.testing.assert_array_equal(found[layer.name].rows, rows)
        np.testing.assert_allclose(found[layer.name].distance_m, d, rtol=0, atol=1e-6)
    ang = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    r = 0.01 + 0.01 * (np.arange(4000) % 2)
    zigzag = shapely.Polygon(np.c_[LON + r * np.cos(ang), LAT + r * np.sin(ang)])
    with pytest.raises(LimitExceeded, match="TWIN_QUERY_MAX_WORK"):
        queries._search(layers, zigzag, 2000.0, caps)
    with pytest.raises(LimitExceeded, match="TWIN_QUERY_MAX_CANDIDATES"):
        queries._search(layers, road, 40.0, queries.Caps(max_candidates=candidates - 1))


def test_a_buffer_is_drawn_around_a_long_road_as_it_is_and_a_folded_shape_is_simplified():
    """Drawing costs what the shape's offset curves cross: a road that never comes back near
    itself is buffered whole (GEOS draws its 2,000 vertices cheaply); a zig-zag folding onto
    itself within the buffer is simplified first, by at most a tenth of the buffer, or refused."""
    road = shapes()["road"]
    assert metric.folds(road, 10.0) <= 2
    drawn, tolerance = metric.drawable(road, 10.0)
    assert drawn is road and tolerance == 0.0
    ang = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    r = 0.01 + 0.0003 * (np.arange(2000) % 2)  # teeth of 30 m
    zigzag = shapely.Polygon(np.c_[LON + r * np.cos(ang), LAT + r * np.sin(ang)])
    assert metric.folds(zigzag, 500.0) > 10
    drawn, tolerance = metric.drawable(zigzag, 500.0)
    assert shapely.get_num_coordinates(drawn) <= metric.DRAWN_VERTICES
    assert 0 < tolerance <= 50.0
    # Nothing of the shape lies farther than the tolerance from what was drawn around.
    assert (
        shapely.hausdorff_distance(
            shapely.transform(drawn, metric.frame(zigzag)[0]),
            shapely.transform(zigzag, metric.frame(zigzag)[0]),
        )
        <= tolerance * 1.01
    )
    back_and_forth = shapely.LineString(
        np.c_[LON + 0.02 * (np.arange(3000) % 2), LAT + np.arange(3000) * 5e-5]
    )
    with pytest.raises(LimitExceeded, match="cannot be drawn"):
        metric.drawable(back_and_forth, 5000.0)
