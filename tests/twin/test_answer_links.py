"""Every feature and grid cell of every query answer names its `collection` and `id`, and
following it to `/collections/{collection}/items/{id}` gives the same feature."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import shapely
from fastapi.testclient import TestClient
from shapely.geometry import shape

from tests.twin.query_fixtures import (  # noqa: F401  (fixtures)
    demo_client_fixture,
    demo_pipes_fixture,
    demo_store_fixture,
)


def _linked(answer: Any, key: str = "") -> Iterator[dict[str, Any]]:
    """Every feature (a GeoJSON Feature, a grid cell, or an object naming a collection and an
    id) anywhere in `answer`."""
    if isinstance(answer, dict):
        if answer.get("type") == "Feature" or key == "cells" or {"collection", "id"} <= set(answer):
            yield answer
            return
        for k, v in answer.items():
            yield from _linked(v, k)
    elif isinstance(answer, list):
        for v in answer:
            yield from _linked(v, key)


def key_of(f: dict[str, Any]) -> str:
    """What kind of linked object `f` is: a GeoJSON feature, a grid cell or a reference."""
    if f.get("type") == "Feature":
        return "feature"
    return "cell" if "level" in f else "reference"


def _answers(client: TestClient, pipes) -> dict[str, dict[str, Any]]:
    networks = pipes.attrs["network"].to_numpy()
    water = pipes.ids[np.flatnonzero(networks == "water")[10]]
    sewer = pipes.ids[np.flatnonzero(networks == "sewer")[10]]
    mid = shapely.line_interpolate_point(pipes.geometry[pipes.row(water)], 0.5, normalized=True)
    near_sewer = shapely.line_interpolate_point(
        pipes.geometry[pipes.row(sewer)], 0.5, normalized=True
    )
    lon, lat = mid.x, mid.y
    dig = {
        "geometry": {
            "type": "LineString",
            "coordinates": [[lon - 0.0005, lat - 0.0003], [lon + 0.0005, lat + 0.0003]],
        },
        "buffer_m": 5,
    }
    asked = {
        "near": client.get("/query/near", params={"lon": lon, "lat": lat, "radius": 60}),
        "at": client.get("/query/at", params={"lon": lon, "lat": lat, "tolerance": 2}),
        "intersects": client.post("/query/intersects", json=dig),
        "buffer": client.get(
            "/query/buffer", params={"collection": "pipes", "id": water, "distance": 15}
        ),
        "stats": client.get("/query/stats", params={"level": "community"}),
        "isolation": client.get(f"/collections/pipes/items/{water}/isolation"),
        "upstream": client.get(f"/collections/pipes/items/{sewer}/upstream"),
        "downstream": client.get(f"/collections/pipes/items/{sewer}/downstream"),
        "trace": client.get("/query/trace", params={"lon": near_sewer.x, "lat": near_sewer.y}),
    }
    for name, r in asked.items():
        assert r.status_code == 200, (name, r.text)
    return {name: r.json() for name, r in asked.items()}


def test_every_feature_of_every_answer_resolves_to_its_item(demo_client, demo_pipes) -> None:
    seen: set[str] = set()
    for name, answer in _answers(demo_client, demo_pipes).items():
        linked = list(_linked(answer))
        assert linked, name
        for i, f in enumerate(linked):
            assert isinstance(f.get("collection"), str) and f.get("id") is not None, (name, f)
            if i % max(1, len(linked) // 25):
                continue  # a sample of each answer's features is followed
            seen.add(f["collection"])
            r = demo_client.get(f"/collections/{f['collection']}/items/{f['id']}")
            assert r.status_code == 200, (name, f["collection"], f["id"])
            item = r.json()
            assert item["id"] == f["id"]
            if f.get("type") == "Feature":
                props = f["properties"]
                if f.get("geometry") is not None:
                    got, want = shape(f["geometry"]), shape(item["geometry"])
                    assert got.equals_exact(want, 1e-9), (name, f["id"])
            else:  # a flat record (a grid cell, a reference): its attributes beside the id
                props = {k: v for k, v in f.items() if k in item["properties"]}
                if key_of(f) == "cell":
                    assert props == item["properties"], (name, f["id"])
            shared = {k: v for k, v in props.items() if k in item["properties"]}
            assert shared == {k: item["properties"][k] for k in shared}, (name, f["id"])
    assert {"grids", "pipes", "valves"} <= seen
