"""The planners' web map in a real browser (Debian Chromium driven by Playwright) on the demo
district, offline: every check compares what the map shows with what the API answers for the
same request (or the store), with no console error and no request to any other host.

Screenshots (1440×900 and 1024×768) are saved as artefacts under `test-artefacts/web/` (or
`$TWIN_TEST_ARTEFACTS`), to be looked at as a planner would."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import shapely
from PIL import Image, ImageChops
from typer.testing import CliRunner

from layers.gpkg import GeoPackageStore
from layers.models import Access
from tests.conftest import needs
from twin.app import web_map_ready
from twin.cli import app as cli
from twin.settings import ServerSettings

from .serve_fixtures import LiveServer, app_for

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("web-map")]

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(os.environ.get("TWIN_TEST_ARTEFACTS", ROOT / "test-artefacts")) / "web"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 60_000  # a guard against a hang, not a speed test
# Playwright's `wait_for_function` evaluates its expression with `eval`, which the pages'
# content security policy refuses: these pages set it aside (the map under the policy is
# `test_security_headers.py`'s).
PAGE = {"bypass_csp": True}


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("webmap") / "store"
    result = CliRunner().invoke(cli, ["demo", "--store", str(root), "--no-serve"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def layers(demo_store: Path) -> dict:
    store = GeoPackageStore(demo_store, create=False)
    try:
        return {n: store.load(n, Access.PUBLIC) for n in store.layers(Access.PUBLIC)}
    finally:
        store.close()


@pytest.fixture(scope="module")
def server(demo_store: Path) -> Iterator[LiveServer]:
    needs(Path(CHROMIUM).exists(), "Debian chromium")
    needs(
        web_map_ready(ServerSettings(_env_file=None)),  # type: ignore[call-arg]
        "the web map's npm packages (`npm ci` in web/)",
    )
    with LiveServer(app_for(demo_store)) as live:
        yield live


@pytest.fixture(scope="module", name="browser")
def browser_fixture(server: LiveServer) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def browser_page(browser, server: LiveServer) -> Iterator[tuple[object, LiveServer, list]]:
    page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True, **PAGE)
    problems = watch(page, server.url)
    page.goto(server.url + "/")
    wait_for_map(page)
    page.wait_for_function("window.twin && twin.ready", timeout=WAIT_MS)
    yield page, server, problems
    page.close()


@pytest.fixture
def fresh(browser_page):
    """The shared page with no tool, panel or layer left over from the test before."""
    page, server, problems = browser_page
    page.evaluate(
        """() => {
            twin.tools.close(); twin.inspector.clear();
            for (const b of document.querySelectorAll('#panel input[type=checkbox]'))
                if (!b.checked) b.click();
        }"""
    )
    problems.clear()
    return page, server, problems


def watch(page, origin: str) -> list:
    """The problems `page` meets from now on: script errors, console errors, HTTP errors, and
    requests to anywhere but `origin` (refused: the map must work offline)."""
    problems: list = []
    page.on("pageerror", lambda e: problems.append(("pageerror", str(e))))
    page.on(
        "console",
        lambda m: problems.append(("console", m.text)) if m.type == "error" else None,
    )
    page.on(
        "response",
        lambda r: problems.append(("http", r.status, r.url)) if r.status >= 400 else None,
    )
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(origin)
            else (problems.append(("external", route.request.url)), route.abort())
        ),
    )
    return problems


def wait_for_map(page) -> None:
    page.wait_for_function(
        "window.twinMap && twinMap.loaded() && twinMap.areTilesLoaded()", timeout=WAIT_MS
    )
    page.wait_for_timeout(300)


def go(page, lon: float, lat: float, zoom: float) -> None:
    page.evaluate(
        "([lon, lat, z]) => twinMap.jumpTo({center: [lon, lat], zoom: z})", [lon, lat, zoom]
    )
    wait_for_map(page)


def pixel(page, lon: float, lat: float) -> tuple[float, float]:
    """Where (lon, lat) is on the page (the map's canvas starts right of the panel)."""
    return page.evaluate(
        """([lon, lat]) => {
            const p = twinMap.project([lon, lat]);
            const r = twinMap.getCanvas().getBoundingClientRect();
            return [r.left + p.x, r.top + p.y];
        }""",
        [lon, lat],
    )


def click_map(page, lon: float, lat: float) -> None:
    x, y = pixel(page, lon, lat)
    page.mouse.click(x, y)


def rendered_counts(page) -> dict[str, int]:
    return page.evaluate(
        """() => {
            const c = {};
            for (const f of twinMap.queryRenderedFeatures()) {
                // (A hidden label layer's last placement can still be queried: not drawn.)
                if (f.source !== 'twin' || f.layer.layout?.visibility === 'none') continue;
                c[f.sourceLayer] = (c[f.sourceLayer] || 0) + 1;
            }
            return c;
        }"""
    )


def settled(page, holds, seconds: float = 5.0) -> bool:
    """Whether the rendered features come to satisfy `holds(counts)` within `seconds`."""
    deadline = time.monotonic() + seconds
    while not holds(rendered_counts(page)):
        if time.monotonic() > deadline:
            return False
        page.wait_for_timeout(100)
    return True


def shot(page, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def api(server: LiveServer, path: str, **params) -> dict:
    r = httpx.get(server.url + path, params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# -- reading the map ------------------------------------------------------------------------------


def test_browser_lands_on_the_web_map_and_every_layer_renders(browser_page, demo_store):
    page, server, problems = browser_page
    assert page.url.startswith(server.url + "/web/")
    store = GeoPackageStore(demo_store, create=False)
    expected = set(store.layers(Access.PUBLIC))
    store.close()
    counts = rendered_counts(page)
    assert set(counts) == expected, counts
    assert all(n > 0 for n in counts.values())
    # The view was fitted to the data: the district fills the map.
    zoom = page.evaluate("twinMap.getZoom()")
    assert 12 <= zoom <= 16
    shot(page, "overview-1440x900")
    assert problems == []


def test_the_panel_groups_every_layer_with_its_count_and_legend(fresh):
    page, server, problems = fresh
    collections = api(server, "/collections")["collections"]
    vector = {c["id"]: c["numberOfFeatures"] for c in collections if "numberOfFeatures" in c}
    shown = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#panel .layer')].map(
            d => [d.querySelector('input').dataset.collection,
                  d.querySelector('.count').textContent.replace(/[^0-9]/g, '')]))"""
    )
    assert {k: int(v) for k, v in shown.items()} == vector
    groups = page.evaluate(
        "[...document.querySelectorAll('#panel details')].map(d => d.dataset.group)"
    )
    assert groups[:5] == ["networks", "transport", "lighting", "green", "management"]
    assert "rasters" in groups
    # The legend is the style's: each network's swatch has the colour its pipes are drawn in.
    style = api(server, "/style.json")
    nets = style["metadata"]["twin:networks"]
    colours = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('input[data-network]')].map(
            b => [b.dataset.network, b.parentElement.querySelector('line').getAttribute('stroke')]))"""
    )
    assert colours == {n: v["colour"] for n, v in nets.items()}
    pipes = next(lyr for lyr in style["layers"] if lyr["id"] == "pipes")
    for net, info in nets.items():
        assert info["colour"] in json.dumps(pipes["paint"]["line-color"]), net
    assert problems == []


def test_every_layer_and_network_toggles(fresh):
    page, _, problems = fresh
    names = page.evaluate(
        "[...document.querySelectorAll('#panel input[data-collection]')].map(b => b.dataset.collection)"
    )
    assert len(names) >= 8
    for name in names:
        box = page.locator(f"#panel input[data-collection='{name}']")
        box.uncheck()
        wait_for_map(page)
        # The map repaints on its next frames: a busy machine may need more than one.
        assert settled(page, lambda c, n=name: n not in c), name
        box.check()
        wait_for_map(page)
        assert settled(page, lambda c, n=name: c.get(n, 0) > 0), name
    # One network off hides its pipes and its valves, and only them.
    page.locator("input[data-network='gas']").uncheck()
    wait_for_map(page)
    nets = page.evaluate(
        """() => [...new Set(twinMap.queryRenderedFeatures({layers: ['pipes', 'valves']})
            .map(f => f.sourceLayer + ':' + f.properties.network))]"""
    )
    assert "pipes:gas" not in nets and "valves:gas" not in nets
    assert "pipes:water" in nets and "valves:water" in nets
    page.locator("input[data-network='gas']").check()
    # The terrain rasters switch too.
    for raster in page.evaluate(
        "[...document.querySelectorAll('input[data-raster]')].map(b => b.dataset.raster)"
    ):
        page.locator(f"input[data-raster='{raster}']").uncheck()
        assert page.evaluate(f"twinMap.getLayoutProperty('{raster}', 'visibility')") == "none"
        page.locator(f"input[data-raster='{raster}']").check()
        assert page.evaluate(f"twinMap.getLayoutProperty('{raster}', 'visibility')") == "visible"
    assert problems == []


def test_a_chinese_street_label_is_rendered(fresh, layers):
    page, _, problems = fresh
    roads = layers["roads"]
    longest = int(np.argmax(shapely.length(roads.geometry)))
    mid = shapely.line_interpolate_point(roads.geometry[longest], 0.5, normalized=True)
    go(page, mid.x, mid.y, 16)
    labels = page.evaluate(
        "twinMap.queryRenderedFeatures({layers: ['roads-label']}).map(f => f.properties.name)"
    )
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in str(n)) for n in labels), labels
    with_labels = Image.open(io.BytesIO(page.locator("#map canvas").screenshot()))
    page.evaluate("twinMap.setLayoutProperty('roads-label', 'visibility', 'none')")
    wait_for_map(page)
    without = Image.open(io.BytesIO(page.locator("#map canvas").screenshot()))
    page.evaluate("twinMap.setLayoutProperty('roads-label', 'visibility', 'visible')")
    diff = ImageChops.difference(with_labels.convert("RGB"), without.convert("RGB"))
    changed = int((np.asarray(diff).sum(axis=2) > 60).sum())
    assert changed > 200, changed  # the glyphs' pixels
    shot(page, "labels-z16-1440x900")
    assert problems == []


# -- click and inspect ----------------------------------------------------------------------------


def _lamp_on_a_pipe(server: LiveServer, layers: dict) -> tuple[str, str, shapely.Point]:
    """A lamp the API says sits on (within 1.5 m of) a pipe, and that pipe."""
    lights, pipes = layers["lights"], layers["pipes"]
    near, dist = pipes.tree.query_nearest(lights.geometry, return_distance=True)
    for i in np.argsort(dist)[:50]:
        lamp = lights.geometry[near[0][i]]
        found = api(server, "/query/at", lon=lamp.x, lat=lamp.y, tolerance=1.5)["layers"]
        if "pipes" in found and "lights" in found:
            return found["lights"]["features"][0]["id"], found["pipes"]["features"][0]["id"], lamp
    raise AssertionError("no lamp on a pipe in the demo")


def test_clicking_where_a_lamp_sits_on_a_pipe_offers_both(fresh, layers):
    page, server, problems = fresh
    lamp_id, pipe_id, lamp = _lamp_on_a_pipe(server, layers)
    go(page, lamp.x, lamp.y, 19)
    click_map(page, lamp.x, lamp.y)
    page.locator("#pick-list").wait_for(state="visible")
    offered = page.evaluate(
        "[...document.querySelectorAll('#pick-list button')].map(b => [b.dataset.collection, b.dataset.id])"
    )
    assert ["lights", lamp_id] in offered and ["pipes", pipe_id] in offered
    assert offered[0][0] == "lights"  # what sits on top is listed first
    # The grid cells it falls in are offered too (a click inside a cell finds it).
    cells = api(server, "/query/at", lon=lamp.x, lat=lamp.y, tolerance=1.5)["cells"]
    assert {c["id"] for c in cells} <= {i for c, i in offered if c == "grids"}
    # Picking the pipe shows its attributes with units, and links to its JSON and page.
    page.locator(f"#pick-list button[data-id='{pipe_id}']").click()
    page.locator("#inspect-table").wait_for(state="visible")
    feature = api(server, f"/collections/pipes/items/{pipe_id}")
    text = page.locator("#inspect").inner_text()
    assert pipe_id in text
    assert f"{feature['properties']['diameter_mm']} mm" in text
    assert f"{feature['properties']['depth_m']} m" in text
    hrefs = page.evaluate("[...document.querySelectorAll('#inspect .links a')].map(a => a.href)")
    assert any(h.endswith(f"/items/{pipe_id.replace(':', '%3A')}") for h in hrefs), hrefs
    assert any("f=html" in h for h in hrefs)
    assert f"sel=pipes/{pipe_id}" in page.url
    shot(page, "inspect-pipe-1440x900")
    # Clicking empty map clears it.
    page.evaluate("twinMap.jumpTo({center: [114.2, 30.2], zoom: 16})")
    page.mouse.click(900, 450)
    assert page.locator("#inspect").is_hidden()
    assert problems == []


def test_clicking_a_park_shows_that_park(fresh, layers):
    page, _, problems = fresh
    parks, sites = layers["parks"], layers["sites"]
    order = shapely.area(parks.geometry).argsort()[::-1]
    row = next(int(i) for i in order if not sites.query(parks.geometry[i]).size)
    point = shapely.point_on_surface(parks.geometry[row])
    go(page, point.x, point.y, 16)
    click_map(page, point.x, point.y)
    page.locator(f"#pick-list button[data-id='{parks.ids[row]}']").click()
    table = page.locator("#inspect-table")
    table.wait_for(state="visible")
    text = table.inner_text()
    assert "parks" in text
    assert parks.ids[row] in text
    assert str(parks.attrs.loc[row, "name"]) in text
    assert problems == []


def test_a_click_inside_a_grid_cell_opens_it_in_its_hierarchy(fresh, layers):
    page, server, problems = fresh
    grids = layers["grids"]
    levels = grids.attrs["level"].to_numpy(dtype=object)
    row = int(np.flatnonzero(levels == "community")[0])
    inside = shapely.point_on_surface(grids.geometry[row])
    go(page, inside.x, inside.y, 15)
    click_map(page, inside.x, inside.y)
    fid = str(grids.ids[row])
    page.locator(f"#pick-list button[data-id='{fid}']").click()
    page.locator("#grid-hierarchy").wait_for(state="visible")
    code = grids.attrs["code"].iloc[row]
    children = api(server, "/collections/grids/items", parent_code=code, limit=1000)["features"]
    shown = page.evaluate(
        "[...document.querySelectorAll('#grid-hierarchy .children button')].map(b => b.dataset.id)"
    )
    assert shown == [f["id"] for f in children] and shown
    above = page.evaluate(
        "[...document.querySelectorAll('#grid-hierarchy .crumbs button')].map(b => b.dataset.id)"
    )
    parent = api(server, "/collections/grids/items", code=grids.attrs["parent_code"].iloc[row])
    district = api(
        server, "/collections/grids/items", code=parent["features"][0]["properties"]["parent_code"]
    )
    assert above == [district["features"][0]["id"], parent["features"][0]["id"]]
    shot(page, "grid-cell-1440x900")
    page.keyboard.press("Escape")
    assert page.locator("#inspect").is_hidden()
    assert problems == []


# -- search ---------------------------------------------------------------------------------------


def test_search_for_a_street_name_zooms_to_it(fresh, layers):
    page, server, problems = fresh
    names = layers["roads"].attrs["name"].dropna().astype(str).str.split(";").explode()
    street = names.value_counts().index[0]
    expected = api(server, "/search", q=street)["features"][0]
    assert expected["label"] == street
    page.evaluate("twinMap.jumpTo({center: [114.32, 30.35], zoom: 12})")
    search = page.locator("#search")
    search.fill(street)
    page.locator("#search-results li").first.wait_for(state="visible")
    first = page.locator("#search-results li").first
    assert first.get_attribute("data-id") == expected["id"]
    shot(page, "search-suggestions-1440x900")
    search.press("Enter")
    page.locator("#inspect-table").wait_for(state="visible")
    page.wait_for_function("!twinMap.isMoving()", timeout=WAIT_MS)
    wait_for_map(page)
    west, south, east, north = expected["bbox"]
    view = page.evaluate("twinMap.getBounds().toArray().flat()")
    assert view[0] <= west and view[1] <= south and view[2] >= east and view[3] >= north
    assert page.evaluate("twinMap.getZoom()") > 12
    assert expected["id"] in page.locator("#inspect").inner_text()
    assert problems == []


# -- tools ----------------------------------------------------------------------------------------


def _listed(page) -> list[list[str]]:
    return page.evaluate(
        "[...document.querySelectorAll('#tool-results .result-list li')].map(li => [li.dataset.collection, li.dataset.id])"
    )


def test_a_buffer_lists_the_same_features_as_the_api(fresh, layers):
    page, server, problems = fresh
    pipes = layers["pipes"]
    fid = str(pipes.ids[120])
    mid = shapely.line_interpolate_point(pipes.geometry[120], 0.5, normalized=True)
    go(page, mid.x, mid.y, 17)
    page.evaluate(f"twin.inspector.open('pipes', {json.dumps(fid)})")
    page.locator("#toolbar button[data-tool='buffer']").click()
    page.locator("#tool-distance").fill("30")
    page.locator("#tool button[data-action='run']").click()
    page.locator("#tool-results").wait_for(state="visible")
    answer = api(server, "/query/buffer", collection="pipes", id=fid, distance=30, limit=1000)
    assert _listed(page) == [[f["collection"], f["id"]] for f in answer["features"]]
    assert len(answer["features"]) > 3
    # Every listed feature is highlighted on the map.
    lit = page.evaluate(
        """(fs) => fs.every(f => twinMap.getFeatureState(
            {source: 'twin', sourceLayer: f.collection, id: f.id}).hit === true)""",
        answer["features"],
    )
    assert lit
    shot(page, "buffer-1440x900")

    # A drawn line with a distance: the same features as POST /query/intersects.
    page.locator("#toolbar button[data-tool='intersects']").click()
    page.locator("#tool-distance").fill("20")
    page.locator("#tool button[data-draw='line']").click()
    a, b = shapely.get_coordinates(pipes.geometry[120])[[0, -1]]
    click_map(page, *a)
    click_map(page, *b)
    page.locator("#tool button[data-action='finish']").click()
    page.locator("#tool-results").wait_for(state="visible")
    body = page.evaluate("twin.lastRequest")
    assert body["buffer_m"] == 20 and body["geometry"]["type"] == "LineString"
    drawn = np.array(body["geometry"]["coordinates"])
    assert np.abs(drawn - np.array([a, b])).max() < 1e-5  # where the clicks were, to a metre
    r = httpx.post(server.url + "/query/intersects", json=body, timeout=30)
    assert _listed(page) == [[f["collection"], f["id"]] for f in r.json()["features"]]
    assert problems == []


def test_the_dig_checks_csv_equals_post_query_intersects(fresh, layers):
    page, server, problems = fresh
    pipes = layers["pipes"]
    mid = shapely.line_interpolate_point(pipes.geometry[300], 0.5, normalized=True)
    go(page, mid.x, mid.y, 18)
    page.locator("#toolbar button[data-tool='dig']").click()
    page.locator("#dig-depth").fill("1.5")
    page.locator("#tool-distance").fill("2")
    x, y = pixel(page, mid.x, mid.y)
    for dx, dy in ((-60, -40), (60, -40), (60, 40), (-60, 40)):
        page.mouse.click(x + dx, y + dy)
    page.locator("#tool button[data-action='finish']").click()
    page.locator("#dig-csv").wait_for(state="visible")
    with page.expect_download() as download:
        page.locator("#dig-csv").click()
    saved = ARTEFACTS / "dig-check.csv"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    download.value.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    body = page.evaluate("twin.lastRequest")
    assert body["dig_depth_m"] == 1.5 and body["buffer_m"] == 2
    assert body["geometry"]["type"] == "Polygon" and len(body["geometry"]["coordinates"][0]) == 5
    answer = httpx.post(server.url + "/query/intersects", json=body, timeout=30).json()
    assert len(rows) == len(answer["features"]) > 0
    for row, f in zip(rows, answer["features"], strict=True):
        assert (row["collection"], row["id"]) == (f["collection"], f["id"])
        assert float(row["distance_m"]) == f["distance_m"]
        depth = f["properties"].get("depth_m")
        assert row["depth_m"] == ("" if depth is None else str(depth))
        if depth is not None:
            assert float(row["clearance_m"]) == pytest.approx(depth - 1.5, abs=1e-3)
        reached = f.get("reached")
        assert row["reached"] == ("" if reached is None else str(reached).lower())
    assert any(r["reached"] == "true" for r in rows) or any(
        r["collection"] == "pipes" for r in rows
    )
    shot(page, "dig-check-1440x900")
    assert problems == []


def _trace_tool_on(page, layers, network: str, share: float, zoom: float) -> shapely.Point:
    """The isolation tool open, the map at the middle of a pipe of `network` (the one at
    `share` of that network's pipes), only that network drawn; the middle."""
    pipes = layers["pipes"]
    rows = np.flatnonzero(pipes.attrs["network"].to_numpy(dtype=object) == network)
    mid = shapely.line_interpolate_point(
        pipes.geometry[int(rows[int(len(rows) * share)])], 0.5, normalized=True
    )
    go(page, mid.x, mid.y, zoom)
    page.locator("#toolbar button[data-tool='isolate']").click()
    # Only that network drawn: the click cannot pick another main beside it.
    for net in page.evaluate("Object.keys(twinMap.getStyle().metadata['twin:networks'])"):
        if net != network:
            page.locator(f"input[data-network='{net}']").uncheck()
    return mid


def test_an_isolation_trace_highlights_exactly_the_apis_valves(fresh, layers):
    page, server, problems = fresh
    mid = _trace_tool_on(page, layers, "water", 1 / 3, 18)
    click_map(page, mid.x, mid.y)
    page.locator("#isolation-valves").wait_for(state="visible")
    traced = page.evaluate("twin.lastAnswer.pipe.id")
    at = api(server, "/query/at", lon=mid.x, lat=mid.y, tolerance=5)
    assert "pipes" in json.dumps(at["layers"]) and traced in json.dumps(at["layers"])
    answer = api(server, f"/collections/pipes/items/{traced}/isolation")
    valves = {f["id"] for f in answer["valves_to_close"]["features"]}
    assert valves
    listed = page.evaluate(
        "[...document.querySelectorAll('#isolation-valves li')].map(li => li.dataset.id)"
    )
    assert set(listed) == valves
    # On the map: fit the trace, then the valves drawn as found are exactly the API's.
    box = shapely.bounds(
        shapely.multipoints(
            [f["geometry"]["coordinates"] for f in answer["valves_to_close"]["features"]]
        )
    ).tolist()
    page.evaluate(
        "(b) => twinMap.fitBounds([[b[0], b[1]], [b[2], b[3]]], {padding: 120, duration: 0, maxZoom: 18})",
        box,
    )
    wait_for_map(page)
    lit = page.evaluate(
        """() => [...new Set(twinMap.queryRenderedFeatures({layers: ['valves']})
            .filter(f => f.state && f.state.hit).map(f => f.id))]"""
    )
    assert set(lit) == valves
    shot(page, "isolation-1440x900")
    assert problems == []


def test_a_sewer_is_traced_up_and_downstream(fresh, layers):
    page, server, problems = fresh
    pipes = layers["pipes"]
    mid = _trace_tool_on(page, layers, "sewer", 1 / 2, 19)
    click_map(page, mid.x, mid.y)
    page.locator("#tool-results").wait_for(state="visible")
    traced = page.evaluate("twin.lastAnswer")
    start = traced["downstream"]["start"]["id"]
    assert pipes.attrs["network"].iloc[pipes.row(start)] == "sewer"
    for direction in ("downstream", "upstream"):
        answer = api(server, f"/collections/pipes/items/{start}/{direction}")
        ids = [f["id"] for f in answer["pipes"]["features"]]
        assert [f["id"] for f in traced[direction]["pipes"]["features"]] == ids
        lit = page.evaluate(
            """(ids) => ids.every(id => twinMap.getFeatureState(
                {source: 'twin', sourceLayer: 'pipes', id}).hit === true)""",
            ids,
        )
        assert lit, direction
    assert problems == []


def test_grid_cells_shaded_by_a_statistic(fresh):
    page, server, problems = fresh
    page.evaluate("twinMap.jumpTo({center: [114.32, 30.35], zoom: 13.5})")
    page.locator("#toolbar button[data-tool='stats']").click()
    page.locator("#tool-results").wait_for(state="visible")
    answer = api(
        server, "/query/stats", level="community", collections="lights", filter="status = 'fault'"
    )
    states = page.evaluate(
        """(ids) => ids.map(id => twinMap.getFeatureState(
            {source: 'twin', sourceLayer: 'grids', id}).shade)""",
        [f["id"] for f in answer["features"]],
    )
    counts = [f["properties"]["lights_count"] for f in answer["features"]]
    assert states == pytest.approx([c / max(counts) for c in counts])
    wait_for_map(page)
    shot(page, "statistics-1440x900")
    assert problems == []


# -- live -----------------------------------------------------------------------------------------


def test_a_fault_reading_changes_the_lamps_symbol_without_a_reload(fresh, layers):
    page, server, problems = fresh
    lights = layers["lights"]
    status = lights.attrs["status"].to_numpy(dtype=object)
    row = int(np.flatnonzero(status == "on")[17])
    fid = str(lights.ids[row])
    lamp = lights.geometry[row]
    go(page, lamp.x, lamp.y, 18)
    page.wait_for_function("document.getElementById('live').dataset.live === 'on'")
    marks = "twinMap.queryRenderedFeatures({layers: ['lights-fault']}).map(f => f.id)"
    assert fid not in page.evaluate(marks)
    clip = dict(zip(("x", "y"), pixel(page, lamp.x, lamp.y), strict=True))
    area = {"x": clip["x"] - 20, "y": clip["y"] - 20, "width": 40, "height": 40}
    before = Image.open(io.BytesIO(page.screenshot(clip=area))).convert("RGB")
    reloads = page.evaluate("performance.getEntriesByType('navigation').length")
    fetched: list[str] = []
    page.on("request", lambda req: fetched.append(req.url) if "/tiles/" in req.url else None)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    reading = {"collection": "lights", "id": fid, "time": now, "property": "status"}
    started = time.monotonic()
    key = writer(server)
    r = httpx.post(
        f"{server.url}/twin/observations", json=[{**reading, "value": "fault"}], headers=key
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    page.wait_for_function(f"{marks}.includes({json.dumps(fid)})", timeout=WAIT_MS)
    delay = time.monotonic() - started
    after = Image.open(io.BytesIO(page.screenshot(clip=area))).convert("RGB")
    changed = int((np.asarray(ImageChops.difference(before, after)).sum(axis=2) > 60).sum())
    assert changed > 20, changed
    assert page.evaluate("performance.getEntriesByType('navigation').length") == reloads
    # Only tiles holding the lamp were fetched again (at the zooms about the view's).
    page.wait_for_timeout(1600)  # and the second look, once the server has drawn them anew
    deepest = page.evaluate("twinMap.getSource('twin').maxzoom")
    assert fetched
    for tile_url in fetched:
        z, y, x = map(int, tile_url.split("/WebMercatorQuad/")[1].split("?")[0].split("/"))
        n = 2**z
        west, east = x / n * 360 - 180, (x + 1) / n * 360 - 180
        north = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * y / n))))
        south = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * (y + 1) / n))))
        assert west <= lamp.x <= east and south <= lamp.y <= north, tile_url
        assert min(17, deepest) <= z <= min(19, deepest)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / "fault-delay.txt").write_text(f"{delay:.3f} s from POST to the fault mark\n")
    shot(page, "fault-lamp-1440x900")
    # And back on: the mark goes.
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat(timespec="seconds")
    httpx.post(
        f"{server.url}/twin/observations",
        json=[{**reading, "time": later, "value": "on"}],
        headers=key,
    )
    page.wait_for_function(f"!{marks}.includes({json.dumps(fid)})", timeout=WAIT_MS)
    assert problems == []


def writer(server: LiveServer) -> dict[str, str]:
    """An engineer's key of the served store (readings need one)."""
    _, secret = server.server.config.app.state.keys.add(f"web-{time.monotonic_ns()}", "engineer")
    return {"Authorization": f"Bearer {secret}"}


def test_the_time_slider_shows_the_twin_as_recorded_before(fresh, layers):
    page, server, problems = fresh
    lights = layers["lights"]
    status = lights.attrs["status"].to_numpy(dtype=object)
    row = int(np.flatnonzero(status == "on")[40])
    fid, lamp = str(lights.ids[row]), lights.geometry[row]
    go(page, lamp.x, lamp.y, 18)
    before = dt.datetime.now(dt.UTC)
    time.sleep(1.1)  # what is recorded from now on is after `before`
    reading = {"collection": "lights", "id": fid, "property": "status"}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    key = writer(server)
    r = httpx.post(
        f"{server.url}/twin/observations",
        json=[{**reading, "time": now, "value": "fault"}],
        headers=key,
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    marks = "twinMap.queryRenderedFeatures({layers: ['lights-fault']}).map(f => f.id)"
    page.wait_for_function(f"{marks}.includes({json.dumps(fid)})", timeout=WAIT_MS)
    stamp = before.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    page.evaluate(f"twin.setAsOf({json.dumps(stamp)})")
    page.wait_for_function(f"!{marks}.includes({json.dumps(fid)})", timeout=WAIT_MS)
    wait_for_map(page)
    # What the map draws then is what the API answers as of then.
    was = api(server, f"/collections/lights/items/{fid}", asof=stamp)["properties"]["status"]
    assert was == "on"
    assert "asof=" in page.url and page.locator("#asof").input_value()
    assert page.locator("#asof-badge").is_visible()
    shot(page, "as-of-1440x900")
    page.locator("#asof-badge").click()  # back to now
    assert page.locator("#asof-badge").is_hidden()
    page.wait_for_function(f"{marks}.includes({json.dumps(fid)})", timeout=WAIT_MS)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat(timespec="seconds")
    httpx.post(
        f"{server.url}/twin/observations",
        json=[{**reading, "time": later, "value": "on"}],
        headers=key,
    )
    page.wait_for_function(f"!{marks}.includes({json.dumps(fid)})", timeout=WAIT_MS)
    assert problems == []


def test_the_attribute_table_of_what_is_in_view(fresh, layers):
    page, server, problems = fresh
    lights = layers["lights"]
    c = lights.geometry[500]
    go(page, c.x, c.y, 17)
    page.locator("#toolbar button[data-tool='table']").click()
    page.locator("#table-layer").select_option("lights")
    page.wait_for_function(
        "document.querySelectorAll('#attribute-table tr[data-id]').length > 0 && "
        "twin.lastAnswer.features.every(f => f.id.includes('lights'))",
        timeout=WAIT_MS,
    )
    view = page.evaluate(
        "(() => { const b = twinMap.getBounds(); return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]; })()"
    )
    bbox = ",".join(f"{v:.6f}" for v in view)
    expected = api(server, "/collections/lights/items", bbox=bbox, limit=1000)["features"]
    shown = page.evaluate(
        "[...document.querySelectorAll('#attribute-table tr[data-id]')].map(r => r.dataset.id)"
    )
    assert shown == [f["id"] for f in expected] and shown
    # Sorted by a column (twice: descending), and the CSV is the table.
    page.locator("#attribute-table button[data-column='wattage_w']").click()
    page.locator("#attribute-table button[data-column='wattage_w']").click()
    shown = page.evaluate(
        "[...document.querySelectorAll('#attribute-table tr[data-id]')].map(r => r.dataset.id)"
    )
    by_id = {f["id"]: f for f in expected}
    watts = [by_id[i]["properties"]["wattage_w"] for i in shown]
    assert watts == sorted(watts, reverse=True)
    rows = list(csv.DictReader(io.StringIO(page.evaluate("twin.lastTableCsv"))))
    assert [r["id"] for r in rows] == shown
    assert [float(r["wattage_w"]) for r in rows] == watts
    shot(page, "attribute-table-1440x900")
    assert problems == []


# -- the page as a whole --------------------------------------------------------------------------


def test_the_url_keeps_the_view_layers_and_selection(browser, fresh, layers):
    page, server, problems = fresh
    parks = layers["parks"]
    fid = str(parks.ids[3])
    c = shapely.point_on_surface(parks.geometry[3])
    go(page, c.x, c.y, 16.5)
    page.locator("#panel input[data-collection='lights']").uncheck()
    page.evaluate(f"twin.inspector.open('parks', {json.dumps(fid)})")
    page.locator("#inspect-table").wait_for(state="visible")
    page.wait_for_timeout(800)  # MapLibre writes the view into the URL after moving
    shared = page.url
    other = browser.new_page(viewport={"width": 1024, "height": 768}, **PAGE)
    seen = watch(other, server.url)
    other.goto(shared)
    wait_for_map(other)
    other.wait_for_function("window.twin && twin.ready", timeout=WAIT_MS)
    other.locator("#inspect-table").wait_for(state="visible")
    centre = other.evaluate("twinMap.getCenter().toArray()")
    assert centre == pytest.approx([c.x, c.y], abs=1e-4)
    assert other.evaluate("twinMap.getZoom()") == pytest.approx(16.5, abs=0.01)
    assert not other.locator("#panel input[data-collection='lights']").is_checked()
    assert "lights" not in rendered_counts(other)
    assert fid in other.locator("#inspect").inner_text()
    shot(other, "shared-link-1024x768")
    other.close()
    assert seen == [] and problems == []


def test_chinese_and_english_interface(fresh):
    page, _, problems = fresh
    summary = page.locator("#panel details[data-group='networks'] summary")
    english = summary.text_content()
    page.locator("#lang").click()
    chinese = page.locator("#panel details[data-group='networks'] summary").text_content()
    assert english == "Underground networks" and chinese == "地下管网"
    assert page.locator("#toolbar button[data-tool='dig']").inner_text() == "开挖检查"
    assert "lang=zh" in page.url
    shot(page, "chinese-1440x900")
    page.locator("#lang").click()
    assert page.locator("#toolbar button[data-tool='dig']").inner_text() == "Dig check"
    assert problems == []


def test_small_screens_and_the_favicon(browser, server):
    page = browser.new_page(viewport={"width": 1024, "height": 768}, **PAGE)
    problems = watch(page, server.url)
    page.goto(server.url + "/web/")
    wait_for_map(page)
    page.wait_for_function("window.twin && twin.ready", timeout=WAIT_MS)
    icon = page.evaluate("document.querySelector('link[rel=icon]').href")
    assert httpx.get(icon).status_code == 200
    shot(page, "overview-1024x768")
    page.locator("#collapse").click()
    assert page.locator("#panel").is_hidden()
    # The map takes the panel's room (MapLibre resizes on its next frame).
    page.wait_for_function("twinMap.getCanvas().getBoundingClientRect().width > 1000")
    width = page.evaluate("twinMap.getCanvas().getBoundingClientRect().width")
    assert width == pytest.approx(1024, abs=2)
    shot(page, "panel-collapsed-1024x768")
    # Keyboard: the search box and the tools are reached with Tab.
    page.keyboard.press("Tab")
    reached = {page.evaluate("document.activeElement.id || document.activeElement.dataset.tool")}
    for _ in range(6):
        page.keyboard.press("Tab")
        reached.add(
            page.evaluate("document.activeElement.id || document.activeElement.dataset.tool")
        )
    assert "search" in reached and "measure" in reached
    page.close()
    assert problems == []
