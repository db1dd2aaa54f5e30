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
from shapely.geometry import mapping

from layers.errors import Uncompiled
from layers.layer import SOURCE, Layer, coerce
from layers.models import Field, FieldType
from layers.schemas import custom_schema
from tests.twin.serve_fixtures import app_for, fill_store, make_layer, sites_layer

from .test_stores_alike import ADMIN, copy_into, create_database, drop_database

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
    directory = fill_store(where / "store", [things(), sites_layer()])
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
        lit = mapping(shape)
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


def _items(client: TestClient, query: str, collection: str = "things") -> dict[str, Any]:
    r = client.get(f"/collections/{collection}/items?{query}")
    assert r.status_code == 200, (query, r.text)
    doc = r.json()
    doc.pop("timeStamp")
    return doc


@pytest.mark.parametrize(
    "flt", ["code_n > 0", "name LIKE '%a%' OR ok", f"S_DWITHIN(geometry, {P}, 900)"]
)
@pytest.mark.parametrize(("limit", "offset"), [(7, 0), (7, 14), (50, 380), (5, 10_000)])
def test_pages_are_the_same(apps, no_scan, flt: str, limit: int, offset: int) -> None:
    """Each page: the same features, counts and next / previous links."""
    query = f"filter={quote(flt)}&limit={limit}&offset={offset}"
    held, sql = _items(apps["gpkg"], query), _items(apps["postgis"], query)
    assert sql == held
    assert held["numberMatched"] > 0 and held["numberReturned"] == len(held["features"])


@pytest.mark.parametrize("when", [*DATETIMES, "2024-02-01/2024-04-01", "2024-07-01/.."])
def test_datetime_of_a_period_layer(apps, no_scan, when: str) -> None:
    """Construction sites are matched by the period they cover (start and end dates)."""
    query = f"datetime={quote(when)}"
    held = _items(apps["gpkg"], query, "sites")
    assert _items(apps["postgis"], query, "sites") == held


WIDE = shapely.LineString([(LON - 0.3, LAT - 0.1), (LON + 0.3, LAT + 0.05)])
NEAR = {
    "point": (shapely.Point(LON + 0.01, LAT + 0.01), 2e-5),
    "line": (shapely.LineString([(LON, LAT + 0.005), (LON + 0.02, LAT + 0.012)]), 2e-5),
    "polygon": (
        shapely.Polygon([(LON, LAT), (LON + 0.012, LAT), (LON + 0.012, LAT + 0.009)]),
        2e-5,
    ),
    "wide line": (WIDE, 1e-4),
}
"""Literals of S_DWITHIN, and how far apart (relative to the distance) the two measures may
be: PostGIS finds the nearest points on the sphere, twin in a plane scaled by the ellipsoid's
radii there (a wide shape: its transverse Mercator zone); both then measure geodesically."""


@pytest.mark.parametrize("name", list(NEAR))
def test_dwithin_at_the_edge_of_its_distance(apps, no_scan, name: str) -> None:
    """Distances set at, and between, the features' own distances (`twin.metric`): the two
    answers differ only by features within the stated bound of the distance, and are equal
    whenever no feature lies that close to it."""
    from twin.metric import distances

    literal, relative = NEAR[name]
    layer = things()
    d = distances(layer.geometry, literal)
    known = np.flatnonzero(np.isfinite(d))
    order = known[np.argsort(d[known])]
    thresholds = []
    for k in order[:: max(1, len(order) // 15)]:
        if d[k] < 3000:  # just inside, at, and just outside the bound around a feature
            bound = 1e-3 + relative * d[k]
            thresholds += [float(d[k] - 2 * bound), float(d[k]), float(d[k] + 2 * bound)]
    exact = 0
    for t in thresholds:
        if t < 0:
            continue
        flt = json.dumps(
            {"op": "s_dwithin", "args": [{"property": "geometry"}, mapping(literal), t]}
        )
        query = f"filter-lang=cql2-json&filter={quote(flt)}"
        _, held, _ = answer(apps["gpkg"], query)
        _, sql, _ = answer(apps["postgis"], query)
        assert set(held) == set(layer.ids[known[d[known] <= t]])
        edge = set(layer.ids[known[np.abs(d[known] - t) <= 1e-3 + relative * t]])
        assert set(held) ^ set(sql) <= edge, (t, sorted(set(held) ^ set(sql)))
        if not edge:
            exact += 1
            assert sql == held
    assert exact >= len(thresholds) // 2


@pytest.mark.parametrize(
    "flt",
    [
        "name = 'x'' OR 1=1 --'",
        "name = 'x''; DROP TABLE layers.things; --'",
        "name LIKE '%'' OR ''1''=''1'",
        "id IN ('t-0001'') OR (''1''=''1', 'x')",
        "kind = 'valve\" OR 1=1 --'",
    ],
)
def test_hostile_literals_are_only_values(apps, no_scan, flt: str) -> None:
    """A literal made to end the SQL string is a value like any other: no feature has it."""
    query = f"filter={quote(flt)}"
    assert answer(apps["postgis"], query) == answer(apps["gpkg"], query) == (200, [], 0)
    assert answer(apps["postgis"], "limit=1")[2] == N  # the table is whole


@pytest.mark.parametrize(
    "query",
    [
        "filter=" + quote('"na""me" = \'x\''),
        "filter=" + quote('"name\\" = 1 OR 1=1 --" = \'x\''),
        "filter-lang=cql2-json&filter="
        + quote('{"op": "=", "args": [{"property": "name\\" = \'\' OR 1=1 --"}, "x"]}'),
        "na%22me=x",
        "name%27%20OR%201%3D1%20--=x",
    ],
)
def test_hostile_property_names_are_refused(apps, no_scan, query: str) -> None:
    for client in apps.values():
        r = client.get(f"/collections/things/items?{query}")
        assert r.status_code == 400 and r.json()["code"] == "InvalidParameter", r.text


def test_the_sql_holds_no_value() -> None:
    """Every value of a selection is a parameter: none of them is in the SQL text."""
    import psycopg

    from layers import where as w
    from layers.postgis_where import Compiled

    hostile = "x' OR 1=1 --"
    schema = things().schema
    sel = w.Where(
        bbox=w.Bounds(1.0, 2.0, 3.0, 4.0),
        equals=(w.Equals("name", FieldType.STRING, hostile),),
        interval=(None, None),
        filter=w.All(
            (
                w.Compare("=", w.Column("kind", FieldType.STRING), w.Value(hostile)),
                w.Like(w.Column("name", FieldType.STRING), hostile + "%"),
                w.Spatial("intersects", shapely.to_wkb(shapely.Point(5.5, 6.5))),
            )
        ),
    )
    compiled = Compiled(sel, schema)
    with psycopg.connect(ADMIN) as db:
        text = compiled.sql.as_string(db)
    assert "OR 1=1" not in text and "5.5" not in text and "1.0" not in text
    assert hostile in compiled.params.values()
    bad = w.Where(filter=w.Compare("=", w.Column('na"me', FieldType.STRING), w.Value("x")))
    with pytest.raises(Uncompiled):
        Compiled(bad, schema)  # a column the stored schema lacks is never named


def test_what_sql_cannot_say_is_scanned(apps) -> None:
    """CASEI (Unicode case folding) and instants finer than a microsecond are evaluated in
    memory, the layer read a chunk at a time: the same answers, and the scan did happen."""
    store = apps["postgis"].app.state.catalog.store
    scanned: list[str] = []
    real = store.chunks

    def counted(name: str, *args: Any) -> Any:
        scanned.append(name)
        return real(name, *args)

    store.chunks = counted
    try:
        for flt in [
            "CASEI(name) = CASEI('MAIN st')",
            "CASEI(name) LIKE 'ss%'",
            "LOWER(kind) = 'valve'",
            "seen_at > TIMESTAMP('2020-01-03T00:00:00.0000001Z')",
        ]:
            scanned.clear()
            query = f"filter={quote(flt)}"
            held = answer(apps["gpkg"], query)
            assert held[0] == 200 and held[2]
            assert answer(apps["postgis"], query) == held
            assert scanned == ["things"], flt
    finally:
        del store.chunks
