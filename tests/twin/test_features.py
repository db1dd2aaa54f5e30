"""OGC API Features over HTTP: landing, collections, items, paging, bbox, CRS, time, scope."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import shapely
from fastapi.testclient import TestClient

from tests.twin.serve_fixtures import (
    app_for,
    served_store_fixture,  # noqa: F401  (fixture)
    streetlights_frame,
    wuhan_pipes,
)
from twin.app import MAPLIBRE_DIST
from twin.crs import CRS84, EPSG_URI


@pytest.fixture(scope="module")
def client(served_store):
    with TestClient(app_for(served_store, items_max_limit=2000)) as c:
        yield c


@pytest.fixture(scope="module")
def lights_df():
    return streetlights_frame()


def all_items(client, path: str, **params) -> tuple[list[dict], list[dict]]:
    """Every feature by following `next` links; also every page's body."""
    pages, feats = [], []
    r = client.get(path, params=params)
    while True:
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body)
        feats += body["features"]
        nxt = [lk["href"] for lk in body["links"] if lk["rel"] == "next"]
        if not nxt:
            return feats, pages
        r = client.get(nxt[0])


def test_landing_page_links_what_gdal_and_qgis_need(client):
    body = client.get("/").json()
    rels = {lk["rel"]: lk["href"] for lk in body["links"]}
    for rel in ("self", "service-desc", "service-doc", "conformance", "data"):
        assert rel in rels
    assert rels["data"].endswith("/collections")
    api = client.get("/api").json()
    assert api["openapi"].startswith("3.")
    assert "/collections/{collectionId}/items" in api["paths"]
    params = {
        p["name"] for p in api["paths"]["/collections/{collectionId}/items"]["get"]["parameters"]
    }
    assert {"bbox", "bbox-crs", "limit", "offset", "crs", "filter", "filter-lang"} <= params
    conf = client.get("/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in conf
    assert "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs" in conf
    html = client.get("/?f=html")
    assert html.headers["content-type"].startswith("text/html")
    assert 'href="http://testserver/collections"' in html.text
    assert 'href="http://testserver/api"' in html.text


@pytest.mark.parametrize("installed", [True, False])
def test_browser_at_root_lands_on_the_map_when_it_is_installed(served_store, tmp_path, installed):
    web = tmp_path / "web"
    (web / MAPLIBRE_DIST).mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>map</title>")
    if installed:
        (web / MAPLIBRE_DIST / "maplibre-gl.js").write_text("// maplibre")
    with TestClient(app_for(served_store, web_dir=web)) as c:
        r = c.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
        if installed:
            assert (r.status_code, r.headers["location"]) == (307, "web/")
            assert c.get("/web/").text == "<!doctype html><title>map</title>"
        else:
            # Without the map a browser still gets the links, as HTML.
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/html")
            assert 'href="http://testserver/collections"' in r.text
        # Clients asking for JSON (GDAL, QGIS) never get the map.
        assert c.get("/").json()["title"] == "twin"


def test_collections_carry_extent_crs_and_links(client, lights_df):
    body = client.get("/collections").json()
    ids = [c["id"] for c in body["collections"]]
    assert {"lights", "pipes", "sites"} <= set(ids)
    lights = client.get("/collections/lights").json()
    minx, miny, maxx, maxy = lights_df.total_bounds
    assert lights["extent"]["spatial"]["bbox"][0] == pytest.approx([minx, miny, maxx, maxy])
    assert lights["storageCrs"] == CRS84
    assert CRS84 in lights["crs"] and EPSG_URI.format(4547) in lights["crs"]
    assert EPSG_URI.format(4326) in lights["crs"] and EPSG_URI.format(3857) in lights["crs"]
    rels = {lk["rel"] for lk in lights["links"]}
    assert {"self", "items", "http://www.opengis.net/def/rel/ogc/1.0/queryables"} <= rels
    assert "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector" in rels
    assert lights["numberOfFeatures"] == len(lights_df)


def test_queryables_is_a_json_schema_of_the_fields(client):
    r = client.get("/collections/pipes/queryables")
    assert r.headers["content-type"].startswith("application/schema+json")
    q = r.json()
    assert q["type"] == "object"
    assert q["properties"]["diameter_mm"]["type"] == "number"
    assert q["properties"]["install_year"]["type"] == "integer"
    assert "water" in q["properties"]["network"]["enum"]
    assert q["properties"]["geometry"]["x-ogc-role"] == "primary-geometry"


def test_paging_by_next_links_returns_every_feature_once(client, lights_df):
    feats, pages = all_items(client, "/collections/lights/items", limit=1000)
    ids = [f["id"] for f in feats]
    assert len(ids) == len(set(ids)) == len(lights_df)
    assert set(ids) == set(lights_df["PoleID"])
    assert all(p["numberMatched"] == len(lights_df) for p in pages)
    assert [p["numberReturned"] for p in pages] == [1000] * 6 + [len(lights_df) - 6000]
    # Coordinates are the file's, lon/lat.
    ref = lights_df.set_index("PoleID").geometry
    for f in feats[::97]:
        x, y = f["geometry"]["coordinates"]
        assert (x, y) == pytest.approx((ref[f["id"]].x, ref[f["id"]].y), abs=1e-12)


def test_limit_is_clamped_not_refused(client):
    body = client.get("/collections/lights/items", params={"limit": 10**9}).json()
    assert body["numberReturned"] == 2000
    body = client.get("/collections/lights/items").json()
    assert body["numberReturned"] == 100


def test_bbox_matches_geopandas(client, lights_df):
    box = (-71.12, 42.37, -71.10, 42.38)
    body = client.get(
        "/collections/lights/items", params={"bbox": ",".join(map(str, box)), "limit": 2000}
    ).json()
    expected = set(lights_df[lights_df.intersects(shapely.box(*box))]["PoleID"])
    assert body["numberMatched"] == len(expected) > 50
    assert {f["id"] for f in body["features"]} == expected


def test_bbox_crs_epsg4326_is_latitude_first_and_3857_works(client, lights_df):
    box = (-71.12, 42.37, -71.10, 42.38)
    expected = set(lights_df[lights_df.intersects(shapely.box(*box))]["PoleID"])
    latlon = f"{box[1]},{box[0]},{box[3]},{box[2]}"
    body = client.get(
        "/collections/lights/items",
        params={"bbox": latlon, "bbox-crs": EPSG_URI.format(4326), "limit": 2000},
    ).json()
    assert {f["id"] for f in body["features"]} == expected
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x0, y0 = t.transform(box[0], box[1])
    x1, y1 = t.transform(box[2], box[3])
    body = client.get(
        "/collections/lights/items",
        params={"bbox": f"{x0},{y0},{x1},{y1}", "bbox-crs": "EPSG:3857", "limit": 2000},
    ).json()
    # A Mercator box is a lon/lat box (the projection is separable), so the sets are equal.
    assert {f["id"] for f in body["features"]} == expected


def test_crs_4326_answers_latitude_first_crs84_longitude_first(client, lights_df):
    fid = lights_df["PoleID"].iloc[10]
    p = lights_df.geometry.iloc[10]
    r = client.get(f"/collections/lights/items/{fid}", params={"crs": EPSG_URI.format(4326)})
    assert r.headers["content-crs"] == f"<{EPSG_URI.format(4326)}>"
    assert r.json()["geometry"]["coordinates"] == pytest.approx([p.y, p.x], abs=1e-12)
    r = client.get(f"/collections/lights/items/{fid}")
    assert r.headers["content-crs"] == f"<{CRS84}>"
    assert r.json()["geometry"]["coordinates"] == pytest.approx([p.x, p.y], abs=1e-12)


@pytest.mark.parametrize("code", [4547, 3857, 4490])
def test_crs_answers_match_pyproj_to_a_centimetre(client, code):
    ref = wuhan_pipes()
    body = client.get(
        "/collections/pipes/items", params={"crs": f"EPSG:{code}", "limit": 1000}
    ).json()
    assert body["numberReturned"] == len(ref)
    # Independent reference: pyproj in the CRS's own axis order (northing first for the GK zone).
    t = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{code}", always_xy=False)
    rows = {fid: i for i, fid in enumerate(ref.ids)}
    tol = 0.01 if code != 4490 else 1e-9
    for f in body["features"]:
        lonlat = shapely.get_coordinates(ref.geometry[rows[f["id"]]])
        a, b = t.transform(lonlat[:, 1], lonlat[:, 0])
        got = np.array(f["geometry"]["coordinates"])
        assert np.abs(got - np.c_[a, b]).max() < tol
    if code == 4547:  # northing (≈3.37e6 m) first, easting (≈0.5e6 m with false easting) second
        first = np.array(body["features"][0]["geometry"]["coordinates"])[0]
        assert 3.3e6 < first[0] < 3.5e6 and 4e5 < first[1] < 6e5


def test_crs_and_bbox_crs_in_the_same_gauss_kruger_zone(client):
    ref = wuhan_pipes()
    box = shapely.box(114.30, 30.48, 114.36, 30.53)
    expected = {fid for fid, g in zip(ref.ids, ref.geometry, strict=True) if g.intersects(box)}
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:4547", always_xy=False)
    n0, e0 = t.transform(30.48, 114.30)
    n1, e1 = t.transform(30.53, 114.36)
    # The lon/lat box is not a box in the zone: ask for the zone box enclosing it, then check
    # that the answer is what that zone box (taken back to lon/lat exactly) selects.
    zone_box = (min(n0, n1) - 300, min(e0, e1) - 300, max(n0, n1) + 300, max(e0, e1) + 300)
    body = client.get(
        "/collections/pipes/items",
        params={"bbox": ",".join(map(str, zone_box)), "bbox-crs": "EPSG:4547", "limit": 1000},
    ).json()
    got = {f["id"] for f in body["features"]}
    assert expected <= got
    back = pyproj.Transformer.from_crs("EPSG:4547", "EPSG:4326", always_xy=False)
    lat, lon = back.transform(*np.array(shapely.box(*zone_box).exterior.coords).T)
    ring = shapely.Polygon(np.c_[lon, lat])
    strict = {fid for fid, g in zip(ref.ids, ref.geometry, strict=True) if g.intersects(ring)}
    assert strict <= got and len(got - strict) <= 3  # only the envelope's sliver differs


def test_property_equality_matches_pandas(client):
    ref = wuhan_pipes()
    body = client.get(
        "/collections/pipes/items", params={"network": "gas", "install_year": "1990", "limit": 1000}
    ).json()
    mask = (ref.attrs["network"] == "gas") & (ref.attrs["install_year"] == 1990)
    expected = set(ref.ids[mask.fillna(False).to_numpy(dtype=bool)])
    assert {f["id"] for f in body["features"]} == expected
    assert body["numberMatched"] == len(expected)
    body = client.get("/collections/pipes/items", params={"diameter_mm": "300", "limit": 1000})
    mask = (ref.attrs["diameter_mm"] == 300).fillna(False).to_numpy(dtype=bool)
    assert body.json()["numberMatched"] == int(mask.sum()) > 0


def test_datetime_against_site_periods_and_last_change(client):
    def ids(value: str) -> set[str]:
        r = client.get("/collections/sites/items", params={"datetime": value})
        assert r.status_code == 200, r.text
        return {f["id"] for f in r.json()["features"]}

    assert ids("2024-02-01") == {"s1"}
    assert ids("2024-04-01/2024-07-01") == {"s2", "s3"}
    assert ids("2025-06-01T00:00:00Z/..") == {"s3"}  # open-ended site still running
    assert ids("../2023-12-31") == {"s4"}
    assert ids("2024-02-21/2024-02-28") == set()
    # Lights carry no period: matched against their last change (written by the fixture now).
    r = client.get("/collections/lights/items", params={"datetime": "2000-01-01/..", "limit": 1})
    assert r.json()["numberMatched"] == len(streetlights_frame())
    r = client.get("/collections/lights/items", params={"datetime": "../2000-01-01"})
    assert r.json()["numberMatched"] == 0


def test_single_item_and_unknown_ones(client):
    ref = wuhan_pipes()
    r = client.get("/collections/pipes/items/wh-0007")
    f = r.json()
    assert r.headers["content-type"].startswith("application/geo+json")
    assert f["id"] == "wh-0007"
    assert f["properties"]["network"] == ref.attrs["network"][7]
    assert np.allclose(f["geometry"]["coordinates"], shapely.get_coordinates(ref.geometry[7]))
    r = client.get("/collections/pipes/items/nope")
    assert r.status_code == 404 and r.json()["code"] == "UnknownFeature"
    r = client.get("/collections/nope/items")
    assert r.status_code == 404 and "nope" in r.json()["description"]


def test_public_caller_never_sees_a_restricted_layer(served_store):
    with TestClient(app_for(served_store, anonymous_access="public")) as c:
        ids = [col["id"] for col in c.get("/collections").json()["collections"]]
        assert "secret_valves" not in ids
        for path in (
            "/collections/secret_valves",
            "/collections/secret_valves/items",
            "/collections/secret_valves/items/k1",
            "/collections/secret_valves/queryables",
        ):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["code"] == "UnknownCollection"
        assert c.get("/healthz").json()["collections"] == len(ids)
    with TestClient(app_for(served_store, anonymous_access="restricted")) as c:
        ids = [col["id"] for col in c.get("/collections").json()["collections"]]
        assert "secret_valves" in ids
        assert c.get("/collections/secret_valves/items").json()["numberMatched"] == 2


def test_metrics_count_requests_by_route(client):
    client.get("/collections/lights/items", params={"limit": 1})
    text = client.get("/metrics").text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("twin_http_requests_total")
        and 'route="/collections/{collectionId}/items"' in ln
        and 'status="200"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert "twin_http_request_duration_seconds_bucket" in text
    assert client.get("/healthz").json()["status"] == "ok"
