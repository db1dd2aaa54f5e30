"""The app over a PostGIS store answers as over a GeoPackage store holding the same layers
(items, tiles, near queries), and apps on one PostGIS database follow each other's writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import morecantile
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from layers.gpkg import GeoPackageStore
from layers.layer import Layer
from layers.models import Access
from layers.schemas import LIGHTS
from layers.settings import StoreSettings
from tests.twin.serve_fixtures import NO_LIMITS, make_layer, wuhan_pipes
from twin.app import create_app
from twin.settings import ServerSettings

pytestmark = pytest.mark.postgis

TMS = morecantile.tms.get("WebMercatorQuad")
FOLLOW_WITHIN_S = 1.0


def lights() -> Layer:
    n = 40
    xs = 114.30 + np.arange(n) * 0.0004
    status = np.array(["on", "off", "fault", None], dtype=object)[np.arange(n) % 4]
    return make_layer(
        LIGHTS,
        shapely.points(xs, np.full(n, 30.50)),
        [f"L{i}" for i in range(n)],
        status=status,
        wattage_w=(np.arange(n) % 3 * 20.0 + 40).tolist(),
    )


def fill(store: Any) -> None:
    store.write(wuhan_pipes(), source="wuhan-gen", user="tests", meta={"attribution": "test"})
    store.write(lights(), source="survey", user="tests")


def app(location: Path | str, tmp_path: Path, name: str) -> Any:
    return create_app(
        ServerSettings(  # type: ignore[call-arg]
            _env_file=None, anonymous_access="restricted", keys_file=tmp_path / f"{name}.keys"
        ),
        StoreSettings(  # type: ignore[call-arg]
            _env_file=None, store=location, raster_dir=tmp_path / f"{name}-rasters"
        ),
        limit_settings=NO_LIMITS,
    )


@pytest.fixture
def clients(pg_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """An app over a GeoPackage store and one over PostGIS, the same layers in each."""
    from layers.postgis import PostGISStore

    local = GeoPackageStore(tmp_path / "store")
    fill(local)
    local.close()
    remote = PostGISStore(pg_url, raster_dir=tmp_path / "rasters")
    fill(remote)
    remote.close()
    with (
        TestClient(app(tmp_path / "store", tmp_path, "gpkg")) as a,
        TestClient(app(pg_url, tmp_path, "pg")) as b,
    ):
        yield a, b


def features(client: TestClient, path: str, **params: Any) -> list[dict]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()["features"]


def test_items_tiles_and_near_answer_alike(clients: tuple[TestClient, TestClient]) -> None:
    a, b = clients
    for collection, n in (("pipes", 300), ("lights", 40)):
        mine = features(a, f"/collections/{collection}/items", limit=1000)
        theirs = features(b, f"/collections/{collection}/items", limit=1000)
        assert len(mine) == len(theirs) == n
        assert [f["id"] for f in mine] == [f["id"] for f in theirs]
        assert [f["geometry"] for f in mine] == [f["geometry"] for f in theirs]
        assert [f["properties"] for f in mine] == [f["properties"] for f in theirs]
    one = a.get("/collections/lights/items/L5").json()
    assert one["properties"]["status"] == "off" and one["geometry"]["coordinates"] == [
        114.30 + 5 * 0.0004,
        30.5,
    ]
    assert b.get("/collections/lights/items/L5").json()["properties"] == one["properties"]
    # A tile over the lamps and pipes: the same features, in the same places.
    t = TMS.tile(114.305, 30.50, 15)
    for path in (
        f"/collections/lights/tiles/WebMercatorQuad/15/{t.y}/{t.x}",
        f"/tiles/WebMercatorQuad/15/{t.y}/{t.x}",
    ):
        ra, rb = a.get(path), b.get(path)
        assert ra.status_code == rb.status_code == 200
        da = mapbox_vector_tile.decode(ra.content)
        db = mapbox_vector_tile.decode(rb.content)
        assert da == db and len(da["lights"]["features"]) > 5
    # Near: the same features at the same distances.
    params = {"lon": 114.305, "lat": 30.5, "radius": 300, "limit": 1000}
    near_a = a.get("/query/near", params=params).json()
    near_b = b.get("/query/near", params=params).json()
    assert near_a["features"] and near_a["features"] == near_b["features"]


def test_a_write_through_one_store_is_served_by_another_app(pg_url: str, tmp_path: Path) -> None:
    from layers.postgis import PostGISStore

    writer = PostGISStore(pg_url, raster_dir=tmp_path / "rasters")
    fill(writer)
    with (
        TestClient(app(pg_url, tmp_path, "one")) as one,
        TestClient(app(pg_url, tmp_path, "two")) as two,
    ):
        for c in (one, two):
            assert c.get("/collections/lights/items/L1").json()["properties"]["status"] == "off"
        edited = writer.features("lights", ["L1"], Access.RESTRICTED)
        edited.attrs.loc[0, "status"] = "fault"
        edited.geometry[0] = shapely.Point(114.31, 30.51)
        writer.write(edited, source="api", user="ann", expect={"L1": edited.etag(0)})
        added = make_layer(LIGHTS, [shapely.Point(114.32, 30.52)], ["N1"], status=["on"])
        writer.write(added, source="api", user="ann")
        started = time.monotonic()
        seen: dict[str, Any] = {}
        while time.monotonic() - started < FOLLOW_WITHIN_S * 3:
            seen = {
                name: (
                    c.get("/collections/lights/items/L1").json(),
                    c.get("/collections/lights/items/N1").status_code,
                )
                for name, c in (("one", one), ("two", two))
            }
            if all(
                f["properties"]["status"] == "fault" and code == 200 for f, code in seen.values()
            ):
                break
            time.sleep(0.05)
        took = time.monotonic() - started
        assert took < FOLLOW_WITHIN_S, (took, seen)
        for f, _ in seen.values():
            assert f["geometry"]["coordinates"] == [114.31, 30.51]
    writer.close()
