"""Everything a query needs is made before the server says it is healthy: the first query of
each kind after start-up makes nothing (no derived layer data, network, grid statistics, raster
opening or PROJ database search), in request threads that never ran a query before."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pyproj.transformer
import pytest
import rasterio
import shapely
from fastapi.testclient import TestClient

import twin.network
import twin.stats
from layers.layer import Layer
from layers.schemas import GRID_LEVELS
from tests.twin.query_fixtures import (  # noqa: F401  (fixtures)
    demo_layer,
    demo_store_fixture,
    query_app,
)
from tests.twin.serve_fixtures import write_key


def _key_name(key: Hashable) -> str:
    return getattr(key, "__name__", None) or repr(key)[:60]


@pytest.fixture(name="made")
def made_fixture(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Counter[str]]:
    """Counts of everything made on demand, from the moment it is asked for."""
    made: Counter[str] = Counter()

    def install() -> Counter[str]:
        derived = Layer.derived

        def counting(self: Layer, key: Hashable, make: Callable[[], Any]) -> Any:
            def counted() -> Any:
                made[f"{self.name} derived {_key_name(key)}"] += 1
                return make()

            return derived(self, key, counted)

        searched = pyproj.transformer.TransformerFromCRS.__call__

        def search(self: Any) -> Any:
            made[f"PROJ search {self.crs_from!r} -> {self.crs_to!r}"[:120]] += 1
            return searched(self)

        def wrap(module: Any, name: str) -> None:
            real = getattr(module, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                made[f"{module.__name__}.{name}"] += 1
                return real(*args, **kwargs)

            monkeypatch.setattr(module, name, call)

        monkeypatch.setattr(Layer, "derived", counting)
        monkeypatch.setattr(pyproj.transformer.TransformerFromCRS, "__call__", search)
        wrap(twin.network, "build")
        wrap(twin.stats, "layer_stats")
        wrap(rasterio, "open")
        return made

    return install


def test_first_queries_after_start_up_make_nothing(demo_store: Path, made: Any) -> None:
    pipes = demo_layer(demo_store, "pipes")
    networks = pipes.attrs["network"].to_numpy()
    water = pipes.ids[np.flatnonzero(networks == "water")[5]]
    sewer = pipes.ids[np.flatnonzero(networks == "sewer")[5]]
    mid = shapely.line_interpolate_point(
        pipes.geometry[np.flatnonzero(pipes.ids == water)[0]], 0.5, normalized=True
    )
    with TestClient(
        query_app(demo_store, scope="restricted"), headers=write_key(demo_store)
    ) as client:
        assert client.get("/healthz").status_code == 200
        counts = made()
        point = {"lon": mid.x, "lat": mid.y}
        answers = [
            client.get("/query/at", params=point),
            client.get("/query/near", params={**point, "radius": 150}),
            client.post(
                "/query/intersects",
                json={
                    "geometry": {"type": "Point", "coordinates": [mid.x, mid.y]},
                    "buffer_m": 20,
                    "dig_depth_m": 2,
                },
            ),
            client.get(
                "/query/buffer", params={"collection": "pipes", "id": water, "distance": 30}
            ),
            client.get(f"/collections/pipes/items/{water}/isolation"),
            client.get(f"/collections/pipes/items/{sewer}/downstream"),
            client.get(f"/collections/pipes/items/{sewer}/upstream"),
            *(client.get("/query/stats", params={"level": lv}) for lv in GRID_LEVELS),
        ]
        for r in answers:
            assert r.status_code == 200, (r.request.url, r.text)
        # The answers are real: the at point lies on the water main, the dig check meets it.
        at = answers[0].json()
        assert water in {f["id"] for f in at["layers"]["pipes"]["features"]}
        assert at["ground_elevation_m"] is not None
        dig = answers[2].json()
        assert water in {f["id"] for f in dig["features"] if f["collection"] == "pipes"}
        assert answers[4].json()["summary"]["pipes"] >= 1
        assert dict(counts) == {}


def test_the_count_sees_what_is_made_on_first_use(demo_store: Path, made: Any) -> None:
    """The same watch over an app whose layers were not warmed sees the first isolation build
    its network (so the test above can fail)."""
    from layers.catalog import Catalog
    from layers.gpkg import GeoPackageStore
    from twin.routes.queries import _whole_network
    from twin.settings import QuerySettings

    catalog = Catalog(GeoPackageStore(demo_store, create=False))
    counts = made()
    _whole_network(catalog, QuerySettings(_env_file=None))  # type: ignore[call-arg]
    assert counts["twin.network.build"] == 1
    assert any(k.startswith("pipes derived") for k in counts)


def test_first_queries_after_a_change_make_nothing(
    demo_store: Path, made: Any, tmp_path: Path
) -> None:
    """What a change makes stale (a lamp moved: its layer's cell statistics) is made again
    when the change is applied, before queries ask."""
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    lights = demo_layer(store, "lights")
    fid, lamp = lights.ids[3], lights.geometry[3]
    moved = [lamp.x + 0.0003, lamp.y]
    with TestClient(query_app(store, scope="restricted"), headers=write_key(store)) as client:
        r = client.patch(
            f"/collections/lights/items/{fid}",
            json={"geometry": {"type": "Point", "coordinates": moved}},
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while "twin_changes_applied_total 1.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the edit was never applied"
            time.sleep(0.02)
        counts = made()
        for level in GRID_LEVELS:
            r = client.get("/query/stats", params={"level": level, "collections": "lights"})
            assert r.status_code == 200
        r = client.get("/query/at", params={"lon": moved[0], "lat": moved[1]})
        assert fid in {f["id"] for f in r.json()["layers"]["lights"]["features"]}
        assert dict(counts) == {}
