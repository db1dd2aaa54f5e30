"""HTML pages for browsers: `f=html` (or a browser's Accept) on every route that answers links
gives a page made from the same document; item and items pages show every property of the
GeoJSON, escaped, with a map drawn by the project's own MapLibre and the JSON's paging links."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from fastapi.testclient import TestClient

from importers.options import ImportOptions
from importers.pipeline import import_file
from layers.gpkg import GeoPackageStore
from tests.conftest import needs
from tests.twin.query_fixtures import query_app
from tests.twin.serve_fixtures import LiveServer
from twin.app import web_map_ready
from twin.settings import ServerSettings

BASE = "http://testserver"
SCRIPT = "<script>alert(1)</script>"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ODD_ID = '<i>"q"&amp;'
"""A source id full of markup: the feature's id is `mains:` followed by it."""


def _mains() -> dict[str, Any]:
    """Seven water mains with schema fields, extras (one holding markup) and odd ids."""
    features = []
    for i in range(7):
        props = {
            "FID": ODD_ID if i == 3 else f"p{i}",
            "DIAMETER": 100 + 50 * i,
            "depth_m": 1.25 + i / 10,
            "MATERIAL": "PE" if i % 2 else "DI",
            "Note": SCRIPT if i == 0 else f"note {i}",
            "Owner": 'Tom & "Jerry"',
            "NumValves": i,
            "Checked": i % 3 == 0,
        }
        x = 114.30 + i * 0.001
        line = [[x, 30.50], [x + 0.0008, 30.5006], [x + 0.0012, 30.5011]]
        features.append(
            {
                "type": "Feature",
                "properties": props,
                "geometry": {"type": "LineString", "coordinates": line},
            }
        )
    return {"type": "FeatureCollection", "features": features}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the mains, imported by the real importer (their extras kept)."""
    root = tmp_path_factory.mktemp("html")
    src = root / "mains.geojson"
    src.write_text(json.dumps(_mains()))
    opened = GeoPackageStore(root / "store")
    try:
        options = ImportOptions(constants={"network": "water"}, id_column="FID")
        assert import_file(opened, "pipes", src, options, user="tests").landed
    finally:
        opened.close()
    return root / "store"


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[TestClient]:
    with TestClient(query_app(store)) as c:
        yield c


class Page(HTMLParser):
    """What a page holds: its links, scripts, stylesheets, table rows (cells' text) and text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[str, str]] = []  # (href, text)
        self.scripts: list[str] = []
        self.inline_scripts = 0
        self.styles: list[str] = []
        self.rows: list[list[str]] = []
        self.title = ""
        self._cell: list[str] | None = None
        self._anchor: list[str] | None = None
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a":
            self._anchor = [a["href"] or "", ""]
        elif tag == "script":
            if a.get("src"):
                self.scripts.append(a["src"] or "")
            elif a.get("type") is None:
                self.inline_scripts += 1
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.styles.append(a["href"] or "")
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "title":
            self._in = "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._anchor is not None:
            self.anchors.append((self._anchor[0], self._anchor[1]))
            self._anchor = None
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "title":
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._anchor is not None:
            self._anchor[1] += data
        if self._in == "title":
            self.title += data

    def hrefs(self) -> list[str]:
        return [h for h, _ in self.anchors]


def html_of(client: TestClient, path: str, **params: Any) -> tuple[Page, str]:
    r = client.get(path, params={**params, "f": "html"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return Page(r.text), r.text


def shown(value: Any) -> str:
    """A property value as a page shows it (strings as they are, the rest as JSON)."""
    if value is None:
        return "–"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def query(href: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(href)
    return parts.path, parse_qs(parts.query)


def _item_path(fid: str) -> str:
    return f"/collections/pipes/items/{quote(fid, safe='')}"


# -- single items -----------------------------------------------------------------------------


def test_item_page_holds_every_property_of_the_json_item(client: TestClient) -> None:
    items = client.get("/collections/pipes/items").json()["features"]
    assert len(items) == 7
    for listed in items:
        fid = listed["id"]
        feature = client.get(_item_path(fid)).json()
        page, _ = html_of(client, _item_path(fid))
        # The title names the collection and the feature.
        assert page.title == f"Pipes {fid}"
        table = {row[0]: row[1] for row in page.rows if len(row) == 2 and row[0] != "link"}
        names = {re.sub(r" \(.*\)$", "", k): v for k, v in table.items()}
        expected = {"id": fid} | {k: shown(v) for k, v in feature["properties"].items()}
        assert {k: names.get(k) for k in expected} == expected
        # Extras are there, with their values.
        assert {"Note", "Owner", "NumValves", "Checked", "FID_src"} <= names.keys()
        # Units of fields named by their unit.
        assert "depth_m (m)" in table and "diameter_mm (mm)" in table
        # Links: the GeoJSON itself, and the features' page.
        self_href = next(lk["href"] for lk in feature["links"] if lk["rel"] == "self")
        assert self_href in page.hrefs()
        assert f"{BASE}/collections/pipes/items?f=html" in page.hrefs()
        back = client.get(self_href)
        assert back.headers["content-type"] == "application/geo+json"
        assert back.json()["properties"] == feature["properties"]


def test_item_json_carries_its_html_alternate(client: TestClient) -> None:
    fid = client.get("/collections/pipes/items", params={"limit": 1}).json()["features"][0]["id"]
    feature = client.get(_item_path(fid)).json()
    (alt,) = [lk for lk in feature["links"] if lk["rel"] == "alternate"]
    assert alt["type"] == "text/html"
    r = client.get(alt["href"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert Page(r.text).title == f"Pipes {fid}"


def test_markup_in_values_and_ids_is_escaped(client: TestClient) -> None:
    features = client.get("/collections/pipes/items").json()["features"]
    marked = next(f for f in features if f["properties"]["Note"] == SCRIPT)
    odd = next(f for f in features if f["properties"]["FID_src"] == ODD_ID)
    for fid in (marked["id"], odd["id"]):
        page, text = html_of(client, _item_path(fid))
        assert SCRIPT not in text and "<i>" not in text and '"q"' not in text
        # Only the MapLibre script and the map's own one are scripts, both files (no inline
        # script: the pages' content security policy allows none).
        assert page.inline_scripts == 0 and len(page.scripts) == 2
        # Read back as text, the values are what the data holds.
        table = {row[0]: row[1] for row in page.rows if len(row) == 2}
        assert table["id"] == fid
        assert page.title == f"Pipes {fid}"
    page, text = html_of(client, _item_path(marked["id"]))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert {row[1] for row in page.rows if row and row[0] == "Note"} == {SCRIPT}
    listing, text = html_of(client, "/collections/pipes/items")
    assert SCRIPT not in text and "<i>" not in text
    assert listing.inline_scripts == 0 and len(listing.scripts) == 2
    assert any(SCRIPT in row for row in listing.rows)
    assert any(odd["id"] in row for row in listing.rows)


# -- items pages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"limit": 2},
        {"limit": 2, "offset": 2},
        {"limit": 3, "offset": 5},
        {"filter": "diameter_mm >= 200", "limit": 2, "offset": 1},
        {"bbox": "114.3015,30.49,114.3045,30.51", "limit": 2},
        {"material": "PE"},
    ],
)
def test_items_page_shows_the_json_page(client: TestClient, params: dict[str, Any]) -> None:
    collection = client.get("/collections/pipes/items", params=params).json()
    page, text = html_of(client, "/collections/pipes/items", **params)
    features = collection["features"]
    header = page.rows[0]
    assert header[0] == "id"
    columns = [re.sub(r" \(.*\)$", "", h) for h in header[1:]]
    assert "Note" in columns and "diameter_mm" in columns
    body = page.rows[1 : 1 + len(features)]
    expected = [[f["id"], *(shown(f["properties"].get(c)) for c in columns)] for f in features]
    assert body == expected
    # Each id leads to the feature's page.
    for f in features:
        href = f"{BASE}{_item_path(f['id'])}?f=html"
        assert (href, f["id"]) in page.anchors
    # The paging links are the JSON's, asking for HTML.
    links = {lk["rel"]: lk["href"] for lk in collection["links"]}
    anchors = {text: href for href, text in page.anchors}
    for rel, label in (("next", "next »"), ("prev", "« previous")):
        if rel not in links:
            assert label not in anchors
            continue
        path, args = query(links[rel])
        assert query(anchors[label]) == (path, {**args, "f": ["html"]})
        following = client.get(anchors[label])
        assert following.headers["content-type"].startswith("text/html")
    # A browser's Accept header gets the same page, paging links and all.
    asked = client.get("/collections/pipes/items", params=params, headers={"Accept": BROWSER})
    assert asked.text == text
    # And a link to the GeoJSON of this very page, and where the page stands.
    assert links["self"] in page.hrefs()
    first = int(params.get("offset", 0)) + 1
    where = f"features {first}–{first + len(features) - 1} of {collection['numberMatched']}"
    assert where in text


def test_paging_through_html_visits_what_json_visits(client: TestClient) -> None:
    seen_json: list[str] = []
    href: str | None = f"{BASE}/collections/pipes/items?limit=3"
    while href:
        doc = client.get(href).json()
        seen_json += [f["id"] for f in doc["features"]]
        href = next((lk["href"] for lk in doc["links"] if lk["rel"] == "next"), None)
    seen_html: list[str] = []
    href = f"{BASE}/collections/pipes/items?limit=3&f=html"
    while href:
        page = Page(client.get(href).text)
        seen_html += [row[0] for row in page.rows[1:] if len(row) > 3]
        href = {text: h for h, text in page.anchors}.get("next »")
    assert seen_html == seen_json and len(seen_json) == 7


# -- the map ----------------------------------------------------------------------------------


def _needs_web_map() -> None:
    needs(
        web_map_ready(ServerSettings(_env_file=None)),  # type: ignore[call-arg]
        "the web map's npm packages (`npm ci` in web/)",
    )


@pytest.mark.parametrize("path", ["/collections/pipes/items", "ITEM"])
def test_map_is_drawn_by_the_projects_own_maplibre(client: TestClient, path: str) -> None:
    _needs_web_map()
    features = client.get("/collections/pipes/items").json()["features"]
    if path == "ITEM":
        path = _item_path(features[0]["id"])
        features = features[:1]
    page, text = html_of(client, path)
    lib, own = page.scripts
    scripts = {}
    for src in (lib, own):
        assert src.startswith(f"{BASE}/web/")
        scripts[src] = client.get(src)
        assert scripts[src].status_code == 200
        assert "javascript" in scripts[src].headers["content-type"]
    assert "maplibregl" in scripts[lib].text[:5000] or "maplibre" in scripts[lib].text[:5000]
    # The page's own script draws its data blocks with that MapLibre.
    assert 'getElementById("map-data")' in scripts[own].text
    assert "new maplibregl.Map" in scripts[own].text
    for css in page.styles:
        assert client.get(css).status_code == 200
    # No URL in the page (nor in the style it draws) leads to another host: no CDN.
    style = client.get("/style.json").text
    for body in (text, style):
        urls = re.findall(r"https?://[^\s\"'<>\\]+", body)
        assert urls and all(u.startswith(f"{BASE}/") for u in urls), urls
    # The map draws exactly the page's features, in lon/lat.
    data = re.search(r'<script type="application/json" id="map-data">(.*?)</script>', text)
    assert data is not None
    drawn = json.loads(data.group(1))["features"]
    assert [d["properties"]["id"] for d in drawn] == [f["id"] for f in features]
    assert [d["geometry"] for d in drawn] == [f["geometry"] for f in features]


# -- every route with links -------------------------------------------------------------------

ROUTES = [
    "/",
    "/conformance",
    "/collections",
    "/collections/pipes",
    "/collections/pipes/items",
    "/collections/pipes/queryables",
    "/tileMatrixSets",
    "/tiles",
    "/tiles/WebMercatorQuad",
    "/collections/pipes/tiles",
    "/collections/pipes/tiles/WebMercatorQuad",
]


@pytest.mark.parametrize("path", ROUTES)
def test_json_links_its_html_page_and_the_page_links_back(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert "json" in r.headers["content-type"]
    doc = r.json()
    alternates = [lk for lk in doc["links"] if lk["rel"] == "alternate"]
    assert [lk["type"] for lk in alternates] == ["text/html"]
    page = client.get(alternates[0]["href"])
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Accept" in page.headers["vary"] and "Accept" in r.headers["vary"]
    hrefs = Page(page.text).hrefs()
    # The page links the JSON document it shows, and every other link the JSON has.
    assert f"{BASE}{path}" in hrefs
    others = {lk["href"] for lk in doc["links"] if lk["rel"] != "alternate"}
    assert {h for h in others if "{" not in h} <= set(hrefs)
    # The same page for a browser's Accept header, and the JSON for a JSON client's.
    if path != "/":  # the landing page sends browsers to the web map instead
        assert client.get(path, headers={"Accept": BROWSER}).text == page.text
    for accept in ("application/json", "application/geo+json", "text/html, application/json"):
        assert "json" in client.get(path, headers={"Accept": accept}).headers["content-type"]


def test_browser_at_the_landing_page_still_goes_to_the_web_map(client: TestClient) -> None:
    _needs_web_map()
    r = client.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (307, "web/")
    assert "twin" in html_of(client, "/")[0].title


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/collections/nope/items", {}, 404),
        ("/collections/nope", {}, 404),
        ("/collections/pipes/items/nope", {}, 404),
        ("/collections/pipes/items", {"bbox": "1,2,3"}, 400),
        ("/collections/pipes/items", {"filter": "diameter_mm >>> 1"}, 400),
        ("/collections/pipes/items", {"Nope": "1"}, 400),
    ],
)
def test_errors_on_html_requests_are_json_4xx(
    client: TestClient, path: str, params: dict[str, str], status: int
) -> None:
    r = client.get(path, params={**params, "f": "html"})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] and r.json()["description"]


@pytest.mark.parametrize("path", ["/collections", "/collections/pipes/items", "/"])
def test_an_unknown_format_is_refused(client: TestClient, path: str) -> None:
    r = client.get(path, params={"f": "xml"})
    assert r.status_code == 400
    assert "f=" in r.json()["description"]


# -- in a browser -----------------------------------------------------------------------------


@pytest.mark.browser
def test_item_page_in_a_browser_shows_the_map_and_the_table(
    client: TestClient, store: Path
) -> None:
    from tests.twin.test_web_map import CHROMIUM, CHROMIUM_ARGS, PAGE, wait_for_map, watch

    needs(Path(CHROMIUM).exists(), "Debian chromium")
    _needs_web_map()
    from playwright.sync_api import sync_playwright

    fid = client.get("/collections/pipes/items").json()["features"][1]["id"]
    with LiveServer(query_app(store)) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800}, **PAGE)
            problems = watch(page, server.url)
            page.goto(f"{server.url}{_item_path(fid)}?f=html")
            wait_for_map(page)
            assert page.locator("#map canvas").is_visible()
            # The feature is drawn over the server's own vector tiles of its layer.
            drawn = page.evaluate(
                "twinMap.queryRenderedFeatures().map(f => [f.layer.id, f.properties.id])"
            )
            assert {i for layer, i in drawn if layer == "shown-line"} == {fid}
            assert fid in {i for layer, i in drawn if layer.startswith("pipes")}
            table = page.locator("table").first.inner_text()
            assert fid in table and "note 1" in table and 'Tom & "Jerry"' in table
        finally:
            browser.close()
    assert problems == []
