"""Vector tiles over HTTP: decoded tiles against the engine and geopandas, composite tiles,
filters, 204/304/404, gzip, TileJSON, style, scope and cache invalidation."""

from __future__ import annotations

import gzip
import time

import mapbox_vector_tile
import morecantile
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from layers.gpkg import GeoPackageStore
from layers.models import Bounds
from tests.twin.serve_fixtures import app_for, secret_layer, sites_layer, wuhan_pipes
from tiles.render import render_tile
from tiles.settings import TileSettings

TMS = morecantile.tms.get("WebMercatorQuad")
OSM = "© OpenStreetMap contributors, ODbL"


@pytest.fixture(scope="module")
def tile_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiles") / "store"
    store = GeoPackageStore(path)
    store.write(wuhan_pipes(), source="test", user="tests", meta={"attribution": OSM})
    store.write(sites_layer(), source="test", user="tests")
    store.write(secret_layer(), source="test", user="tests")
    store.close()
    return path


@pytest.fixture(scope="module")
def client(tile_store):
    with TestClient(app_for(tile_store)) as c:
        yield c


def decode(content: bytes) -> dict:
    return mapbox_vector_tile.decode(content, default_options={"y_coord_down": True})


def tile_url(z: int, x: int, y: int, collection: str | None = None) -> str:
    if collection:
        return f"/collections/{collection}/tiles/WebMercatorQuad/{z}/{y}/{x}"
    return f"/tiles/WebMercatorQuad/{z}/{y}/{x}"


def busy_tile(z: int = 14) -> morecantile.Tile:
    """A tile over the first construction site, where pipes run too."""
    return TMS.tile(114.3025, 30.5025, z)


def test_collection_tile_holds_what_geopandas_says_at_the_right_place(client):
    pipes = wuhan_pipes()
    for z in (14, 15):
        t = busy_tile(z)
        r = client.get(tile_url(z, t.x, t.y, "pipes"))
        assert (
            r.status_code == 200
            and r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
        )
        got = decode(r.content)["pipes"]
        b = TMS.bounds(t)
        box = shapely.box(b.left, b.bottom, b.right, b.top)
        expected = set(pipes.ids[shapely.intersects(pipes.geometry, box)])
        assert expected, "the fixture should put pipes in this tile"
        assert {f["properties"]["id"] for f in got["features"]} == expected
        # The engine's own bytes for the same request decode identically.
        ref = decode(render_tile([(pipes, None)], t, TileSettings()))["pipes"]
        assert sorted(map(str, got["features"])) == sorted(map(str, ref["features"]))
        # Each vertex inside the tile sits within one tile pixel (1/512) of the true place.
        xb = TMS.xy_bounds(t)
        ext = got["extent"]
        for f in got["features"]:
            row = pipes.row(f["properties"]["id"])
            lon, lat = shapely.get_coordinates(pipes.geometry[row]).T
            mx, my = _mercator(lon, lat)
            px = (mx - xb.left) / (xb.right - xb.left) * ext
            py = (xb.top - my) / (xb.top - xb.bottom) * ext
            inside = (px >= 0) & (px <= ext) & (py >= 0) & (py <= ext)
            coords = np.array(_flat(f["geometry"]["coordinates"]), dtype=float)
            for qx, qy in zip(px[inside], py[inside], strict=True):
                nearest = np.hypot(coords[:, 0] - qx, coords[:, 1] - qy).min()
                assert nearest <= ext / 512, (f["properties"]["id"], nearest)


def _mercator(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    return t.transform(lon, lat)


def _flat(coords) -> list:
    if isinstance(coords[0], int | float):
        return [coords]
    out = []
    for c in coords:
        out += _flat(c)
    return out


def test_composite_tile_holds_each_requested_layer(client):
    t = busy_tile(14)
    r = client.get(tile_url(14, t.x, t.y), params={"collections": "pipes,sites"})
    layers = decode(r.content)
    assert set(layers) == {"pipes", "sites"}
    assert "s1" in {f["properties"]["id"] for f in layers["sites"]["features"]}
    # By default: every layer the caller may see, which excludes the restricted one.
    r = client.get(tile_url(14, *TMS.tile(114.3, 30.5, 14)[:2]))
    assert "secret_valves" not in decode(r.content)
    one = client.get(tile_url(14, t.x, t.y), params={"collections": "sites"})
    assert set(decode(one.content)) == {"sites"}


def test_filter_on_tiles(client):
    pipes = wuhan_pipes()
    t = TMS.tile(114.33, 30.51, 12)
    b = TMS.bounds(t)
    box = shapely.box(b.left, b.bottom, b.right, b.top)
    z = 12
    # z12 is below the detail zoom: compare against the engine given the same filtered rows.
    r = client.get(tile_url(z, t.x, t.y, "pipes"), params={"filter": "network = 'gas'"})
    got = decode(r.content)["pipes"]["features"]
    assert got and all(f["properties"]["network"] == "gas" for f in got)
    rows = np.flatnonzero((pipes.attrs["network"] == "gas").fillna(False).to_numpy(bool))
    ref = decode(render_tile([(pipes, rows)], t, TileSettings()))["pipes"]["features"]
    assert sorted(f["properties"]["id"] for f in got) == sorted(f["properties"]["id"] for f in ref)
    gas_here = set(pipes.ids[rows][shapely.intersects(pipes.geometry[rows], box)])
    assert {f["properties"]["id"] for f in got} <= gas_here
    # Composite with a filter: layers without the property drop out.
    r = client.get(tile_url(z, t.x, t.y), params={"filter": "network = 'gas'"})
    assert set(decode(r.content)) == {"pipes"}
    r = client.get(tile_url(z, t.x, t.y, "pipes"), params={"filter": "nosuch = 1"})
    assert r.status_code == 400 and "nosuch" in r.json()["description"]


def test_empty_outside_and_unchanged_tiles(client):
    far = TMS.tile(-30.0, -40.0, 14)
    r = client.get(tile_url(14, far.x, far.y, "pipes"))
    assert r.status_code == 204 and r.content == b""
    for bad in ((40, 0, 0), (2, 7, 0), (2, 0, 4), (-1, 0, 0)):
        r = client.get(tile_url(*bad, "pipes"))
        assert r.status_code == 404, bad
        assert r.json()["code"] == "TileOutOfMatrix"
    r = client.get("/collections/pipes/tiles/WorldCRS84Quad/1/0/0")
    assert r.status_code == 404
    t = busy_tile(14)
    first = client.get(tile_url(14, t.x, t.y, "pipes"))
    again = client.get(tile_url(14, t.x, t.y, "pipes"))
    assert first.headers["etag"] == again.headers["etag"]
    assert "max-age" in first.headers["cache-control"]
    r = client.get(
        tile_url(14, t.x, t.y, "pipes"), headers={"If-None-Match": first.headers["etag"]}
    )
    assert r.status_code == 304 and r.content == b""
    r = client.get(tile_url(14, t.x, t.y, "pipes"), headers={"If-None-Match": '"other"'})
    assert r.status_code == 200


def test_gzip_only_for_clients_that_accept_it(client):
    t = busy_tile(14)
    plain = client.get(tile_url(14, t.x, t.y, "pipes"), headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    zipped = client.get(
        tile_url(14, t.x, t.y, "pipes"), headers={"Accept-Encoding": "gzip"}, extensions={}
    )
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == plain.content  # httpx decoded it; the bytes are the same tile
    assert len(zipped.headers["content-length"]) and int(zipped.headers["content-length"]) < len(
        plain.content
    )
    assert gzip.compress(plain.content)  # sanity: a real MVT, not empty


def test_head_answers_like_get_without_the_body(client):
    t = busy_tile(14)
    for path in (tile_url(14, t.x, t.y, "pipes"), "/collections", "/style.json"):
        got = client.get(path, headers={"Accept-Encoding": "identity"})
        head = client.head(path, headers={"Accept-Encoding": "identity"})
        assert (head.status_code, head.content) == (200, b""), path
        assert int(head.headers["content-length"]) == len(got.content) > 0, path
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers.get("etag") == got.headers.get("etag")
    tile = client.head(tile_url(14, t.x, t.y, "pipes"))
    assert tile.headers["etag"].startswith('"')
    assert client.head(tile_url(40, 0, 0, "pipes")).status_code == 404
    assert client.head("/query/intersects").status_code == 405  # POST only


def test_tilejson_and_tilesets(client):
    tj = client.get("/collections/pipes/tiles/WebMercatorQuad/tilejson.json").json()
    assert tj["tilejson"] == "3.0.0"
    assert tj["tiles"][0].endswith("/collections/pipes/tiles/WebMercatorQuad/{z}/{y}/{x}")
    assert tj["attribution"] == OSM
    layer = tj["vector_layers"][0]
    assert layer["id"] == "pipes" and layer["fields"]["diameter_mm"] == "Number"
    b = wuhan_pipes().bounds
    assert tj["bounds"] == pytest.approx(list(b))
    ts = client.get("/tiles/WebMercatorQuad/tilejson.json").json()
    assert {v["id"] for v in ts["vector_layers"]} == {"pipes", "sites"}
    assert ts["attribution"] == OSM
    meta = client.get("/collections/pipes/tiles/WebMercatorQuad").json()
    assert meta["dataType"] == "vector" and meta["layers"][0]["id"] == "pipes"
    limits = {lim["tileMatrix"]: lim for lim in meta["tileMatrixSetLimits"]}
    t = busy_tile(14)
    assert limits["14"]["minTileCol"] <= t.x <= limits["14"]["maxTileCol"]
    assert limits["14"]["minTileRow"] <= t.y <= limits["14"]["maxTileRow"]
    tms = client.get("/tileMatrixSets/WebMercatorQuad").json()
    assert tms["id"] == "WebMercatorQuad" and len(tms["tileMatrices"]) == 25
    assert client.get("/tileMatrixSets").json()["tileMatrixSets"][0]["id"] == "WebMercatorQuad"
    listed = client.get("/collections/pipes/tiles").json()["tilesets"][0]
    item = next(lk for lk in listed["links"] if lk["rel"] == "item")
    assert item["href"].endswith("/{tileMatrix}/{tileRow}/{tileCol}")


def test_style_draws_every_visible_layer_by_kind_and_status(client):
    st = client.get("/style.json").json()
    assert st["version"] == 8
    src = st["sources"]["twin"]
    assert src["promoteId"] == "id" and src["url"].endswith("/tiles/WebMercatorQuad/tilejson.json")
    by_source = {}
    for lyr in st["layers"]:
        if lyr.get("source") == "twin":
            by_source.setdefault(lyr["source-layer"], []).append(lyr)
    assert set(by_source) == {"pipes", "sites"}
    lines = [lyr for lyr in by_source["pipes"] if lyr["type"] == "line"]
    pipe_colour = str(lines[-1]["paint"]["line-color"])
    assert "water" in pipe_colour and "gas" in pipe_colour and "feature-state" in pipe_colour


def test_restricted_layers_stay_out_of_tiles_tilejson_and_style(tile_store):
    t = TMS.tile(114.3, 30.5, 14)
    with TestClient(app_for(tile_store, anonymous_access="public")) as c:
        r = c.get(tile_url(14, t.x, t.y, "secret_valves"))
        assert r.status_code == 404
        r = c.get(tile_url(14, t.x, t.y), params={"collections": "secret_valves"})
        assert r.status_code == 404
        assert (
            c.get("/collections/secret_valves/tiles/WebMercatorQuad/tilejson.json").status_code
            == 404
        )
        assert "secret_valves" not in str(c.get("/style.json").json())
        assert "secret_valves" not in str(c.get("/tiles/WebMercatorQuad/tilejson.json").json())
    with TestClient(app_for(tile_store, anonymous_access="restricted")) as c:
        r = c.get(tile_url(14, t.x, t.y, "secret_valves"))
        assert {f["properties"]["id"] for f in decode(r.content)["secret_valves"]["features"]} == {
            "k2"
        }
        assert "secret_valves" in str(c.get("/style.json").json())


def test_a_change_invalidates_the_tiles_it_touches(tile_store):
    t = busy_tile(14)
    with TestClient(app_for(tile_store)) as c:
        before = c.get(tile_url(14, t.x, t.y, "sites"))
        catalog = c.app.state.catalog
        sites = catalog.layer("sites", c.app.state.anonymous_access)
        moved = sites.take(np.arange(len(sites)))
        moved.attrs.loc[0, "permit_id"] = "P1-amended"
        text = c.get("/metrics").text
        catalog.put(moved, Bounds(*sites.geometry[0].bounds))
        # Drawn anew at once, or (the one held served meanwhile) within the refresh time.
        deadline = time.monotonic() + TileSettings().refresh_s + 1.0
        after = c.get(tile_url(14, t.x, t.y, "sites"))
        while after.headers["etag"] == before.headers["etag"] and time.monotonic() < deadline:
            time.sleep(0.05)
            after = c.get(tile_url(14, t.x, t.y, "sites"))
        assert after.headers["etag"] != before.headers["etag"]
        feats = {f["properties"]["id"]: f for f in decode(after.content)["sites"]["features"]}
        assert feats["s1"]["properties"]["permit_id"] == "P1-amended"
        assert 'twin_tile_cache_lookups_total{result="miss"}' in text


def test_a_stale_tile_is_drawn_again_from_what_its_last_drawing_kept():
    """The background redraw (`TileServer.draw` of a stale tile): the first keeps a draft
    with the tile (counted in its bytes), the next draws from it, and both are the tile a
    fresh render of the layers then served draws."""
    from tiles.grid import tile as grid_tile
    from twin.metrics import Metrics
    from twin.tileserve import TileServer

    server = TileServer(TileSettings(_env_file=None), Metrics())
    pipes = wuhan_pipes()
    t = busy_tile(14)
    where = grid_tile(t.z, t.x, t.y)
    first = server.draw(where, lambda: [(pipes, None)], True)
    assert first.draft is None  # drawn on a request: nothing kept
    again = server.draw(where, lambda: [(pipes, None)], True, first)
    assert again.draft is not None and again.nbytes > again.size + len(again.data)
    n = len(pipes)
    rows = np.arange(0, n, 3)
    status = {"material": (rows, ["steel"] * len(rows))}
    counts = np.zeros(n, dtype=np.int64)
    counts[rows] = 1
    later = pipes.with_state(status, counts, np.full(n, 1_700_000_000_000))
    redrawn = server.draw(where, lambda: [(later, None)], True, again)
    fresh = render_tile([(later, None)], where, server.settings)
    assert redrawn.raw() == fresh and gzip.decompress(redrawn.data) == fresh
    assert redrawn.raw() != again.raw()
    feats = decode(redrawn.raw())["pipes"]["features"]
    in_tile = {f["properties"]["id"]: f["properties"] for f in feats}
    changed = {str(i) for i in later.ids[rows].tolist()} & set(in_tile)
    assert changed and all(in_tile[i]["material"] == "steel" for i in changed)
