"""Items selected by the PostGIS store in one SQL query (`Store.select`) against the in-memory
evaluator: the same district-like layer (every field type, nulls, extras, CJK and wildcard
text, points, lines, polygons, features without geometry) written into a GeoPackage directory
(served from memory) and into PostGIS (served by SQL), a broad list of filters asked of both,
the ids in order and `numberMatched` compared; pages; `S_DWITHIN` at the edge of its
distance against `twin.metric`; hostile literals; and the SQL path never scanning the layer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import shapely
import shapely.geometry
from fastapi.testclient import TestClient

from layers.layer import SOURCE, Layer, coerce
from layers.models import Field, FieldType
from layers.schemas import custom_schema
from tests.twin.serve_fixtures import app_for, fill_store, make_layer

from .test_stores_alike import copy_into, create_database, drop_database

pytestmark = [pytest.mark.postgis, pytest.mark.xdist_group("postgis")]

N = 420
LON, LAT = 114.30, 30.50
NAMES = [
    "Main St",
    "main st",
    "汤逊湖北路",
    "江夏区 文化大道",
    "50% off_sale",
    "back\\slash",
    "it's",
    "",
    "line\nbreak",
    "Ünïcödé",
    "ß street",
    "trail\\",
    None,
]


def things() -> Layer:
    """A layer of every field type, extras included, with nulls and awkward values, and
    points, lines, polygons and features without geometry."""
    rng = np.random.default_rng(13)
    schema = custom_schema(
        {
            "name": "things",
            "title": "Things",
            "geometry": "any",
            "fields": {
                "name": "string",
                "kind": "string",
                "code_n": "integer",
                "ratio": "float",
                "ok": "boolean",
                "day": "date",
                "seen_at": "datetime",
                "install_year": "integer",
                "removed_date": "date",
                "status": "string",
            },
        }
    ).with_extras(
        [
            Field("owner_ref", FieldType.STRING, extra=True),
            Field("rating", FieldType.FLOAT, extra=True),
        ]
    )
    i = np.arange(N)
    x = LON + rng.random(N) * 0.02
    y = LAT + rng.random(N) * 0.02
    geoms: list[Any] = []
    for k in range(N):
        kind = k % 4
        if kind == 0:
            geoms.append(shapely.Point(x[k], y[k]))
        elif kind == 1:
            dx, dy = rng.normal(0, 0.001, 2)
            geoms.append(shapely.LineString([(x[k], y[k]), (x[k] + dx, y[k] + dy)]))
        elif kind == 2:
            s = 0.0002 + rng.random() * 0.0008
            geoms.append(shapely.box(x[k], y[k], x[k] + s, y[k] + s))
        else:
            geoms.append(shapely.MultiPoint([(x[k], y[k]), (x[k] + 0.0003, y[k])]))
    for k in (7, 99, 250):
        geoms[k] = None

    def nulled(values: Any, every: int, at: int) -> list[Any]:
        out = list(values)
        for k in range(at, N, every):
            out[k] = None
        return out

    day = pd.Timestamp("2019-12-30") + pd.to_timedelta(i % 9, unit="D")
    seen = pd.Timestamp("2020-01-01T00:00:00Z") + pd.to_timedelta(i * 3_600_123, unit="ms")
    status = np.array(["in_service", "abandoned", "removed", "planned", None], dtype=object)
    layer = make_layer(
        schema,
        geoms,
        [f"t-{k:04d}" for k in range(N)],
        name=[NAMES[k % len(NAMES)] for k in range(N)],
        kind=nulled(np.array(["valve", "pipe", "lamp"])[i % 3], 17, 4),
        code_n=nulled((i * 37) % 101 - 50, 13, 2),
        ratio=nulled(np.round((i % 21) * 0.25 - 1.0, 2), 11, 5),
        ok=nulled(i % 3 == 0, 10, 1),
        day=nulled(day.strftime("%Y-%m-%d"), 8, 3),
        seen_at=nulled(seen.strftime("%Y-%m-%dT%H:%M:%S.%fZ").str[:-4] + "Z", 9, 6),
        install_year=nulled(1950 + (i * 7) % 75, 12, 0),
        removed_date=nulled(
            [None if k % 5 else f"20{10 + k % 14}-0{1 + k % 9}-15" for k in range(N)], 50, 1
        ),
        status=status[i % 5],
        owner_ref=nulled([f"OR-{k % 23:02d}" for k in range(N)], 7, 0),
        rating=nulled((i % 7) * 1.5, 6, 2),
    )
    layer.attrs[SOURCE] = coerce(
        ["gen-a" if k % 2 else "gen-b" for k in range(N)], FieldType.STRING
    )
    return layer


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """The same layer served from memory (GeoPackage) and by SQL (PostGIS)."""
    where: Path = tmp_path_factory.mktemp("select_sql")
    directory = fill_store(where / "store", [things()])
    name, url = create_database("select")
    try:
        copy_into(directory, url)
        with (
            TestClient(app_for(directory), raise_server_exceptions=False) as gpkg,
            TestClient(app_for(url), raise_server_exceptions=False) as pg,
        ):
            assert gpkg.app.state.catalog.holds and not pg.app.state.catalog.holds
            yield {"gpkg": gpkg, "postgis": pg}
    finally:
        drop_database(name)


def answer(client: TestClient, query: str) -> tuple[int, list[str], int | None]:
    r = client.get(f"/collections/things/items?limit=10000&{query}")
    if r.status_code != 200:
        return r.status_code, [], None
    doc = r.json()
    return 200, [f["id"] for f in doc["features"]], doc["numberMatched"]


# A feature of the layer to measure from, and a polygon over part of it.
P = f"POINT({LON + 0.01} {LAT + 0.01})"
AREA = f"POLYGON(({LON} {LAT}, {LON + 0.012} {LAT}, {LON + 0.012} {LAT + 0.009}, {LON} {LAT}))"
LINE = f"LINESTRING({LON} {LAT + 0.005}, {LON + 0.02} {LAT + 0.012})"

FILTERS = [
    # comparisons of every type, nulls unknown
    "code_n = 3",
    "code_n <> 3",
    "code_n < -10",
    "code_n <= 0",
    "code_n > 40.5",
    "code_n >= 50",
    "ratio = 0.5",
    "ratio < 0",
    "ratio >= 2.25",
    "ok = true",
    "ok",
    "NOT ok",
    "ok <> false",
    "ok < true",
    "name = 'Main St'",
    "name <> 'Main St'",
    "name < 'a'",
    "name >= '江'",
    "name > 'Z'",
    "name = '汤逊湖北路'",
    "kind = 'valve' AND code_n > 0",
    "kind = 'valve' OR code_n > 45",
    "NOT (kind = 'valve' OR code_n > 45)",
    "NOT (code_n > 0)",
    "(code_n > 0) = ok",
    "(code_n > 0) = true",
    "code_n = NULL",
    "NOT (code_n = NULL)",
    "code_n > ratio",
    "rating >= 3 AND owner_ref = 'OR-05'",
    "owner_ref < 'OR-03'",
    "rating IS NULL",
    "owner_ref IS NOT NULL",
    # dates and instants
    "day = DATE('2020-01-01')",
    "day > DATE('2020-01-02')",
    "day <= '2019-12-31'",
    "day > TIMESTAMP('2020-01-01T10:00:00Z')",
    "day = TIMESTAMP('2020-01-02T23:59:59Z')",
    "seen_at > TIMESTAMP('2020-01-05T00:00:00Z')",
    "seen_at <= '2020-01-03T12:00:00.123Z'",
    "seen_at = TIMESTAMP('2020-01-01T01:00:00.123Z')",
    "seen_at > DATE('2020-01-10')",
    "seen_at < day",
    "day < seen_at",
    "seen_at BETWEEN TIMESTAMP('2020-01-02T00:00:00Z') AND TIMESTAMP('2020-01-04T00:00:00Z')",
    # LIKE: wildcards, escapes, CJK, newlines, nulls
    "name LIKE 'Main%'",
    "name LIKE '%st'",
    "name LIKE 'm_in%'",
    "name LIKE '%\\%%'",
    "name LIKE '%\\_%'",
    "name LIKE '%\\\\%'",
    "name LIKE 'trail\\'",
    "name LIKE 'back\\\\slash'",
    "name LIKE '%湖%'",
    "name LIKE '江夏区_文化%'",
    "name LIKE 'line%break'",
    "name LIKE 'line_break'",
    "name LIKE ''",
    "name LIKE '%'",
    "NOT (name LIKE '%a%')",
    "name LIKE '%''%'",
    "id LIKE 't-00%'",
    "source = 'gen-a'",
    "source LIKE '%b'",
    # IN, BETWEEN, IS NULL
    "kind IN ('valve', 'lamp')",
    "code_n IN (1, 2, 3, -50)",
    "NOT (code_n IN (1, 2, 3))",
    "code_n IN (1, NULL)",
    "NOT (code_n IN (1, NULL))",
    "name IN ('汤逊湖北路', 'it''s')",
    "id IN ('t-0001', 't-0099', 't-0419', 'nope')",
    "code_n BETWEEN -5 AND 5",
    "NOT (code_n BETWEEN -5 AND 5)",
    "ratio BETWEEN 0 AND 1",
    "name IS NULL",
    "kind IS NOT NULL",
    "geometry IS NULL",
    "geometry IS NOT NULL",
    # spatial
    f"S_INTERSECTS(geometry, {AREA})",
    f"S_INTERSECTS({AREA}, geometry)",
    f"S_DISJOINT(geometry, {AREA})",
    f"NOT S_INTERSECTS(geometry, {AREA})",
    f"S_WITHIN(geometry, {AREA})",
    f"S_CONTAINS({AREA}, geometry)",
    f"S_CONTAINS(geometry, POINT({LON + 0.0101} {LAT + 0.0101}))",
    f"S_OVERLAPS(geometry, {AREA})",
    f"S_TOUCHES(geometry, {AREA})",
    f"S_CROSSES(geometry, {LINE})",
    f"S_INTERSECTS(geometry, {LINE})",
    f"S_EQUALS(geometry, POINT({LON} {LAT}))",
    f"S_INTERSECTS(geometry, BBOX({LON}, {LAT}, {LON + 0.005}, {LAT + 0.005}))",
    f"S_DWITHIN(geometry, {P}, 300)",
    f"S_DWITHIN(geometry, {P}, 0.4, kilometers)",
    f"S_DWITHIN({LINE}, geometry, 100)",
    f"S_DWITHIN(geometry, {AREA}, 50)",
    f"S_DWITHIN(geometry, {AREA}, 0)",
    f"NOT S_DWITHIN(geometry, {P}, 500)",
    f"S_DWITHIN(geometry, {P}, 500) AND kind = 'pipe' AND code_n > 0",
    f"S_INTERSECTS(geometry, {AREA}) OR name LIKE '%湖%'",
]
FILTERS_JSON = [
    '{"op": "=", "args": [{"property": "ok"}, {"op": "<", "args": [{"property": "code_n"}, 0]}]}',
    '{"op": "in", "args": [{"property": "kind"}, ["valve", null]]}',
    '{"op": "isNull", "args": [{"property": "seen_at"}]}',
    '{"op": "not", "args": [{"op": "isNull", "args": [{"property": "removed_date"}]}]}',
]
DATETIMES = [
    "2000-01-01T00:00:00Z",
    "1990-06-30",
    "../1970-01-01",
    "2015-03-01/..",
    "2015-01-15/2015-01-15",
    "1960-01-01T00:00:00Z/1980-12-31T23:59:59Z",
]
EQUALS = [
    "kind=valve",
    "code_n=3",
    "ratio=0.5",
    "ok=true",
    "day=2020-01-01",
    "owner_ref=OR-05",
    "rating=3.0",
    "status=abandoned",
    "name=%E6%B1%A4%E9%80%8A%E6%B9%96%E5%8C%97%E8%B7%AF",
]
BBOX = f"bbox={LON},{LAT},{LON + 0.008},{LAT + 0.006}"


def _exact() -> list[str]:
    """Filters (CQL2 JSON, whose numbers are kept exactly) on the layer's own shapes: equal
    to, containing, touching one."""
    g = things().geometry
    point, line, box = g[0], g[1], g[2]
    right = shapely.box(*(np.array(box.bounds) + [box.bounds[2] - box.bounds[0], 0] * 2))

    def op(name: str, shape: Any, *more: Any, first: bool = True) -> str:
        lit = shapely.geometry.mapping(shape)
        args = [{"property": "geometry"}, lit] if first else [lit, {"property": "geometry"}]
        return json.dumps({"op": name, "args": [*args, *more]})

    return [
        op("s_equals", point),
        op("s_equals", line),
        op("s_contains", box.centroid),
        op("s_within", box.centroid, first=False),
        op("s_touches", right),
        op("s_touches", shapely.get_point(line, 0)),
        op("s_intersects", right),
        op("s_dwithin", point, 0),
        op("s_disjoint", box),
    ]


def _queries() -> list[str]:
    out = [f"filter={quote(f)}" for f in FILTERS]
    out += [f"filter-lang=cql2-json&filter={quote(f)}" for f in [*FILTERS_JSON, *_exact()]]
    out += [f"datetime={quote(d)}" for d in DATETIMES]
    out += EQUALS
    out += [
        BBOX,
        f"{BBOX}&filter={quote('code_n > 0')}",
        f"{BBOX}&kind=pipe&datetime=1990-01-01/..",
        f"kind=lamp&filter={quote(f'S_DWITHIN(geometry, {P}, 600)')}&datetime=../2000-01-01",
    ]
    return out


@pytest.fixture
def no_scan(apps) -> Iterator[None]:
    """The PostGIS server's store, unable to scan a layer a chunk at a time."""
    store = apps["postgis"].app.state.catalog.store

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the layer was scanned")

    store.chunks = refused
    try:
        yield
    finally:
        del store.chunks


@pytest.mark.parametrize("query", _queries())
def test_sql_selects_what_memory_selects(apps, no_scan, query: str) -> None:
    held, sql = answer(apps["gpkg"], query), answer(apps["postgis"], query)
    assert held[0] == 200, held
    assert sql == held


def test_smoke(apps) -> None:
    for q in ["filter=code_n > 3", "filter=name LIKE 'Main%'", "kind=valve"]:
        a, b = answer(apps["gpkg"], q), answer(apps["postgis"], q)
        assert a == b and a[2], (q, a, b)
