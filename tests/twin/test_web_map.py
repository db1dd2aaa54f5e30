"""The planners' web map in a real browser (Debian Chromium driven by Playwright): the server's
style and tiles render every layer of the demo district, offline; the layer panel hides a
layer; clicking a park shows that park."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely
from typer.testing import CliRunner

from layers.gpkg import GeoPackageStore
from layers.models import Access
from tests.conftest import needs
from twin.app import web_map_ready
from twin.cli import app as cli
from twin.settings import ServerSettings

from .serve_fixtures import LiveServer, app_for

pytestmark = pytest.mark.browser

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


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("webmap") / "store"
    result = CliRunner().invoke(cli, ["demo", "--store", str(root), "--no-serve"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def browser_page(demo_store: Path) -> Iterator[tuple[object, LiveServer, list]]:
    needs(Path(CHROMIUM).exists(), "Debian chromium")
    needs(
        web_map_ready(ServerSettings(_env_file=None)),  # type: ignore[call-arg]
        "the web map's npm packages (`npm ci` in web/)",
    )
    from playwright.sync_api import sync_playwright

    with LiveServer(app_for(demo_store)) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        problems = watch(page, server.url)
        page.goto(server.url + "/")
        wait_for_map(page)
        yield page, server, problems
        browser.close()


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
        "window.twinMap && twinMap.loaded() && twinMap.areTilesLoaded()", timeout=60_000
    )
    page.wait_for_timeout(500)


def rendered_counts(page) -> dict[str, int]:
    return page.evaluate(
        """() => {
            const c = {};
            for (const f of twinMap.queryRenderedFeatures()) {
                if (f.source !== 'twin') continue;
                c[f.sourceLayer] = (c[f.sourceLayer] || 0) + 1;
            }
            return c;
        }"""
    )


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
    assert problems == []


def test_layer_panel_hides_and_shows_a_layer(browser_page):
    page, _, problems = browser_page
    box = page.locator("input[data-collection='pipes']")
    box.uncheck()
    wait_for_map(page)
    assert "pipes" not in rendered_counts(page)
    box.check()
    wait_for_map(page)
    assert rendered_counts(page).get("pipes", 0) > 0
    assert problems == []


def test_clicking_a_park_shows_that_park(browser_page, demo_store):
    page, _, problems = browser_page
    store = GeoPackageStore(demo_store, create=False)
    parks = store.load("parks", Access.PUBLIC)
    sites = store.load("sites", Access.PUBLIC)
    store.close()
    # The park with the largest area not under a construction site: its interior point is
    # well inside, away from the streets and their pipes and lights.
    order = shapely.area(parks.geometry).argsort()[::-1]
    row = next(int(i) for i in order if not sites.query(parks.geometry[i]).size)
    point = shapely.point_on_surface(parks.geometry[row])
    x, y = page.evaluate(
        "([lon, lat]) => { const p = twinMap.project([lon, lat]); return [p.x, p.y]; }",
        [point.x, point.y],
    )
    page.locator("#map canvas").click(position={"x": x, "y": y})
    table = page.locator("#inspect-table")
    table.wait_for(state="visible")
    text = table.inner_text()
    assert "parks" in text
    assert parks.ids[row] in text
    assert str(parks.attrs.loc[row, "name"]) in text
    assert problems == []
