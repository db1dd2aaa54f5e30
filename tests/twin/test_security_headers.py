"""Security headers and CORS (`twin.headers`): the web map and the HTML pages carry a content
security policy allowing no inline script, and run under it in a real browser with no
violation; every answer says nosniff; other sites' pages may use the API as configured."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from layers.settings import StoreSettings
from tests.conftest import needs
from tests.twin.query_fixtures import demo_store_fixture, query_app  # noqa: F401  (fixture)
from tests.twin.serve_fixtures import LiveServer
from twin.app import create_app, web_map_ready
from twin.headers import content_security_policy
from twin.settings import ServerSettings

WEB = ServerSettings(_env_file=None).web_dir  # type: ignore[call-arg]
ITEMS = "/collections/lights/items?f=html&limit=5"


def needs_web_map() -> None:
    needs(
        web_map_ready(ServerSettings(_env_file=None)),  # type: ignore[call-arg]
        "the web map's npm packages (`npm ci` in web/)",
    )


@pytest.fixture(scope="module")
def client(demo_store: Path) -> Iterator[TestClient]:
    with TestClient(query_app(demo_store)) as c:
        yield c


def policy(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: sources}."""
    out = {}
    for part in header.split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


class Scripts(HTMLParser):
    """A page's scripts: the files it loads, the inline ones, inline event handlers."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.files: list[str] = []
        self.inline: list[str] = []
        self.handlers: list[str] = []
        self.data_blocks = 0
        self._in_inline = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.handlers += [v for _, v in attrs if v and v.strip().startswith("javascript:")]
        if tag != "script":
            return
        a = dict(attrs)
        if a.get("type") == "application/json":
            self.data_blocks += 1
        elif a.get("src"):
            self.files.append(a["src"] or "")
        else:
            self._in_inline = True
            self.inline.append("")

    def handle_data(self, data: str) -> None:
        if self._in_inline:
            self.inline[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline = False


# -- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/web/", "/collections?f=html", ITEMS, "/collections/lights?f=html", "/?f=html"]
)
def test_pages_carry_a_policy_allowing_no_inline_script(client: TestClient, path: str) -> None:
    if path.startswith("/web/"):
        needs_web_map()
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = policy(r.headers["content-security-policy"])
    assert csp["script-src"] == ["'self'"]
    assert csp["default-src"] == ["'self'"] and csp["connect-src"] == ["'self'"]
    # MapLibre's workers and its images from blob: URLs; nothing from anywhere else.
    assert csp["worker-src"] == ["'self'", "blob:"] and csp["child-src"] == ["'self'", "blob:"]
    assert csp["img-src"] == ["'self'", "data:", "blob:"]
    assert csp["object-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'self'"]
    assert not any("unsafe" in s for d, v in csp.items() if d != "style-src" for s in v)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "path",
    [
        "/collections",
        "/collections/lights/items?limit=1",
        "/collections/lights/tiles/WebMercatorQuad/0/0/0",
        "/collections/nope",
        "/web/map.js",
    ],
)
def test_every_answer_says_nosniff(client: TestClient, path: str) -> None:
    if path.startswith("/web/"):
        needs_web_map()
    r = client.get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    # The policy is for documents a browser renders, not data.
    assert "content-security-policy" not in r.headers


def test_pages_load_no_inline_script_and_their_scripts_are_the_servers(
    client: TestClient,
) -> None:
    fid = client.get("/collections/lights/items", params={"limit": 1}).json()["features"][0]["id"]
    for path in ("/collections?f=html", ITEMS, f"/collections/lights/items/{fid}?f=html"):
        page = Scripts(client.get(path).text)
        assert page.inline == [] and page.handlers == [], path
        for src in page.files:
            r = client.get(src)
            assert r.status_code == 200 and "javascript" in r.headers["content-type"], src
    # The map of an items page: MapLibre and the page's own script, the data as data blocks.
    page = Scripts(client.get(ITEMS).text)
    if web_map_ready(ServerSettings(_env_file=None)):  # type: ignore[call-arg]
        assert [Path(s).name for s in page.files] == ["maplibre-gl.js", "page.js"]
        assert page.data_blocks == 2


def test_the_web_maps_files_run_no_inline_script_nor_eval() -> None:
    page = Scripts((WEB / "index.html").read_text())
    assert page.inline == [] and page.handlers == []
    assert page.files  # it has scripts, all of them files
    for js in sorted(WEB.glob("*.js")):
        text = js.read_text()
        assert not re.search(r"\beval\s*\(|\bnew\s+Function\s*\(", text), js.name
        assert not re.search(r"\bset(Timeout|Interval)\s*\(\s*[\"'`]", text), js.name
        # Markup the scripts write holds no inline event handler either.
        assert not re.search(r"<[a-z][^>]*\son[a-z]+\s*=", text), js.name


def test_the_policy_names_the_public_url_the_pages_link_to(demo_store: Path) -> None:
    csp = policy(content_security_policy("https://twin.city.gov/api/"))
    assert csp["script-src"] == ["'self'", "https://twin.city.gov"]
    assert csp["connect-src"] == ["'self'", "https://twin.city.gov"]
    app = create_app(
        ServerSettings(_env_file=None, public_url="https://twin.city.gov"),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=demo_store),  # type: ignore[call-arg]
    )
    with TestClient(app) as c:
        got = policy(c.get("/collections?f=html").headers["content-security-policy"])
    assert got["img-src"] == ["'self'", "https://twin.city.gov", "data:", "blob:"]


# -- CORS -------------------------------------------------------------------------------------


def test_other_sites_may_send_keys_edits_and_etags(client: TestClient) -> None:
    origin = "https://elsewhere.example"
    r = client.options(
        "/collections/lights/items/x",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type, if-match",
        },
    )
    assert r.status_code == 200
    allowed = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert allowed >= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
    headers = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert headers >= {"authorization", "content-type", "if-match", "if-none-match"}
    assert "last-event-id" in headers
    # Never with cookies: `*` lets no other site act as the browser's user.
    assert "access-control-allow-credentials" not in r.headers
    got = client.get("/collections/lights/items?limit=1", headers={"Origin": origin})
    assert got.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in got.headers["access-control-expose-headers"].split(",")}
    assert exposed >= {"etag", "location", "retry-after"}


def test_a_deployment_names_the_sites_it_serves(demo_store: Path) -> None:
    app = create_app(
        ServerSettings(_env_file=None, cors_origins=["https://map.city.gov/"]),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=demo_store),  # type: ignore[call-arg]
    )
    with TestClient(app) as c:
        ours = c.get("/collections", headers={"Origin": "https://map.city.gov"})
        other = c.get("/collections", headers={"Origin": "https://elsewhere.example"})
        preflight = c.options(
            "/collections",
            headers={
                "Origin": "https://elsewhere.example",
                "Access-Control-Request-Method": "GET",
            },
        )
    assert ours.headers["access-control-allow-origin"] == "https://map.city.gov"
    assert "access-control-allow-origin" not in other.headers
    assert preflight.status_code == 400


def test_an_origin_that_can_never_match_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme://host"):
        ServerSettings(_env_file=None, cors_origins=["map.city.gov"])  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="scheme://host"):
        ServerSettings(_env_file=None, cors_origins=["https://map.city.gov/app"])  # type: ignore[call-arg]


# -- in a browser -----------------------------------------------------------------------------

WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
"""Counts the page's policy violations (a script the test injects: not bound by the page's
policy)."""


@pytest.fixture(scope="module")
def browser_server(demo_store: Path) -> Iterator[tuple[Any, LiveServer]]:
    from tests.twin.test_web_map import CHROMIUM, CHROMIUM_ARGS

    needs(Path(CHROMIUM).exists(), "Debian chromium")
    needs_web_map()
    from playwright.sync_api import sync_playwright

    with LiveServer(query_app(demo_store)) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser, server
        finally:
            browser.close()


def wait_until(page: Any, expression: str) -> None:
    """Wait until `expression` is true on `page`, asking through DevTools: Playwright's own
    `wait_for_function` runs `eval` in the page, which its policy refuses."""
    from tests.twin.test_web_map import WAIT_MS

    deadline = time.monotonic() + WAIT_MS / 1000  # a guard against a hang, not a speed test
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(100)


def open_page(browser: Any, url: str, *, has_map: bool) -> tuple[Any, list[str]]:
    """`url` opened in a new page until its map (if any) has drawn; the console's messages."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.add_init_script(WATCH_CSP)
    page.goto(url)
    if has_map:
        wait_until(page, "!!(window.twinMap && twinMap.loaded() && twinMap.areTilesLoaded())")
    return page, console


@pytest.mark.browser
@pytest.mark.parametrize(
    ("path", "has_map"),
    [("/collections?f=html", False), (ITEMS, True), ("ITEM", True), ("/web/", True)],
)
def test_pages_run_under_the_policy_in_a_browser(
    browser_server: tuple[Any, LiveServer], client: TestClient, path: str, has_map: bool
) -> None:
    browser, server = browser_server
    if path == "ITEM":
        feature = client.get("/collections/lights/items", params={"limit": 1}).json()
        path = f"/collections/lights/items/{feature['features'][0]['id']}?f=html"
    page, console = open_page(browser, server.url + path, has_map=has_map)
    try:
        assert page.evaluate("window.__csp") == []
        if has_map:
            # The scripts ran (the map drew tiles in MapLibre's blob: workers).
            assert page.evaluate("twinMap.loaded() && twinMap.areTilesLoaded()")
            assert page.locator("canvas").first.is_visible()
        else:
            assert page.locator("table").count() > 0
    finally:
        page.close()
    assert not [m for m in console if "Content Security Policy" in m], console
    assert not [m for m in console if m.startswith(("error", "pageerror"))], console


@pytest.mark.browser
def test_the_browser_enforces_the_policy(
    browser_server: tuple[Any, LiveServer],
) -> None:
    """The check above can fail: an inline script put on a page is refused and reported."""
    browser, server = browser_server
    page, console = open_page(browser, server.url + "/collections?f=html", has_map=False)
    try:
        page.evaluate(
            """() => {
                const s = document.createElement("script");
                s.textContent = "window.inlineRan = true";
                document.body.append(s);
            }"""
        )
        wait_until(page, "window.__csp.length > 0")
        assert page.evaluate("window.inlineRan") is None
        assert page.evaluate("window.__csp")[0].startswith("script-src")
    finally:
        page.close()
    assert any("Content Security Policy" in m for m in console), console
