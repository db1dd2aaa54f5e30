"""The caller is resolved once per request, before anything answers it, and every path reads
that one result: the declared routes (enumerated, not listed by hand), the lean tile and
query paths; a path that did not get it is refused."""

from __future__ import annotations

import re
from typing import Any

import morecantile
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

import twin.access
from twin.access import Caller, caller

from .serve_fixtures import (
    app_for,
    served_store_fixture,  # noqa: F401  (fixture)
)

SECRET = "secret_valves"
SECRET_IDS = ("k1", "k2")
TILE = morecantile.tms.get("WebMercatorQuad").tile(114.3, 30.5, 14)  # over k2
VALUES = {
    "collectionId": SECRET,
    "featureId": "k2",
    "tileMatrixSetId": "WebMercatorQuad",
    "tileMatrix": "14",
    "z": "14",
    "tileRow": str(TILE.y),
    "y": str(TILE.y),
    "tileCol": str(TILE.x),
    "x": str(TILE.x),
    "styleId": "default",
}


def concrete(path: str) -> str | None:
    """A route's path with its parameters filled for the secret layer (None: a parameter
    this test has no value for)."""
    names = re.findall(r"{(\w+)(?::\w+)?}", path)
    if any(n not in VALUES for n in names):
        return None
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: VALUES[m.group(1)], path)


def routes_about_a_collection(app: Any) -> list[str]:
    """Every GET path of the app's OpenAPI document that names a collection, filled in."""
    out = []
    for path, methods in app.openapi()["paths"].items():
        if "get" in methods and "{collectionId" in path:
            filled = concrete(path)
            assert filled is not None, f"no value for a parameter of {path}"
            out.append(filled)
    return out


def test_every_route_and_lean_path_answers_for_the_caller_resolved(served_store) -> None:
    with TestClient(app_for(served_store, anonymous_access="public")) as c:
        paths = routes_about_a_collection(c.app)
        assert len(paths) >= 8  # items, item, queryables, tiles, tilesets, history, ...
        lean = [
            f"/collections/{SECRET}/tiles/WebMercatorQuad/14/{TILE.y}/{TILE.x}",
            f"/tiles/WebMercatorQuad/14/{TILE.y}/{TILE.x}",
            "/query/near?lon=114.3&lat=30.5&radius=100",
            "/query/at?lon=114.3&lat=30.5&tolerance=50",
        ]
        for path in paths + lean:
            r = c.get(path)
            assert r.status_code in (200, 204, 400, 404), (path, r.status_code)
            text = r.content.decode("latin-1")
            assert SECRET not in text or r.status_code == 404, path
            for fid in SECRET_IDS:
                assert f'"{fid}"' not in text and f"{fid}\x12" not in text, (path, fid)
    with TestClient(app_for(served_store, anonymous_access="restricted")) as c:
        seen = [c.get(p).status_code for p in routes_about_a_collection(c.app)]
        assert seen.count(200) >= 6  # the same routes answer for a caller who may see it
        near = c.get("/query/near?lon=114.3&lat=30.5&radius=100").json()
        assert [f["id"] for f in near["features"] if f["collection"] == SECRET] == ["k2"]


def test_the_caller_is_resolved_once_per_request(served_store, monkeypatch) -> None:
    calls: list[str] = []
    real = twin.access.resolve

    def counting(scope: Any) -> Caller:
        calls.append(scope["path"])
        return real(scope)

    monkeypatch.setattr(twin.access, "resolve", counting)
    with TestClient(app_for(served_store)) as c:
        for path in (
            "/collections/lights/items?limit=1",  # a route
            f"/collections/lights/tiles/WebMercatorQuad/14/{TILE.y}/{TILE.x}",  # lean tile
            "/query/near?lon=114.3&lat=30.5&radius=100",  # lean query
            "/query/near?lon=114.3&lat=30.5&radius=100&unknown=1",  # lean, then the route
            "/web/",
        ):
            calls.clear()
            c.get(path)
            assert calls == [path.split("?")[0]], path


def test_a_request_without_a_resolved_caller_is_refused() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/x", "headers": []})
    with pytest.raises(RuntimeError, match="no caller resolved"):
        caller(request)
