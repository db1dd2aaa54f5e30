"""CQL2 text and JSON: each operator against a pandas / shapely / pyproj.Geod reference."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import shapely
import shapely.geometry
from fastapi.testclient import TestClient
from pyproj import Geod

from layers.layer import Layer
from layers.schemas import custom_schema
from tests.twin.serve_fixtures import (
    app_for,
    lights_layer,
    make_layer,
    served_store_fixture,  # noqa: F401  (fixture)
    streetlights_frame,
    wuhan_pipes,
)
from twin.cql2 import evaluate, parse
from twin.errors import InvalidParameter

GEOD = Geod(ellps="WGS84")


@pytest.fixture(scope="module")
def lights() -> Layer:
    return lights_layer(streetlights_frame())


@pytest.fixture(scope="module")
def pipes() -> Layer:
    return wuhan_pipes()


def ids(layer: Layer, text: str, lang: str = "cql2-text") -> set[str]:
    mask = evaluate(parse(text, lang), layer)
    assert mask.dtype == bool and len(mask) == len(layer)
    return set(layer.ids[mask])


def ref(layer: Layer, mask: pd.Series | np.ndarray) -> set[str]:
    m = mask.fillna(False).to_numpy(dtype=bool) if isinstance(mask, pd.Series) else mask
    return set(layer.ids[m])


def test_comparisons_against_pandas(pipes):
    a = pipes.attrs
    d, y = a["diameter_mm"], a["install_year"]
    cases = {
        "diameter_mm = 300": d == 300,
        "diameter_mm <> 300": d != 300,
        "diameter_mm < 200": d < 200,
        "diameter_mm <= 200": d <= 200,
        "diameter_mm > 200": d > 200,
        "install_year >= 2000": y >= 2000,
        "network = 'gas'": a["network"] == "gas",
        "300 > diameter_mm": d < 300,
    }
    for text, expected in cases.items():
        got = ids(pipes, text)
        assert got == ref(pipes, expected), text
        assert got, text
    # Nulls are unknown: neither = nor <> selects them.
    nulls = set(pipes.ids[d.isna().to_numpy()])
    assert nulls and not nulls & (
        ids(pipes, "diameter_mm = 300") | ids(pipes, "diameter_mm <> 300")
    )


def test_logical_operators_with_three_valued_logic(pipes):
    a = pipes.attrs
    d = a["diameter_mm"]
    net = a["network"].astype(object).where(a["network"].notna(), None)
    assert ids(pipes, "diameter_mm > 200 AND network = 'water'") == ref(
        pipes, (d > 200) & (net == "water")
    )
    assert ids(pipes, "diameter_mm > 200 OR network = 'water'") == ref(
        pipes, (d > 200) | (net == "water")
    )
    # NOT of unknown stays unknown (SQL): rows with a null diameter are not selected.
    expected = (d <= 200).fillna(False)
    assert ids(pipes, "NOT (diameter_mm > 200)") == ref(pipes, expected)
    assert ids(pipes, "NOT diameter_mm > 200 OR diameter_mm IS NULL") == ref(
        pipes, expected | d.isna()
    )


def test_in_like_between_is_null_casei(pipes, lights):
    a = pipes.attrs
    assert ids(pipes, "network IN ('gas', 'heat', 'storm')") == ref(
        pipes, a["network"].isin(["gas", "heat", "storm"]) & a["network"].notna()
    )
    assert ids(pipes, "network NOT IN ('gas', 'storm')") == ref(
        pipes, ~a["network"].isin(["gas", "storm"]) & a["network"].notna()
    )
    assert ids(pipes, "install_year BETWEEN 1970 AND 1979") == ref(
        pipes, (a["install_year"] >= 1970) & (a["install_year"] <= 1979)
    )
    assert ids(pipes, "diameter_mm IS NULL") == ref(pipes, a["diameter_mm"].isna())
    assert ids(pipes, "material IS NOT NULL") == ref(pipes, a["material"].notna())
    # LIKE is case-sensitive; CASEI makes it insensitive.
    assert ids(pipes, "material LIKE 'P%'") == ref(pipes, a["material"].str.startswith("P"))
    assert ids(pipes, "CASEI(material) LIKE CASEI('p%')") == ref(
        pipes, a["material"].str.lower().str.startswith("p")
    )
    assert ids(pipes, "material LIKE 'P_'") == ref(pipes, a["material"].str.fullmatch("P."))
    la = lights.attrs
    assert ids(lights, "lamp_type LIKE '%head%'") == ref(
        lights, la["lamp_type"].str.contains("head", regex=False)
    )
    assert ids(lights, "id LIKE '791-%'") == {i for i in lights.ids if i.startswith("791-")}


def test_cql2_json_equals_cql2_text(pipes):
    text = "network = 'water' AND (diameter_mm >= 150 OR install_year < 1975)"
    js = {
        "op": "and",
        "args": [
            {"op": "=", "args": [{"property": "network"}, "water"]},
            {
                "op": "or",
                "args": [
                    {"op": ">=", "args": [{"property": "diameter_mm"}, 150]},
                    {"op": "<", "args": [{"property": "install_year"}, 1975]},
                ],
            },
        ],
    }
    got = ids(pipes, json.dumps(js), "cql2-json")
    assert got == ids(pipes, text) and got
    a = pipes.attrs
    water = (a["network"] == "water").astype("boolean")
    assert got == ref(pipes, water & ((a["diameter_mm"] >= 150) | (a["install_year"] < 1975)))


def test_spatial_predicates_against_shapely(lights, pipes):
    poly = shapely.Polygon([(-71.12, 42.37), (-71.10, 42.372), (-71.105, 42.385), (-71.121, 42.38)])
    wkt = poly.wkt
    g = lights.geometry
    assert ids(lights, f"S_INTERSECTS(geometry, {wkt})") == ref(lights, shapely.intersects(g, poly))
    assert ids(lights, f"S_WITHIN(geometry, {wkt})") == ref(lights, shapely.within(g, poly))
    assert ids(lights, f"S_DISJOINT(geometry, {wkt})") == ref(lights, shapely.disjoint(g, poly))
    assert ids(lights, "S_INTERSECTS(geometry, BBOX(-71.12, 42.37, -71.10, 42.38))") == ref(
        lights, shapely.intersects(g, shapely.box(-71.12, 42.37, -71.10, 42.38))
    )
    line = shapely.LineString([(114.26, 30.46), (114.4, 30.56)])
    pg = pipes.geometry
    assert ids(pipes, f"S_CROSSES(geometry, {line.wkt})") == ref(pipes, shapely.crosses(pg, line))
    area = shapely.box(114.3, 30.48, 114.36, 30.52)
    assert ids(pipes, f"S_CONTAINS({area.wkt}, geometry)") == ref(pipes, shapely.within(pg, area))
    assert ids(pipes, f"S_OVERLAPS(geometry, {area.wkt})") == ref(pipes, shapely.overlaps(pg, area))
    # An end point touches its line exactly; cql2-json keeps the client's coordinates to the bit.
    end = shapely.Point(shapely.get_coordinates(pg[3])[0])
    touch = {"op": "s_touches", "args": [{"property": "geometry"}, shapely.geometry.mapping(end)]}
    assert ids(pipes, json.dumps(touch), "cql2-json") == ref(pipes, shapely.touches(pg, end))
    assert pipes.ids[3] in ref(pipes, shapely.touches(pg, end))
    same = {"op": "s_equals", "args": [{"property": "geometry"}, shapely.geometry.mapping(pg[5])]}
    assert ids(pipes, json.dumps(same), "cql2-json") == {pipes.ids[5]}


def test_s_dwithin_in_metres_against_geod(lights):
    p = lights.geometry[100]
    lon, lat = p.x + 0.00011, p.y - 0.00007
    coords = shapely.get_coordinates(lights.geometry)
    _, _, dist = GEOD.inv(np.full(len(coords), lon), np.full(len(coords), lat), *coords.T)
    for radius in (25.0, 120.0, 400.0):
        got = ids(lights, f"S_DWITHIN(geometry, POINT({lon} {lat}), {radius})")
        expected = set(lights.ids[dist <= radius])
        # Only features within a millimetre of the edge may differ.
        edge = set(lights.ids[np.abs(dist - radius) < 1e-3])
        assert got - edge == expected - edge and len(expected) > 0
    km = ids(lights, f"S_DWITHIN(geometry, POINT({lon} {lat}), 0.4, kilometers)")
    assert km == ids(lights, f"S_DWITHIN(geometry, POINT({lon} {lat}), 400)")


def test_filter_through_http_counts_and_filter_crs(served_store):
    lights = lights_layer(streetlights_frame())
    with TestClient(app_for(served_store, items_max_limit=10_000)) as c:
        r = c.get(
            "/collections/lights/items",
            params={"filter": "status = 'fault' AND wattage_w >= 50", "limit": 10_000},
        )
        body = r.json()
        a = lights.attrs
        expected = ref(lights, (a["status"] == "fault").astype("boolean") & (a["wattage_w"] >= 50))
        assert body["numberMatched"] == len(expected) > 100
        assert {f["id"] for f in body["features"]} == expected
        js = json.dumps({"op": "=", "args": [{"property": "status"}, "off"]})
        r = c.get(
            "/collections/lights/items",
            params={"filter": js, "filter-lang": "cql2-json", "limit": 1},
        )
        assert r.json()["numberMatched"] == len(ref(lights, a["status"] == "off"))
        # filter-crs: the same box given lat/lon (EPSG:4326 axis order) selects the same lights.
        box = shapely.box(-71.12, 42.37, -71.10, 42.38)
        expected = ref(lights, shapely.intersects(lights.geometry, box))
        r = c.get(
            "/collections/lights/items",
            params={
                "filter": "S_INTERSECTS(geometry, POLYGON((42.37 -71.12, 42.37 -71.10, "
                "42.38 -71.10, 42.38 -71.12, 42.37 -71.12)))",
                "filter-crs": "http://www.opengis.net/def/crs/EPSG/0/4326",
                "limit": 10_000,
            },
        )
        assert {f["id"] for f in r.json()["features"]} == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("status = = 'x'", "not valid cql2-text"),
        ("nosuch = 3", "nosuch"),
        ("diameter_mm = 'big'", "compares a number with a string"),
        ("network > 3", "compares a string with a number"),
        ("S_INTERSECTS(geometry, 3)", "S_INTERSECTS"),
        ("S_DWITHIN(geometry, POINT(1 2), -5)", "0 or more metres"),
        ("S_DWITHIN(geometry, POINT(1 2), 5, parsecs)", "unit"),
        ("foo(network) = 1", "not supported"),
        ("diameter_mm LIKE 'a%'", "LIKE"),
        ("network IN (1, 2)", "compares a string with a number"),
        ("", "empty"),
    ],
)
def test_broken_cql2_is_a_clear_error(pipes, text, needle):
    with pytest.raises(InvalidParameter) as exc:
        evaluate(parse(text), pipes)
    assert needle.lower() in str(exc.value).lower()


@pytest.mark.parametrize(
    "text",
    [
        '{"op": "="}',
        "[1, 2]",
        '{"op": "and", "args": [true]}',
        "not json",
        '{"op":"zzz","args":[1]}',
    ],
)
def test_broken_cql2_json_is_a_clear_error(pipes, text):
    with pytest.raises(InvalidParameter):
        evaluate(parse(text, "cql2-json"), pipes)


def test_a_date_literal_against_dates_and_instants():
    """`DATE('...')` against a date property compares days; against a date-time property it
    stands for the instant its UTC day starts (these raised TypeError, a 500, before)."""
    schema = custom_schema(
        {"name": "visits", "geometry": "point", "fields": {"day": "date", "at": "datetime"}}
    )
    days = ["2020-01-01", None, "2020-01-03", "2019-12-31"]
    times = [
        "2020-01-01T00:00:00.000Z",
        None,
        "2020-01-02T23:59:59.999Z",
        "2019-12-31T23:00:00.000Z",
    ]
    layer = make_layer(
        schema,
        shapely.points([[114.3 + i * 0.001, 30.5] for i in range(4)]),
        list("abcd"),
        day=days,
        at=times,
    )
    day, at = layer.attrs["day"], layer.attrs["at"]
    start = pd.Timestamp("2020-01-01", tz="UTC")
    cases = {
        "day = DATE('2020-01-01')": day == pd.Timestamp("2020-01-01"),
        "day > DATE('2020-01-01')": day > pd.Timestamp("2020-01-01"),
        "at >= DATE('2020-01-01')": at >= start,
        "at < DATE('2020-01-01')": at < start,
        "at = DATE('2020-01-01')": at == start,
    }
    for text, expected in cases.items():
        assert ids(layer, text) == ref(layer, expected), text
