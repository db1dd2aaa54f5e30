"""The web map as each caller sees it (issue 12), in a real browser (Debian Chromium driven by
Playwright) against a real server over a store holding public, internal and restricted layers
and a policy hiding some fields.

Opened anonymously, and with a viewer and an admin key entered in its key form as a user
would, the layer panel lists exactly the collections the server's `/collections` lists for the
same key, and the inspect card exactly the fields the server's item has for it (both asked with
httpx, apart from the browser); the key goes with every request the map makes (style,
TileJSON, tiles, items, the event stream, which brings each caller only the changes it may
see) and never into a URL or localStorage; a key the server refuses, when entered or later
(revoked), is said so and the map falls back to the public view."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import shapely
from typer.testing import CliRunner

from layers.schemas import custom_schema
from tests.conftest import needs
from twin.app import web_map_ready
from twin.cli import app as cli
from twin.settings import ServerSettings

from .serve_fixtures import LiveServer, app_for, fill_store, make_layer, sites_layer, wuhan_pipes
from .test_web_map import (
    ARTEFACTS,
    CHROMIUM,
    browser_fixture,  # noqa: F401  (fixture)
)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("web-map")]

WAIT_S = 60  # a guard against a hang, not a speed test

INTERNAL = "survey_marks"
RESTRICTED = "gas_stations"
PUBLIC = {"pipes", "sites"}
BAD_KEY = "twin_this-key-was-never-made"
VIEW = "15/30.503/114.313"
"""The map's view (zoom/lat/lon): every layer's features in it, at a zoom that draws them."""


def wait_until(page, expression: str) -> None:
    """Wait until `expression` is true in `page`, polled from here: the map's content security
    policy forbids `eval`, which Playwright's `wait_for_function` runs in the page."""
    deadline = time.monotonic() + WAIT_S
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still not true after {WAIT_S} s: {expression}"
        page.wait_for_timeout(100)


def point_layer(name: str, classification: str, points: list[tuple[float, float]]):
    """A custom point layer of `classification` at `points` (lon/lat), ids `{name}-{i}`."""
    schema = custom_schema(
        {
            "name": name,
            "title": name.replace("_", " ").capitalize(),
            "geometry": "point",
            "classification": classification,
            "fields": {"code": "string"},
        }
    )
    return make_layer(
        schema,
        shapely.points(points),
        [f"{name}-{i}" for i in range(len(points))],
        code=[f"{name[:3].upper()}{i}" for i in range(len(points))],
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Public pipes and sites, internal survey marks and restricted gas stations, all in the
    same few streets of Wuhan (so one view shows them all)."""
    marks = [(114.302 + 0.004 * i, 30.502 + 0.002 * (i % 3)) for i in range(6)]
    stations = [(114.312 + 0.006 * i, 30.503) for i in range(3)]
    layers = [
        wuhan_pipes(120),
        sites_layer(),
        point_layer(INTERNAL, "internal", marks),
        point_layer(RESTRICTED, "restricted", stations),
    ]
    return fill_store(tmp_path_factory.mktemp("webkeys") / "store", layers)


def make_key(store: Path, name: str, role: str) -> str:
    """A new key made with the CLI, as an administrator would (`twin keys add`): its secret,
    printed once on the last line."""
    result = CliRunner().invoke(cli, ["keys", "add", name, "--role", role, "--store", str(store)])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1].strip()


@pytest.fixture(scope="module")
def keys(store: Path) -> dict[str, str]:
    """A viewer's and an admin's key, by role."""
    return {role: make_key(store, f"web-{role}", role) for role in ("viewer", "admin")}


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The policy: of the public pipes, the material is internal and the year restricted."""
    path = tmp_path_factory.mktemp("webkeys-policy") / "policy.toml"
    path.write_text(
        '[layers.pipes.fields]\nmaterial = "internal"\ninstall_year = "restricted"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def server(store: Path, policy: Path) -> Iterator[LiveServer]:
    needs(Path(CHROMIUM).exists(), "Debian chromium")
    needs(
        web_map_ready(ServerSettings(_env_file=None)),  # type: ignore[call-arg]
        "the web map's npm packages (`npm ci` in web/)",
    )
    with LiveServer(app_for(store, policy=policy)) as live:
        yield live


class Visit:
    """One browser tab on the map (its own context: its own session storage), with what it
    asked the server for and what went wrong."""

    def __init__(self, browser, server: LiveServer) -> None:
        self.server = server
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.requests: list = []
        self.problems: list = []
        self.refused: list = []  # 401 answers, expected when a key is refused
        page = self.page
        page.on("pageerror", lambda e: self.problems.append(("pageerror", str(e))))
        page.on("console", self._console)
        page.on("request", lambda r: self.requests.append(r))
        page.on("response", self._response)
        page.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith(server.url)
                else (self.problems.append(("external", route.request.url)), route.abort())
            ),
        )

    def _console(self, message) -> None:
        if message.type != "error":
            return
        # Chromium tells every 4xx answer on the console; a 401 is counted as such.
        if "status of 401" in message.text:
            self.refused.append(("console", message.text))
        else:
            self.problems.append(("console", message.text))

    def _response(self, response) -> None:
        if response.status == 401:
            self.refused.append(("http", response.url))
        elif response.status >= 400:
            self.problems.append(("http", response.status, response.url))

    def open(self) -> Visit:
        self.page.goto(f"{self.server.url}/web/#view={VIEW}")
        self.settle()
        return self

    def settle(self) -> None:
        wait_until(self.page, "window.twin && twin.ready")
        wait_until(self.page, "window.twinMap && twinMap.loaded() && twinMap.areTilesLoaded()")
        self.page.wait_for_timeout(300)

    def enter_key(self, key: str, *, accepted: bool = True) -> None:
        """Type `key` into the key form and apply it, as a user would."""
        page = self.page
        rebuilds = page.evaluate("twin.rebuilds")
        if page.locator("#key-form").is_hidden():
            page.locator("#key-button").click()
        page.locator("#key-input").fill(key)
        page.locator("#key-apply").click()
        if accepted:
            wait_until(page, f"twin.rebuilds > {rebuilds}")
        else:
            page.locator("#key-message[data-t='keyRejected']").wait_for(timeout=WAIT_S * 1000)
        self.settle()

    def sign_out(self) -> None:
        page = self.page
        rebuilds = page.evaluate("twin.rebuilds")
        page.locator("#key-button").click()
        page.locator("#key-forget").click()
        wait_until(page, f"twin.rebuilds > {rebuilds}")
        self.settle()

    def panel(self) -> set[str]:
        """The collections the layer panel lists."""
        return set(
            self.page.evaluate(
                "[...document.querySelectorAll('#panel input[data-collection]')]"
                ".map(b => b.dataset.collection)"
            )
        )

    def drawn(self) -> set[str]:
        """The collections of the features the map draws now."""
        return set(
            self.page.evaluate(
                "[...new Set(twinMap.queryRenderedFeatures()"
                ".filter(f => f.source === 'twin').map(f => f.sourceLayer))]"
            )
        )

    def shot(self, name: str) -> None:
        """A screenshot under the test artefacts, to be looked at as a planner would."""
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTEFACTS / f"{name}.png"))

    def stored_key(self) -> str | None:
        return self.page.evaluate("sessionStorage.getItem('twin-key')")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, server: LiveServer) -> Iterator[Visit]:
    v = Visit(browser, server)
    yield v
    v.close()


def listed(server: LiveServer, key: str | None = None) -> set[str]:
    """The collections the server lists for `key` (None: anonymous), asked apart from the map."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(server.url + "/collections", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return {c["id"] for c in r.json()["collections"]}


def draws(collection: str, fid: str) -> str:
    """A page expression: whether the map draws feature `fid` of `collection`."""
    return (
        "twinMap.queryRenderedFeatures()"
        f".some(f => f.sourceLayer === '{collection}' && f.id === '{fid}')"
    )


def authorization(request) -> str | None:
    """The `Authorization` header `request` was sent with (None: none)."""
    return request.headers.get("authorization")


def test_opened_anonymously_the_map_lists_the_public_layers(visit: Visit, server: LiveServer):
    visit.open()
    assert visit.panel() == listed(server) == PUBLIC
    assert visit.drawn() <= PUBLIC and "pipes" in visit.drawn()
    assert visit.page.locator("#key-state").inner_text() == "Public"
    assert visit.stored_key() is None
    visit.shot("keys-anonymous-1280x800")
    # No key, no header: not even an empty one.
    asked = [r for r in visit.requests if r.url.startswith(server.url)]
    assert any("/tiles/" in r.url for r in asked)
    assert all(authorization(r) is None for r in asked)
    assert visit.problems == [] and visit.refused == []


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_a_key_entered_in_the_form_shows_exactly_what_it_may_see(
    visit: Visit, server: LiveServer, keys: dict[str, str], role: str
):
    key = keys[role]
    expected = listed(server, key)
    assert INTERNAL in expected  # the store and the server's policy, as this test takes them
    assert (RESTRICTED in expected) is (role == "admin")
    assert listed(server) == PUBLIC
    page = visit.page
    visit.open()
    visit.requests.clear()
    visit.enter_key(key)

    assert visit.panel() == expected
    assert page.locator("#key-state").inner_text() == "Signed in"
    assert page.locator("#key-form").is_hidden()
    # What the map draws comes from tiles asked with the key.
    drawn = visit.drawn()
    assert drawn <= expected
    assert INTERNAL in drawn
    assert (RESTRICTED in drawn) is (role == "admin")
    # Every request to the server from now on carries the key: style, TileJSON, tiles, the
    # collections and the event stream (read with fetch: EventSource cannot send it).
    asked = [r for r in visit.requests if r.url.startswith(server.url)]
    paths = [httpx.URL(r.url).path for r in asked]
    assert "/style.json" in paths and "/collections" in paths and "/events" in paths
    assert any(p.endswith("/tilejson.json") for p in paths)
    assert any("/tiles/WebMercatorQuad/" in p and p.count("/") >= 5 for p in paths)
    for request in asked:
        assert authorization(request) == f"Bearer {key}", request.url
    # The key is kept in this tab's session only: never in a URL or in localStorage.
    assert visit.stored_key() == key
    assert key not in page.url and all(key not in r.url for r in visit.requests)
    assert key not in page.evaluate("JSON.stringify(Object.entries(localStorage))")
    # The inspect card shows a feature of a layer the key may see, with its fields.
    name = RESTRICTED if role == "admin" else INTERNAL
    page.evaluate(f"twin.inspector.open('{name}', '{name}-1')")
    page.locator("#inspect-table").wait_for(state="visible")
    assert f"{name[:3].upper()}1" in page.locator("#inspect-table").inner_text()
    visit.shot(f"keys-{role}-1280x800")

    # Signed out, the map is the public one again, asked without the key.
    page.evaluate("twin.inspector.clear()")
    visit.requests.clear()
    visit.sign_out()
    assert visit.panel() == PUBLIC
    assert visit.drawn() <= PUBLIC
    assert visit.stored_key() is None
    assert page.locator("#key-state").inner_text() == "Public"
    asked = [r for r in visit.requests if r.url.startswith(server.url)]
    assert any("/tiles/" in r.url for r in asked)
    assert all(authorization(r) is None for r in asked)
    assert visit.problems == [] and visit.refused == []


@pytest.mark.parametrize("role", [None, "viewer", "admin"])
def test_the_inspect_card_lists_exactly_the_fields_the_key_may_see(
    visit: Visit, server: LiveServer, keys: dict[str, str], role: str | None
):
    key = keys[role] if role else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{server.url}/collections/pipes/items/wh-0000", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    expected = set(r.json()["properties"])
    assert ("material" in expected) is (role is not None)
    assert ("install_year" in expected) is (role == "admin")
    assert "network" in expected
    visit.open()
    if key:
        visit.enter_key(key)
    page = visit.page
    page.evaluate("twin.inspector.open('pipes', 'wh-0000')")
    page.locator("#inspect-table").wait_for(state="visible")
    shown = page.evaluate(
        "[...document.querySelectorAll('#inspect-table th[data-field]')]"
        ".map(th => th.dataset.field)"
    )
    assert set(shown) == expected
    assert visit.problems == [] and visit.refused == []


def test_a_key_the_server_refuses_is_said_so_and_the_map_falls_back_to_public(
    visit: Visit, server: LiveServer, keys: dict[str, str]
):
    r = httpx.get(server.url + "/collections", headers={"Authorization": f"Bearer {BAD_KEY}"})
    assert r.status_code == 401
    page = visit.page
    visit.open()
    visit.enter_key(keys["admin"])
    assert RESTRICTED in visit.panel()
    rebuilds = page.evaluate("twin.rebuilds")

    visit.enter_key(BAD_KEY, accepted=False)
    wait_until(page, f"twin.rebuilds > {rebuilds} && twin.ready")
    visit.settle()
    message = page.locator("#key-message")
    assert message.is_visible() and "Key not accepted" in message.inner_text()
    assert page.locator("#key-form").is_visible()  # asked again
    assert visit.stored_key() is None
    assert page.locator("#key-state").inner_text() == "Public"
    assert visit.panel() == PUBLIC
    assert visit.drawn() <= PUBLIC
    visit.shot("keys-not-accepted-1280x800")
    assert visit.refused and visit.problems == []


def test_a_key_revoked_while_the_map_is_open_falls_back_to_public(
    visit: Visit, server: LiveServer, store: Path
):
    key = make_key(store, "web-soon-revoked", "viewer")
    page = visit.page
    visit.open()
    visit.enter_key(key)
    assert INTERNAL in visit.panel()
    rebuilds = page.evaluate("twin.rebuilds")
    result = CliRunner().invoke(cli, ["keys", "revoke", "web-soon-revoked", "--store", str(store)])
    assert result.exit_code == 0, result.output
    # The next thing the map asks for (here: tiles at a deeper zoom) is refused.
    page.evaluate("twinMap.jumpTo({zoom: twinMap.getZoom() + 1.5})")
    wait_until(page, f"twin.rebuilds > {rebuilds} && twin.ready")
    visit.settle()
    assert "Key not accepted" in page.locator("#key-message").inner_text()
    assert visit.stored_key() is None
    assert visit.panel() == PUBLIC
    assert visit.refused and visit.problems == []


def test_the_live_stream_brings_each_caller_only_the_changes_it_may_see(
    browser, server: LiveServer, keys: dict[str, str]
):
    admin, anonymous = Visit(browser, server), Visit(browser, server)
    try:
        anonymous.open()
        admin.open()
        admin.enter_key(keys["admin"])
        for v in (admin, anonymous):
            wait_until(v.page, "document.getElementById('live').dataset.live === 'on'")
        applied = {v: v.page.evaluate("twin.liveApplied || 0") for v in (admin, anonymous)}
        headers = {"Authorization": f"Bearer {keys['admin']}"}

        def add(collection: str, fid: str, geometry: dict, **properties) -> None:
            feature = {"type": "Feature", "id": fid, "geometry": geometry, "properties": properties}
            r = httpx.post(
                f"{server.url}/collections/{collection}/items", json=feature, headers=headers
            )
            assert r.status_code == 201, r.text

        # A new restricted station: the admin's map draws it without a reload.
        station = {"type": "Point", "coordinates": [114.309, 30.5045]}
        add(RESTRICTED, "new-station", station, code="N1")
        wait_until(admin.page, draws(RESTRICTED, "new-station"))
        # Then a public site: the anonymous map hears of it, and of nothing before it.
        site = shapely.geometry.mapping(shapely.box(114.3105, 30.5005, 114.3115, 30.5012))
        add("sites", "new-site", site, permit_id="P9")
        for v in (anonymous, admin):
            wait_until(v.page, draws("sites", "new-site"))
        assert anonymous.page.evaluate("twin.liveApplied") == applied[anonymous] + 1
        assert admin.page.evaluate("twin.liveApplied") == applied[admin] + 2
        assert not anonymous.page.evaluate(draws(RESTRICTED, "new-station"))
        events = [r for r in admin.requests if httpx.URL(r.url).path == "/events"]
        assert events and authorization(events[-1]) == f"Bearer {keys['admin']}"
        assert all(authorization(r) is None for r in anonymous.requests)
        for v in (admin, anonymous):
            assert v.problems == [] and v.refused == []
    finally:
        admin.close()
        anonymous.close()
