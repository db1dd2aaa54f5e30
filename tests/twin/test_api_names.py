"""One name for one thing across the query API: an answer echoes each request field by the
name the request used, a summary counts the answer's members by their names, and `depth_m`
is always a buried asset's own depth (the dig check's depth is `dig_depth_m` both ways)."""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from tests.twin.query_fixtures import (  # noqa: F401  (fixtures)
    demo_client_fixture,
    demo_pipes_fixture,
    demo_store_fixture,
)


def _no_second_name(answer: dict[str, Any], asked: dict[str, Any]) -> None:
    """Every request field the answer echoes is there by the request's own name only."""
    for name, value in asked.items():
        assert f"{name}_m" not in answer and f"{name.removesuffix('_m')}" not in (
            set(answer) - {name}
        ), name
        if isinstance(value, int | float) and name not in ("lon", "lat", "limit"):
            assert answer[name] == value, name


def test_answers_echo_request_fields_by_their_names(demo_client, demo_pipes) -> None:
    water = np.flatnonzero(demo_pipes.attrs["network"].to_numpy() == "water")[3]
    fid = demo_pipes.ids[water]
    mid = shapely.line_interpolate_point(demo_pipes.geometry[water], 0.5, normalized=True)
    near = {"lon": mid.x, "lat": mid.y, "radius": 40.0}
    body = demo_client.get("/query/near", params=near).json()
    _no_second_name(body, near)
    at = {"lon": mid.x, "lat": mid.y, "tolerance": 2.0}
    body = demo_client.get("/query/at", params=at).json()
    _no_second_name(body, at)
    buried = body["layers"]["pipes"]["features"]
    assert buried
    for f in buried:  # the asset's depth is `depth_m`, in its properties and below ground
        assert f["underground"]["depth_m"] == f["properties"]["depth_m"]
        assert "cover_depth_m" not in f["underground"]
    buf = {"collection": "pipes", "id": fid, "distance": 25.0}
    body = demo_client.get("/query/buffer", params=buf).json()
    _no_second_name(body, buf)
    assert body["asset"] == {"collection": "pipes", "id": fid}
    dig = {
        "geometry": {"type": "Point", "coordinates": [mid.x, mid.y]},
        "buffer_m": 5.0,
        "dig_depth_m": 1.0,
    }
    r = demo_client.post("/query/intersects", json=dig)
    assert r.status_code == 200, r.text
    body = r.json()
    _no_second_name(body, dig)
    assert "conflicts" not in body and {s["collection"] for s in body["summary"]} >= {"pipes"}
    for f in body["features"]:
        if f["collection"] == "pipes" and f["properties"]["depth_m"] is not None:
            assert f["reached"] == (f["properties"]["depth_m"] <= 1.0)
    # The old request name is refused with the name to use, not taken for something else.
    r = demo_client.post("/query/intersects", json={**dig, "depth_m": 1.0})
    assert r.status_code == 400 and "dig_depth_m" in r.json()["description"]


def test_summaries_count_the_answers_members_by_their_names(demo_client, demo_pipes) -> None:
    networks = demo_pipes.attrs["network"].to_numpy()
    water = demo_pipes.ids[np.flatnonzero(networks == "water")[3]]
    sewer = demo_pipes.ids[np.flatnonzero(networks == "sewer")[3]]
    iso = demo_client.get(f"/collections/pipes/items/{water}/isolation").json()
    extra = {"pipes_unsupplied", "supply"}
    assert set(iso["summary"]) - extra <= set(iso)
    for name, count in iso["summary"].items():
        if name in iso and isinstance(iso[name], dict) and "features" in iso[name]:
            if isinstance(count, int):
                assert count == iso[name]["numberMatched"], name
            else:  # counts by kind
                assert sum(count.values()) == iso[name]["numberMatched"], name
    assert iso["summary"]["length_m"] == iso["length_m"]
    trace = demo_client.get(f"/collections/pipes/items/{sewer}/downstream").json()
    assert set(trace["summary"]) <= set(trace)
    assert trace["summary"]["pipes"] == trace["pipes"]["numberMatched"]
