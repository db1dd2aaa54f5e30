"""/web/ serves the map's own files and MapLibre, never the build's (package.json, lock files,
node_modules) nor anything outside the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import needs
from tests.twin.serve_fixtures import (
    app_for,
    served_store_fixture,  # noqa: F401  (fixture)
)
from twin.app import MAPLIBRE_DIST
from twin.settings import ServerSettings

WEB = ServerSettings(_env_file=None).web_dir  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def client(served_store: Path):
    needs((WEB / MAPLIBRE_DIST / "maplibre-gl.js").is_file(), "the web map's npm packages")
    with TestClient(app_for(served_store)) as c:
        yield c


def test_the_map_and_maplibre_are_served(client):
    for path, file in [
        ("/web/", WEB / "index.html"),
        ("/web/index.html", WEB / "index.html"),
        ("/web/map.js", WEB / "map.js"),
        ("/web/map.css", WEB / "map.css"),
        ("/web/vendor/maplibre-gl/maplibre-gl.js", WEB / MAPLIBRE_DIST / "maplibre-gl.js"),
    ]:
        res = client.get(path)
        assert res.status_code == 200, path
        assert res.content == file.read_bytes(), path


@pytest.mark.parametrize(
    "path",
    [
        "/web/package.json",
        "/web/package-lock.json",
        "/web/node_modules/.package-lock.json",
        "/web/node_modules/maplibre-gl/package.json",
        "/web/node_modules/maplibre-gl/dist/maplibre-gl.js",
        "/web/../pyproject.toml",
        "/web/%2e%2e/pyproject.toml",
        "/web/vendor/maplibre-gl/../package.json",
    ],
)
def test_nothing_else_is(client, path):
    assert (WEB / "package.json").is_file()  # it is there, and still not served
    res = client.get(path)
    assert res.status_code == 404
    assert res.json()["code"] == "NotFound"
