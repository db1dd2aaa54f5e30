"""The lean path of `/query/near` and `/query/at`: it answers plain requests with the very bytes
the declared routes give, and leaves everything else (errors included) to the full app."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from fastapi.testclient import TestClient

from layers.gpkg import GeoPackageStore
from layers.schemas import GRIDS, LIGHTS, PIPES
from layers.store import RasterInfo
from tests.twin.query_fixtures import make_layer, query_app, secret_layer
from twin.access import CallerMiddleware
from twin.routes import queries as routes

LON, LAT = -71.1056, 42.3736


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fastpath")
    rng = np.random.default_rng(8)
    n = 300
    x = LON + rng.uniform(-0.004, 0.004, n)
    y = LAT + rng.uniform(-0.003, 0.003, n)
    pipes = shapely.linestrings(
        np.stack([np.stack([x, y], 1), np.stack([x + 0.0008, y + 0.0005], 1)], 1)
    )
    depth = [None if i % 5 == 0 else round(0.8 + i % 7 * 0.3, 2) for i in range(n)]
    store = GeoPackageStore(root / "store")
    try:
        store.write(
            make_layer(
                PIPES,
                pipes,
                network=["water"] * n,
                material=[["PE", "DI", 'say "hi"', None][i % 4] for i in range(n)],
                diameter_mm=[100.0 + 50 * (i % 3) for i in range(n)],
                depth_m=depth,
            ),
            source="test",
            user="tests",
        )
        store.write(
            make_layer(
                LIGHTS,
                shapely.points(x + 0.0001, y),
                status=[["on", "fault", None][i % 3] for i in range(n)],
                wattage_w=[50.0 * (i % 4) for i in range(n)],
            ),
            source="test",
            user="tests",
        )
        cells = [shapely.box(LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01)]
        cells += [
            shapely.box(LON - 0.003 + i * 0.003, LAT - 0.003, LON + i * 0.003, LAT)
            for i in range(2)
        ]
        store.write(
            make_layer(
                GRIDS,
                cells,
                level=["district", "cell", "cell"],
                code=["D1", "C1", "C2"],
            ),
            source="test",
            user="tests",
        )
        store.write(secret_layer(), source="secret", user="tests")
        dem = root / "dem.tif"
        z = (np.arange(100 * 120, dtype=np.float32).reshape(100, 120) % 97) / 3.0
        with rasterio.open(
            dem,
            "w",
            driver="GTiff",
            width=120,
            height=100,
            count=1,
            dtype="float32",
            crs="EPSG:4326",
            transform=Affine(0.0001, 0, LON - 0.006, 0, -0.0001, LAT + 0.005),
            nodata=-1.0,
        ) as ds:
            ds.write(z, 1)
        store.put_raster(RasterInfo("dem", "Ground", dem), user="tests", source="dem.tif")
    finally:
        store.close()
    with TestClient(query_app(root / "store")) as c:
        yield c


def _asgi(app: Any, fast: routes.QueryFastPath, method: str, path: str, query: str) -> Any:
    """Drive `fast` with one request; what it sent, and whether it passed the request on."""
    passed: list[str] = []
    sent: list[dict] = []

    async def inner(scope: dict, receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    fast.app = inner
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [],
        "app": app,
        "root_path": "",
    }
    asyncio.run(CallerMiddleware(fast)(scope, receive, send))  # as the app wraps it
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return passed, body, scope.get("route")


PLAIN = [
    ("/query/near", f"lon={LON}&lat={LAT}"),
    ("/query/near", f"lon={LON}&lat={LAT}&radius=250&limit=7"),
    ("/query/near", f"lat={LAT}&lon={LON}&radius=1.5e2&collections=lights,pipes"),
    ("/query/near", f"lon={LON}&lat={LAT}&radius=0"),
    ("/query/at", f"lon={LON}&lat={LAT}"),
    ("/query/at", f"lon={LON + 0.001}&lat={LAT - 0.001}&tolerance=40&limit=3&sampling=nearest"),
    ("/query/at", f"lon={LON - 0.05}&lat={LAT}&tolerance=5"),
]


@pytest.mark.parametrize(("path", "query"), PLAIN)
def test_plain_requests_are_answered_with_the_routes_bytes(client, path, query):
    fast = routes.QueryFastPath(None, routes.router.routes)
    passed, body, route = _asgi(client.app, fast, "GET", path, query)
    assert passed == [] and route.path == path
    # An unknown parameter sends the same request through FastAPI's routing (which ignores it).
    assert _asgi(client.app, fast, "GET", path, f"{query}&unknown=1")[0] == [path]
    full = client.get(f"{path}?{query}&unknown=1")
    assert full.status_code == 200
    assert body == full.content
    answer = json.loads(body)
    if path == "/query/near" and "radius=0" not in query:
        assert answer["numberMatched"] > 0
        d = [f["distance_m"] for f in answer["features"]]
        assert d == sorted(d)
    # Through the whole app (middlewares included) the lean path gives the same bytes.
    direct = client.get(f"{path}?{query}")
    assert direct.content == full.content
    assert direct.headers["content-type"] == full.headers["content-type"]


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/query/near", f"lon={LON}&lat=91"),
        ("GET", "/query/near", f"lon={LON}&lat={LAT}&radius=-5"),
        ("GET", "/query/near", f"lon={LON}&lat={LAT}&limit=0"),
        ("GET", "/query/near", f"lon={LON}&lat={LAT}&collections=secret_valves"),
        ("GET", "/query/near", f"lon={LON}&lat={LAT}&collections=dem"),
        ("GET", "/query/near", f"lon={LON}&lat={LAT}&collections=,"),
        ("GET", "/query/near", f"lon={LON}&lat={LAT}&lat={LAT}"),
        ("GET", "/query/near", f"lon=abc&lat={LAT}"),
        ("GET", "/query/near", f"lon=nan&lat={LAT}"),
        ("GET", "/query/near", f"lat={LAT}"),
        ("GET", "/query/near", f"lon={LON}&lat={LAT}&radius=+5"),
        ("GET", "/query/at", f"lon={LON}&lat={LAT}&sampling=cubic"),
        ("GET", "/query/at", f"lon={LON}&lat={LAT}&tolerance=1e400"),
        ("GET", "/query/at", f"lon={LON}&lat={LAT}&radius=5"),
        ("POST", "/query/at", f"lon={LON}&lat={LAT}"),
    ],
)
def test_anything_else_goes_to_the_full_app(client, method, path, query):
    fast = routes.QueryFastPath(None, routes.router.routes)
    passed, body, route = _asgi(client.app, fast, method, path, query)
    assert passed == [path] and body == b"" and route is None


@pytest.mark.parametrize(
    "query", [f"lon={LON}&lat={LAT}&radius=1e9", f"lon={LON}&lat={LAT}&limit=99999999"]
)
def test_over_a_limit_is_answered_by_the_lean_path_as_the_app_answers(client, query):
    """A request over a limit is settled by the lean path (running the route again would pay
    the same work twice), with the status and body the full app gives."""
    fast = routes.QueryFastPath(None, routes.router.routes)
    passed, body, _ = _asgi(client.app, fast, "GET", "/query/near", query)
    assert passed == []
    full = client.get(f"/query/near?{query}")
    assert full.status_code == 400
    assert json.loads(body) == full.json() and full.json()["code"] == "LimitExceeded"


def test_errors_keep_their_answers(client):
    for query, status, phrase in [
        (f"lon={LON}&lat=91", 400, "lat=91"),
        (f"lon={LON}&lat={LAT}&radius=1e9", 400, "radius"),
        (f"lon={LON}&lat={LAT}&collections=secret_valves", 404, "secret_valves"),
        (f"lon={LON}&lat={LAT}&limit=0", 400, "limit"),
    ]:
        res = client.get(f"/query/near?{query}")
        assert res.status_code == status
        assert phrase in res.json()["description"]


def test_metrics_count_the_lean_answers_under_their_route(client, monkeypatch):
    pattern = re.compile(
        r'twin_http_requests_total\{method="GET",route="/query/at",status="200"\} ([0-9.e+]+)'
    )

    def count() -> float:
        found = pattern.search(client.get("/metrics").text)
        return float(found[1]) if found else 0.0

    lean: list[str] = []
    answer = routes.QueryFastPath.answer

    async def spy(self, scope):
        got = await answer(self, scope)
        lean.append(scope["path"] if got is not None else "passed on")
        return got

    monkeypatch.setattr(routes.QueryFastPath, "answer", spy)
    before = count()
    assert client.get(f"/query/at?lon={LON}&lat={LAT}").status_code == 200
    assert lean[-1] == "/query/at"  # answered by the lean path ...
    assert count() == before + 1  # ... and counted under the route, not the raw URL
    assert f"/query/at?lon={LON}" not in client.get("/metrics").text


def test_scope_is_respected(client):
    body = client.get(f"/query/near?lon={LON}&lat={LAT}&radius=2000&limit=10000").json()
    assert "secret_valves" not in {f["collection"] for f in body["features"]}
