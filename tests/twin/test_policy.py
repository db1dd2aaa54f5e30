"""Access control on every path: a store holding restricted gas pipes and valves, internal and
restricted fields, a restricted layer and an area rule, walked route by route (every GET path
of the OpenAPI document, enumerated, and the lean paths) by an anonymous caller, a viewer, a
water engineer limited to one grid cell and an admin. Every restricted thing carries a marker
string; no answer, tile, event or error holds a marker its caller may not see, and some answer
holds every marker it may see. Counts agree with the features each may see."""

from __future__ import annotations

import gzip
import json
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mapbox_vector_tile
import morecantile
import pytest
import shapely
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from layers.keys import KeyRing
from layers.models import Field, FieldType
from layers.schemas import GRIDS, LIGHTS, PIPES, SITES, VALVES, custom_schema
from twin.cli import app as cli

from .serve_fixtures import app_for, fill_store, make_layer

CELL1 = shapely.box(114.290, 30.490, 114.298, 30.498)
CELL2 = shapely.box(114.302, 30.490, 114.310, 30.498)
C1 = (114.294, 30.494)
C2 = (114.306, 30.494)
SUBSTATIONS = custom_schema(
    {
        "name": "substations",
        "title": "Substations",
        "geometry": "point",
        "classification": "restricted",
        "fields": {"label": "string"},
    }
)
POLICY = """
# The test district's policy.
[layers.pipes.fields]
pressure_zone = "internal"
owner_note = "restricted"

[[layers.pipes.rows]]
match = { network = "gas" }
classification = "restricted"
departments = ["gas"]

[[layers.valves.rows]]
match = { network = ["gas"] }
classification = "restricted"
departments = ["gas"]

[layers.sites.fields]
contractor = { classification = "restricted", departments = ["construction"] }

[[areas]]
name = "depot"
cells = ["C-2"]
layers = ["lights"]
classification = "restricted"
"""
CALLERS = ("anonymous", "viewer", "engineer", "admin")
MARKERS: dict[str, set[str]] = {
    "GASX": {"admin"},  # gas pipes and valves (restricted, gas department)
    "PZINTX": {"viewer", "engineer", "admin"},  # pipes.pressure_zone values (internal)
    "pressure_zone": {"viewer", "engineer", "admin"},
    "OWNX": {"engineer", "admin"},  # pipes.owner_note, an extra (restricted)
    "owner_note": {"engineer", "admin"},
    "ACMEX": {"admin"},  # sites.contractor (restricted, construction department)
    "contractor": {"admin"},
    "AREAX": {"admin"},  # the light in cell C-2 (the depot area rule)
    "SUBONE": {"engineer", "admin"},  # the substation in C-1 (restricted layer)
    "SUBTWO": {"admin"},  # the substation in C-2: outside the engineer's cell
    "substations": {"engineer", "admin"},
    "W2X": {"anonymous", "viewer", "admin"},  # a water pipe in C-2
}
COUNTS = {
    "pipes": {"anonymous": 2, "viewer": 2, "engineer": 1, "admin": 4},
    "valves": {"anonymous": 1, "viewer": 1, "engineer": 1, "admin": 2},
    "sites": {"anonymous": 2, "viewer": 2, "engineer": 1, "admin": 2},
    "lights": {"anonymous": 2, "viewer": 2, "engineer": 2, "admin": 3},
    "grids": {"anonymous": 2, "viewer": 2, "engineer": 1, "admin": 2},
    "substations": {"anonymous": None, "viewer": None, "engineer": 1, "admin": 2},
}
TMS = morecantile.tms.get("WebMercatorQuad")
Z = 12
TILE = TMS.tile(114.300, 30.494, Z)


def _line(x: float, y: float) -> shapely.LineString:
    return shapely.LineString([(x - 0.002, y), (x + 0.002, y)])


def district(root: Path) -> Path:
    """The test district's store."""
    pipes_schema = PIPES.with_extras([Field("owner_note", FieldType.STRING, extra=True)])
    pipes = make_layer(
        pipes_schema,
        [_line(*C1), _line(C2[0], C2[1]), _line(C1[0], C1[1] + 0.002), _line(C2[0], 30.496)],
        ["pipe-w1", "pipe-W2X", "pipe-GASX1", "pipe-GASX2"],
        network=["water", "water", "gas", "gas"],
        pressure_zone=["PZINTX-1", "PZINTX-2", "PZINTX-3", "PZINTX-4"],
        owner_note=["OWNX-1", "OWNX-2", "OWNX-3", "OWNX-4"],
        diameter_mm=[150.0, 150.0, 100.0, 100.0],
        status=["in_service"] * 4,
    )
    valves = make_layer(
        VALVES,
        [shapely.Point(*C1), shapely.Point(C1[0], C1[1] + 0.002)],
        ["valve-w1", "valve-GASX1"],
        kind=["valve", "valve"],
        network=["water", "gas"],
        normally_open=[True, True],
        operable=[True, True],
    )
    sites = make_layer(
        SITES,
        [
            shapely.box(114.291, 30.491, 114.293, 30.493),
            shapely.box(114.303, 30.491, 114.305, 30.493),
        ],
        ["site-1", "site-2"],
        contractor=["ACMEX Works", "ACMEX Digging"],
        permit_id=["P-1", "P-2"],
    )
    lights = make_layer(
        LIGHTS,
        [
            shapely.Point(114.295, 30.492),
            shapely.Point(114.307, 30.492),
            shapely.Point(114.296, 30.497),
        ],
        ["light-1", "light-AREAX2", "light-3"],
        status=["on", "on", "fault"],
        circuit=["c1", "c2", "c1"],
    )
    grids = make_layer(
        GRIDS,
        [CELL1, CELL2],
        ["cell-1", "cell-2"],
        level=["cell", "cell"],
        code=["C-1", "C-2"],
        name=["North", "South"],
    )
    subs = make_layer(
        SUBSTATIONS,
        [shapely.Point(114.2935, 30.4955), shapely.Point(114.3055, 30.4955)],
        ["sub-SUBONE", "sub-SUBTWO"],
        label=["SUBONE main", "SUBTWO main"],
    )
    return fill_store(root, [pipes, valves, sites, lights, grids, subs])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    where = tmp_path_factory.mktemp("policy")
    root = district(where / "store")
    policy = where / "policy.toml"
    policy.write_text(POLICY)
    ring = KeyRing.beside(root)
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    for name, role, kw in (
        ("viewer", "viewer", {}),
        ("engineer", "engineer", {"department": "water", "cells": ["C-1"]}),
        ("admin", "admin", {}),
    ):
        _, secret = ring.add(name, role, **kw)
        headers[name] = {"Authorization": f"Bearer {secret}"}
    return {"root": root, "policy": policy, "headers": headers, "ring": ring}


@pytest.fixture(scope="module")
def client(store: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(
        app_for(store["root"], policy=store["policy"]), raise_server_exceptions=False
    ) as c:
        yield c


IDS = {
    "pipes": ["pipe-w1", "pipe-W2X", "pipe-GASX1", "pipe-GASX2"],
    "valves": ["valve-w1", "valve-GASX1"],
    "sites": ["site-1", "site-2"],
    "lights": ["light-1", "light-AREAX2", "light-3"],
    "grids": ["cell-1", "cell-2"],
    "substations": ["sub-SUBONE", "sub-SUBTWO"],
}
MISSING = "nosuchfeature"
PATH_VALUES: dict[str, list[str]] = {
    "collectionId": list(IDS),
    "tileMatrixSetId": ["WebMercatorQuad"],
    "tileMatrix": [str(Z)],
    "z": [str(Z)],
    "y": [str(TILE.y)],
    "tileRow": [str(TILE.y)],
    "x": [str(TILE.x)],
    "tileCol": [str(TILE.x)],
    "fontstack": ["DejaVu Sans"],
    "codepoints": ["0-255"],
}
QUERY_VALUES: dict[str, list[str]] = {
    "lon": [str(C1[0]), str(C2[0])],
    "lat": [str(C1[1])],
    "q": ["GASX", "pipe", "SUBONE", "SUBTWO", "ACMEX", "AREAX", "light", "C-", "PZINTX", "OWNX"],
    "collection": list(IDS),
    "id": [i for ids in IDS.values() for i in ids],
    "distance": ["800"],
}
EXTRA_QUERIES: dict[str, list[str]] = {
    "/collections/{collectionId}/items": [
        "limit=1000",
        "f=html",
        "f=json&limit=1000&bbox=114.28,30.48,114.32,30.51",
    ],
    "/collections/{collectionId}": ["f=html"],
    "/collections/{collectionId}/queryables": [""],
    "/collections/{collectionId}/items/{featureId}": ["f=html"],
    "/collections": ["f=html"],
    "/query/near": ["radius=3000"],
    "/query/at": ["tolerance=2000"],
    "/query/stats": ["level=cell"],
    "/tiles/{tileMatrixSetId}/{z}/{y}/{x}": [
        "collections=pipes,valves,lights,sites,grids,substations"
    ],
}
SKIP = ("/events", "/admin/")
"""Walked apart: the event stream (it never ends) and the admin routes (admins only)."""


def expand(path: str, op: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Concrete URLs of a route (every collection, every feature id, each query value) with
    the feature id asked for (None when the route names none)."""
    names = re.findall(r"{(\w+)}", path)
    combos: list[tuple[dict[str, str], str | None]] = [({}, None)]
    for name in names:
        nxt = []
        for got, fid in combos:
            if name == "featureId":
                ids = IDS.get(got.get("collectionId", "pipes"), IDS["pipes"])
                nxt += [({**got, name: v}, v) for v in [*ids, MISSING]]
            else:
                assert name in PATH_VALUES, f"no value for {{{name}}} of {path}"
                nxt += [({**got, name: v}, fid) for v in PATH_VALUES[name]]
        combos = nxt
    required = [
        p["name"] for p in op.get("parameters", []) if p["in"] == "query" and p.get("required")
    ]
    for name in required:
        assert name in QUERY_VALUES, f"no value for query parameter {name} of {path}"
    out = []
    for got, fid in combos:
        base = re.sub(r"{(\w+)}", lambda m, got=got: quote(got[m.group(1)]), path)
        queries: list[list[tuple[str, str]]] = [[]]
        for name in required:
            queries = [[*q, (name, v)] for q in queries for v in QUERY_VALUES[name]]
        for q in queries:
            text = "&".join(f"{k}={quote(v)}" for k, v in q)
            asked = fid or dict(q).get("id")
            named = [v for k, v in q if k == "collection"]
            if named and asked is not None and asked not in IDS[named[0]]:
                continue
            out.append((f"{base}?{text}" if text else base, asked))
            for extra in EXTRA_QUERIES.get(path, []):
                out.append((f"{base}?{'&'.join(filter(None, [text, extra]))}", asked))
    return out


def _filler(marker: str) -> str:
    """A string of the marker's length and shape that names nothing."""
    return "".join("Q" if c.isupper() else "q" if c.isalpha() else c for c in marker)


def _method_url(url: str) -> tuple[str, str]:
    return ("GET", url)


def body_text(r: Any) -> str:
    """An answer as text: JSON, HTML, or an MVT tile (its strings are stored as they are)."""
    data = r.content
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("latin-1")


def lean_paths() -> list[str]:
    return [
        *(f"/collections/{c}/tiles/WebMercatorQuad/{Z}/{TILE.y}/{TILE.x}" for c in IDS),
        f"/tiles/WebMercatorQuad/{Z}/{TILE.y}/{TILE.x}",
        f"/query/near?lon={C1[0]}&lat={C1[1]}&radius=3000",
        f"/query/near?lon={C2[0]}&lat={C2[1]}&radius=3000",
        f"/query/at?lon={C1[0]}&lat={C1[1]}&tolerance=2000",
        f"/query/at?lon={C2[0]}&lat={C2[1]}&tolerance=2000",
    ]


def walk(client: TestClient, headers: dict[str, str]) -> list[tuple[str, str | None, Any]]:
    """Every answer of the walk: (url, feature id asked for, response)."""
    answers = []
    for path, methods in client.app.openapi()["paths"].items():
        if "get" not in methods or path.startswith(SKIP):
            continue
        for url, asked in expand(path, methods["get"]):
            answers.append((url, asked, client.get(url, headers=headers)))
    for url in lean_paths():
        answers.append((url, None, client.get(url, headers=headers)))
    post = client.post(
        "/query/intersects",
        json={
            "type": "Polygon",
            "coordinates": [list(shapely.box(114.28, 30.48, 114.32, 30.51).exterior.coords)],
        },
        headers=headers,
    )
    answers.append(("POST /query/intersects", None, post))
    return answers


def test_walk_every_route_as_every_caller_leaks_nothing(client, store) -> None:
    seen_ok: dict[str, set[str]] = {who: set() for who in CALLERS}
    for who in CALLERS:
        headers = store["headers"][who]
        answers = walk(client, headers)
        assert len(answers) > 200
        for url, _asked, r in answers:
            assert r.status_code != 500, (who, url, r.text[:300])
            assert r.status_code < 500 or r.status_code == 503, (who, url)
            text = body_text(r)
            hidden = [m for m in MARKERS if m in url and who not in MARKERS[m]]
            if hidden:
                # What the caller asked for is echoed (a 404 naming the id, the search words):
                # it must be answered as the same request for something that does not exist.
                alt, same = url, text
                for m in hidden:
                    alt, same = alt.replace(m, _filler(m)), same.replace(m, _filler(m))
                other = client.request(*_method_url(alt), headers=headers)
                assert r.status_code == other.status_code, (who, url, r.status_code)
                assert same == body_text(other), (who, url, same[:300])
                continue
            for marker, allowed in MARKERS.items():
                if who not in allowed:
                    assert marker not in text, (who, url, marker, text[:400])
                elif marker in text:
                    seen_ok[who].add(marker)
    for who in CALLERS:
        expected = {m for m, allowed in MARKERS.items() if who in allowed}
        assert seen_ok[who] == expected, (who, expected - seen_ok[who])


WALKED_APART = {
    ("POST", "/collections/{collectionId}/items"),
    ("PUT", "/collections/{collectionId}/items/{featureId}"),
    ("PATCH", "/collections/{collectionId}/items/{featureId}"),
    ("DELETE", "/collections/{collectionId}/items/{featureId}"),
    ("POST", "/twin/observations"),
    ("POST", "/query/intersects"),
    ("GET", "/events"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("DELETE", "/admin/keys/{name}"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/policy"),
    ("POST", "/admin/policy/reload"),
}
"""The routes the walk does not fill in by itself, each checked by a test of its own here."""


def test_every_route_the_walk_leaves_has_its_own_test(client) -> None:
    left = {
        (method.upper(), path)
        for path, methods in client.app.openapi()["paths"].items()
        for method in methods
        if method.upper() != "GET" or path.startswith(SKIP)
    }
    assert left == WALKED_APART, left ^ WALKED_APART


def test_counts_are_those_of_the_features_each_caller_sees(client, store) -> None:
    for who in CALLERS:
        headers = store["headers"][who]
        for collection, counts in COUNTS.items():
            r = client.get(f"/collections/{collection}/items?limit=1000", headers=headers)
            if counts[who] is None:
                assert r.status_code == 404
                continue
            body = r.json()
            assert body["numberMatched"] == counts[who] == len(body["features"]), (who, collection)
        # Statistics per grid cell count the same features.
        stats = client.get("/query/stats?level=cell", headers=headers).json()
        text = json.dumps(stats)
        assert "GASX" not in text or who == "admin"
        totals = _stat_totals(stats)
        for collection, counts in COUNTS.items():
            if collection == "grids" or counts[who] is None:
                assert f"{collection}_count" not in totals
                continue
            assert totals[f"{collection}_count"] == counts[who], (who, collection, totals)


def _stat_totals(stats: dict[str, Any]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for f in stats["features"]:
        for k, v in f["properties"].items():
            if k.endswith("_count") and isinstance(v, int | float):
                totals[k] = totals.get(k, 0) + v
    return totals


def test_tiles_hold_only_what_each_caller_sees(client, store) -> None:
    url = f"/tiles/WebMercatorQuad/{Z}/{TILE.y}/{TILE.x}"
    for who in CALLERS:
        r = client.get(url, headers={**store["headers"][who], "Accept-Encoding": "identity"})
        tile = mapbox_vector_tile.decode(r.content)
        ids = {
            f["properties"].get("id", f.get("id"))
            for layer in tile.values()
            for f in layer["features"]
        }
        fields = {k for layer in tile.values() for f in layer["features"] for k in f["properties"]}
        for collection, counts in COUNTS.items():
            n = len(tile.get(collection, {}).get("features", []))
            assert n == (counts[who] or 0), (who, collection, n)
        assert ("pressure_zone" in fields) == (who != "anonymous"), who
        assert ("contractor" in fields) == (who == "admin"), who
        assert ("owner_note" in fields) == (who in ("engineer", "admin")), who
        assert ids


def test_isolation_closes_a_hidden_valve_but_reports_it_only_to_who_may_see(client, store) -> None:
    for who in CALLERS:
        r = client.get(
            "/collections/pipes/items/pipe-GASX1/isolation", headers=store["headers"][who]
        )
        if who != "admin":
            assert r.status_code == 404
        else:
            closes = [f["id"] for f in r.json()["valves_to_close"]["features"]]
            assert closes == ["valve-GASX1"]


def test_events_carry_only_what_each_caller_sees(store, tmp_path) -> None:
    root = district(tmp_path / "store")
    ring = KeyRing.beside(root)
    headers = {"anonymous": {}}
    for name, role, kw in (
        ("viewer", "viewer", {}),
        ("engineer", "engineer", {"department": "water", "cells": ["C-1"]}),
        ("admin", "admin", {}),
    ):
        headers[name] = {"Authorization": f"Bearer {ring.add(name, role, **kw)[1]}"}
    with TestClient(app_for(root, policy=store["policy"], follow_interval_s=0.05)) as c:
        start = c.get("/healthz").json()
        readings = [
            {
                "collection": "pipes",
                "id": "pipe-GASX1",
                "time": "2026-01-01T00:00:00Z",
                "property": "status",
                "value": "abandoned",
            },
            {
                "collection": "pipes",
                "id": "pipe-W2X",
                "time": "2026-01-01T00:00:00Z",
                "property": "pressure_zone",
                "value": "PZINTX-9",
            },
            {
                "collection": "lights",
                "id": "light-AREAX2",
                "time": "2026-01-01T00:00:00Z",
                "property": "status",
                "value": "fault",
            },
            {
                "collection": "lights",
                "id": "light-1",
                "time": "2026-01-01T00:00:01Z",
                "property": "status",
                "value": "fault",
            },
        ]
        r = c.post("/twin/observations", json=readings, headers=headers["admin"])
        assert r.status_code == 200 and r.json()["accepted"] == 4, r.text
        del start
        # Removals: one in the depot (C-2, restricted there), then one in C-1, last.
        for fid in ("light-AREAX2", "light-3"):
            assert (
                c.delete(f"/collections/lights/items/{fid}", headers=headers["admin"]).status_code
                == 204
            )
        got: dict[str, list[dict]] = {}
        for who in CALLERS:
            events = []
            with c.stream("GET", "/events?since=0", headers=headers[who]) as s:
                for line in s.iter_lines():
                    if line.startswith("data:"):
                        ev = json.loads(line[5:])
                        events.append(ev)
                        if ev["id"] == "light-3" and ev["kind"] == "removed":
                            break
            got[who] = events

    def ids(who: str) -> set[str]:
        return {e["id"] for e in got[who] if e["id"]}

    assert "pipe-GASX1" in ids("admin") and "light-AREAX2" in ids("admin")
    for who in ("anonymous", "viewer", "engineer"):
        assert "pipe-GASX1" not in ids(who) and "light-AREAX2" not in ids(who), who
        assert "light-1" in ids(who)
    for who in CALLERS:  # a removal of what each could see reaches each
        assert any(e["id"] == "light-3" and e["kind"] == "removed" for e in got[who]), who
    assert [e["kind"] for e in got["admin"] if e["id"] == "light-AREAX2"][-1] == "removed"
    # A reading of an internal field is no event for the anonymous caller.
    assert "pipe-W2X" not in ids("anonymous")
    assert "pipe-W2X" in ids("viewer") and "pipe-W2X" not in ids("engineer")
    for who in CALLERS:
        text = json.dumps(got[who])
        for marker, allowed in MARKERS.items():
            if who not in allowed:
                assert marker not in text, (who, marker)


def test_a_restricted_id_answers_as_a_missing_one_in_body_status_and_time(client, store) -> None:
    headers = store["headers"]["viewer"]
    hidden, missing = "pipe-GASX1", "pipe-GASX9"  # same length, same shape
    for _ in range(20):  # warm both
        client.get(f"/collections/pipes/items/{hidden}", headers=headers)
        client.get(f"/collections/pipes/items/{missing}", headers=headers)
    a = client.get(f"/collections/pipes/items/{hidden}", headers=headers)
    b = client.get(f"/collections/pipes/items/{missing}", headers=headers)
    assert a.status_code == b.status_code == 404
    assert a.text.replace(hidden, missing) == b.text
    assert a.headers.get("content-length") == b.headers.get("content-length")
    times: dict[str, list[float]] = {hidden: [], missing: []}
    for i in range(400):  # 200 each, interleaved
        fid = hidden if i % 2 else missing
        t0 = time.perf_counter()
        client.get(f"/collections/pipes/items/{fid}", headers=headers)
        times[fid].append(time.perf_counter() - t0)
    a_med, b_med = statistics.median(times[hidden]), statistics.median(times[missing])
    spread = statistics.median(abs(x - b_med) for x in times[missing])  # the noise itself
    # Alike within noise: the medians differ by less than the typical deviation plus 20 %.
    assert abs(a_med - b_med) <= spread + 0.2 * b_med, (a_med, b_med, spread)


def test_writes_need_an_engineer_in_its_area(client, store) -> None:
    h = store["headers"]
    reading = [
        {
            "collection": "lights",
            "id": "light-1",
            "time": "2026-02-01T00:00:00Z",
            "property": "status",
            "value": "on",
        }
    ]
    assert client.post("/twin/observations", json=reading).status_code == 403
    assert client.post("/twin/observations", json=reading, headers=h["viewer"]).status_code == 403
    ok = client.post("/twin/observations", json=reading, headers=h["engineer"])
    assert ok.status_code == 200 and ok.json()["accepted"] == 1
    outside = [
        {
            **reading[0],
            "id": "pipe-W2X",
            "collection": "pipes",
            "property": "status",
            "value": "planned",
        }
    ]
    r = client.post("/twin/observations", json=outside, headers=h["engineer"])
    assert r.status_code == 200 and r.json()["accepted"] == 0 and r.json()["rejected"], r.text
    # An edit of a feature outside its cell is a 404, as if it did not exist.
    r = client.patch(
        "/collections/pipes/items/pipe-W2X",
        json={"properties": {"status": "planned"}},
        headers=h["engineer"],
    )
    assert r.status_code == 404
    # Creating a feature outside its cell is refused.
    feature = {
        "type": "Feature",
        "id": "light-new",
        "geometry": {"type": "Point", "coordinates": list(C2)},
        "properties": {"status": "on"},
    }
    r = client.post("/collections/lights/items", json=feature, headers=h["engineer"])
    assert r.status_code == 403, r.text
    # A field the engineer may not see cannot be written, and is kept on a replace.
    r = client.patch(
        "/collections/pipes/items/pipe-w1",
        json={"properties": {"pressure_zone": "X"}},
        headers=h["anonymous"],
    )
    assert r.status_code == 403
    r = client.patch(
        "/collections/sites/items/site-1",
        json={"properties": {"contractor": "Other"}},
        headers=h["engineer"],
    )
    assert r.status_code == 400 and "contractor" in r.json()["description"]
    r = client.put(
        "/collections/sites/items/site-1",
        json={
            "type": "Feature",
            "geometry": json.loads(
                shapely.to_geojson(shapely.box(114.291, 30.491, 114.293, 30.493))
            ),
            "properties": {"permit_id": "P-1b"},
        },
        headers=h["engineer"],
    )
    assert r.status_code == 200, r.text
    assert "contractor" not in r.json()["properties"]
    full = client.get("/collections/sites/items/site-1", headers=h["admin"]).json()
    assert (
        full["properties"]["contractor"] == "ACMEX Works"
        and full["properties"]["permit_id"] == "P-1b"
    )


def test_bad_and_revoked_keys_are_401_never_a_downgrade(client, store) -> None:
    ring: KeyRing = store["ring"]
    _, secret = ring.add("short-lived", "viewer")
    h = {"Authorization": f"Bearer {secret}"}
    assert client.get("/collections/pipes/items", headers=h).status_code == 200
    assert ring.revoke("short-lived")
    r = client.get("/collections/pipes/items", headers=h)
    assert r.status_code == 401 and r.json()["code"] == "InvalidKey"
    assert r.headers["www-authenticate"].startswith("Bearer")
    for bad in ("Bearer nope", "Basic dXNlcjpwYXNz", "Bearer", "twin_abc"):
        r = client.get(
            f"/collections/lights/tiles/WebMercatorQuad/{Z}/{TILE.y}/{TILE.x}",
            headers={"Authorization": bad},
        )
        assert r.status_code == 401, bad
    _, old = ring.add("expired", "admin", expires="2020-01-01")
    assert client.get("/collections", headers={"Authorization": f"Bearer {old}"}).status_code == 401


def test_admin_routes_and_the_audit_log(client, store) -> None:
    h = store["headers"]
    for who in ("anonymous", "viewer", "engineer"):
        for path in ("/admin/keys", "/admin/audit", "/admin/policy"):
            r = client.get(path, headers=h[who])
            assert r.status_code == 403, (who, path)
            assert "GASX" not in r.text
    keys = client.get("/admin/keys", headers=h["admin"]).json()["keys"]
    names = {k["name"] for k in keys}
    assert {"viewer", "engineer", "admin"} <= names
    assert not any("hash" in k or "key" in k for k in keys)
    made = client.post(
        "/admin/keys", json={"name": "made-over-http", "role": "viewer"}, headers=h["admin"]
    )
    assert made.status_code == 201
    secret = made.json()["key"]
    assert (
        client.get("/collections", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    )
    assert client.delete("/admin/keys/made-over-http", headers=h["admin"]).status_code == 204
    assert (
        client.get("/collections", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    )
    # The engineer read a restricted layer and the admin changed keys: both are in the log.
    client.get("/collections/substations/items", headers=h["engineer"])
    entries = client.get("/admin/audit?caller=engineer&action=read", headers=h["admin"]).json()[
        "entries"
    ]
    assert any("substations" in e["collections"] for e in entries)
    writes = client.get("/admin/audit?caller=admin&action=write", headers=h["admin"]).json()[
        "entries"
    ]
    assert any(e["path"] == "/admin/keys" and e["method"] == "POST" for e in writes)
    # A viewer's reads of public and internal data are not restricted reads.
    client.get("/collections/lights/items", headers=h["viewer"])
    assert not client.get("/admin/audit?caller=viewer&action=read", headers=h["admin"]).json()[
        "entries"
    ]
    # Secrets are never in the log.
    assert secret not in json.dumps(
        client.get("/admin/audit?limit=10000", headers=h["admin"]).json()
    )


def test_a_bad_policy_is_refused_with_its_line_and_the_old_one_stays(store, tmp_path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    h = store["headers"]
    with TestClient(app_for(store["root"], policy=policy, policy_check_s=0)) as c:
        assert (
            c.get("/collections/pipes/items", headers=h["anonymous"]).json()["numberMatched"] == 2
        )
        policy.write_text(POLICY + '\n[layers.lights]\nclassification = "secret"\n')
        r = c.post("/admin/policy/reload", headers=h["admin"])
        assert r.status_code == 400
        line = len(POLICY.splitlines()) + 3
        assert f"line {line}" in r.json()["description"], r.json()
        # The old policy stays in force.
        assert (
            c.get("/collections/pipes/items", headers=h["anonymous"]).json()["numberMatched"] == 2
        )
        assert c.get("/collections/lights/items", headers=h["anonymous"]).status_code == 200
        # A good change is taken without a restart (looked at on the next request).
        policy.write_text(POLICY + '\n[layers.lights]\nclassification = "internal"\n')
        time.sleep(0.01)
        assert c.get("/collections/lights/items", headers=h["anonymous"]).status_code == 404
        assert c.get("/collections/lights/items", headers=h["viewer"]).status_code == 200
    runner = CliRunner()
    bad = tmp_path / "bad.toml"
    bad.write_text('[layers.pipes]\nclassification = "public"\nfields = 3\n')
    r = runner.invoke(cli, ["policy", "check", str(bad)])
    assert r.exit_code == 1 and "line 3" in r.output, r.output
    r = runner.invoke(cli, ["policy", "check", str(store["policy"])])
    assert r.exit_code == 0 and "layer pipes" in r.output


def test_keys_cli_prints_the_key_once_and_revokes_it(store, tmp_path) -> None:
    root = district(tmp_path / "store")
    runner = CliRunner()
    r = runner.invoke(
        cli,
        [
            "keys",
            "add",
            "crew-7",
            "--role",
            "engineer",
            "--department",
            "water",
            "--cells",
            "C-1",
            "--expires",
            "2099-12-31",
            "--store",
            str(root),
        ],
    )
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip().splitlines()[-1]
    assert secret.startswith("twin_") and len(secret) > 40
    listed = runner.invoke(cli, ["keys", "list", "--json", "--store", str(root)])
    keys = json.loads(listed.stdout)
    assert (
        keys[0]["name"] == "crew-7"
        and keys[0]["cells"] == ["C-1"]
        and keys[0]["role"] == "engineer"
    )
    assert secret not in listed.stdout
    assert secret not in (root / "access.sqlite").read_bytes().decode("latin-1")
    with TestClient(app_for(root)) as c:
        h = {"Authorization": f"Bearer {secret}"}
        assert c.get("/collections/pipes/items", headers=h).json()["numberMatched"] == 2  # C-1 only
        assert runner.invoke(cli, ["keys", "revoke", "crew-7", "--store", str(root)]).exit_code == 0
        assert c.get("/collections/pipes/items", headers=h).status_code == 401
    assert (
        runner.invoke(cli, ["keys", "add", "x", "--role", "king", "--store", str(root)]).exit_code
        != 0
    )
    assert runner.invoke(cli, ["keys", "revoke", "nobody", "--store", str(root)]).exit_code != 0


def test_tiles_of_one_view_are_never_served_to_another(client, store) -> None:
    url = f"/collections/pipes/tiles/WebMercatorQuad/{Z}/{TILE.y}/{TILE.x}"
    h = store["headers"]
    admin = client.get(url, headers=h["admin"])  # cached for the admin's view first
    anon = client.get(url)
    assert (
        b"GASX" in gzip.decompress(admin.content)
        if admin.content[:2] == b"\x1f\x8b"
        else b"GASX" in admin.content
    )
    assert b"GASX" not in body_text(anon).encode("latin-1")
    assert admin.headers["etag"] != anon.headers["etag"]


def test_exports_hold_what_the_role_may_see(store, tmp_path) -> None:
    from pmtiles.reader import MmapSource, all_tiles

    runner = CliRunner()
    root, policy = str(store["root"]), str(store["policy"])
    out = tmp_path / "pipes.geojson"
    r = runner.invoke(
        cli, ["export", "pipes", str(out), "--store", root, "--role", "viewer", "--policy", policy]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    text = out.read_text()
    assert len(doc["features"]) == COUNTS["pipes"]["viewer"]
    assert "GASX" not in text and "OWNX" not in text and "PZINTX" in text
    everything = tmp_path / "all.geojson"
    r = runner.invoke(
        cli, ["export", "pipes", str(everything), "--store", root, "--policy", policy]
    )
    assert r.exit_code == 0 and len(json.loads(everything.read_text())["features"]) == 4
    # A PMTiles archive is anonymous by default: a public archive for static hosting.
    archive = tmp_path / "public.pmtiles"
    r = runner.invoke(
        cli,
        [
            "tiles",
            "export",
            str(archive),
            "--store",
            root,
            "--policy",
            policy,
            "--minzoom",
            "10",
            "--maxzoom",
            "14",
        ],
    )
    assert r.exit_code == 0, r.output
    with open(archive, "rb") as f:
        tiles = [gzip.decompress(data) for _, data in all_tiles(MmapSource(f))]
    assert tiles
    blob = b"".join(tiles)
    for marker, allowed in MARKERS.items():
        if "anonymous" not in allowed:
            assert marker.encode() not in blob, marker
    assert b"W2X" in blob and b"light-1" in blob
    assert b"substations" not in blob and b"AREAX" not in blob
