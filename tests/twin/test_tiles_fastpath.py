"""The lean tile path answers exactly as the declared routes do (status, body, headers), and
hands over whatever it cannot settle; both encodings of a cached tile equal the rendered one."""

from __future__ import annotations

import gzip

import morecantile
import pytest
from fastapi.testclient import TestClient

from layers.gpkg import GeoPackageStore
from layers.models import Access
from tests.twin.serve_fixtures import app_for, secret_layer, sites_layer, wuhan_pipes
from tiles.render import render_tile
from tiles.settings import TileSettings
from twin.tileserve import TileFastPath

TMS = morecantile.tms.get("WebMercatorQuad")
SAME = ("etag", "cache-control", "vary", "content-type", "content-encoding", "content-length")
SAME_CORS = ("access-control-allow-origin", "access-control-allow-credentials")


@pytest.fixture(scope="module")
def tile_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast") / "store"
    store = GeoPackageStore(path)
    for layer in (wuhan_pipes(), sites_layer(), secret_layer()):
        store.write(layer, source="test", user="tests")
    store.close()
    return path


@pytest.fixture
def answered(monkeypatch):
    """Paths (and query strings) the lean path answered itself (the rest went on to the full
    app)."""
    seen: list[str] = []
    answer = TileFastPath.answer

    async def spy(self, scope):
        got = await answer(self, scope)
        if got is not None:
            query = scope["query_string"].decode()
            seen.append(scope["path"] + (f"?{query}" if query else ""))
        return got

    monkeypatch.setattr(TileFastPath, "answer", spy)
    return seen


def url(z: int, x: int, y: int, collection: str | None = None) -> str:
    if collection:
        return f"/collections/{collection}/tiles/WebMercatorQuad/{z}/{y}/{x}"
    return f"/tiles/WebMercatorQuad/{z}/{y}/{x}"


def busy(z: int) -> morecantile.Tile:
    return TMS.tile(114.3025, 30.5025, z)


def both(c: TestClient, path: str, headers: dict[str, str]):
    """The answer of the lean path and of the declared route (a query string skips the lean
    path; FastAPI ignores the unknown parameter)."""
    fast = c.get(path, headers=headers)
    full = c.get(path + "?via=route", headers=headers)
    return fast, full


def assert_same(fast, full) -> None:
    assert fast.status_code == full.status_code
    assert fast.content == full.content
    for h in (*SAME, *SAME_CORS):
        assert fast.headers.get(h) == full.headers.get(h), h


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_answers_equal_the_declared_routes(tile_store, answered, encoding):
    t14, t15 = busy(14), busy(15)
    far = TMS.tile(-30.0, -40.0, 14)
    ok = [url(14, t14.x, t14.y, "pipes"), url(15, t15.x, t15.y, "sites"), url(14, t14.x, t14.y)]
    empty = url(14, far.x, far.y, "pipes")
    with TestClient(app_for(tile_store)) as c:
        for path in [*ok, empty]:
            for extra in ({}, {"Origin": "https://city.example"}):
                headers = {"Accept-Encoding": encoding, **extra}
                fast, full = both(c, path, headers)
                assert_same(fast, full)
                if path == empty:
                    assert fast.status_code == 204 and fast.content == b""
                else:
                    assert fast.status_code == 200 and len(fast.content) > 100
                    assert (fast.headers.get("content-encoding") == "gzip") == (encoding == "gzip")
                    tag = {"If-None-Match": fast.headers["etag"], **headers}
                    fast, full = both(c, path, tag)
                    assert fast.status_code == 304 and fast.content == b""
                    assert_same(fast, full)
        assert set(answered) == {*ok, empty}


def test_what_it_cannot_settle_gets_the_usual_answer(tile_store, answered):
    t = busy(14)
    with TestClient(app_for(tile_store, anonymous_access="public")) as c:
        cases = {
            url(14, t.x, t.y, "secret_valves"): (404, "UnknownCollection"),
            url(14, t.x, t.y, "nothing"): (404, "UnknownCollection"),
            url(40, 0, 0, "pipes"): (404, "TileOutOfMatrix"),
            url(2, 7, 0, "pipes"): (404, "TileOutOfMatrix"),
            url(2, 0, 4): (404, "TileOutOfMatrix"),
            "/collections/pipes/tiles/WebMercatorQuad/-1/0/0": (404, "TileOutOfMatrix"),
            "/collections/pipes/tiles/WebMercatorQuad/14/x/0": (400, "InvalidParameter"),
        }
        for path, (status, code) in cases.items():
            r = c.get(path)
            assert r.status_code == status and r.json()["code"] == code, path
        assert answered == []
        # A filter or an explicit layer list goes through the declared route.
        r = c.get(url(14, t.x, t.y, "pipes"), params={"filter": "network IS NOT NULL"})
        assert r.status_code == 200
        r = c.get(url(14, t.x, t.y), params={"collections": "pipes"})
        assert r.status_code == 200
        assert answered == []
        # HEAD is answered as a GET without its body (by whichever path takes the GET).
        fast = c.head(url(14, t.x, t.y, "pipes"))
        routed = c.head(url(14, t.x, t.y, "pipes") + "?via=route")
        assert (
            (fast.status_code, fast.content) == (routed.status_code, routed.content) == (200, b"")
        )
        assert fast.headers["etag"] == routed.headers["etag"]
        assert answered == [url(14, t.x, t.y, "pipes")]


def test_restricted_callers_see_their_layers_through_it(tile_store, answered):
    t = TMS.tile(114.3, 30.5, 14)
    path = url(14, t.x, t.y, "secret_valves")
    with TestClient(app_for(tile_store, anonymous_access="restricted")) as c:
        fast, full = both(c, path, {})
        assert fast.status_code == 200
        assert_same(fast, full)
        composite, route = both(c, url(14, t.x, t.y), {})
        assert_same(composite, route)
    assert path in answered


def test_cached_encodings_equal_the_rendered_tile_and_are_counted(tile_store, answered):
    t = busy(14)
    path = url(14, t.x, t.y, "pipes")
    with TestClient(app_for(tile_store)) as c:
        pipes = c.app.state.catalog.layer("pipes", Access.PUBLIC)
        rendered = render_tile([(pipes, None)], t, TileSettings())
        plain = c.get(path, headers={"Accept-Encoding": "identity"})
        assert plain.content == rendered
        for _ in range(2):  # made once, then served as kept
            zipped = c.get(path, headers={"Accept-Encoding": "gzip"})
            assert zipped.headers["content-encoding"] == "gzip"
            assert zipped.content == rendered  # as httpx decompressed it
        key = next(iter(c.app.state.tiles.cache._tiles))
        cached = c.app.state.tiles.cache.get(key)
        assert cached.raw() == rendered and gzip.decompress(cached.data) == rendered
        metrics = c.get("/metrics").text
    route = '"/collections/{collectionId}/tiles/{tileMatrixSetId}/{z}/{y}/{x}"'
    lines = [ln for ln in metrics.splitlines() if ln.startswith("twin_http_requests_total")]
    assert any(f"route={route}" in ln and 'status="200"' in ln for ln in lines)
    assert 'twin_tile_cache_lookups_total{result="miss"} 1.0' in metrics
    assert 'twin_tile_cache_lookups_total{result="hit"} 2.0' in metrics
    assert answered == [path] * 3
