"""OGC API Features Part 4 on every vector layer: create, replace, update, delete, validated
against the layer's schema (extras included), each answered with the new ETag; If-Match makes
a change conditional: a stale ETag gets 412 and nothing changes, and of two concurrent PATCHes
with the same ETag one wins and one gets 412."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from layers.gpkg import GeoPackageStore
from layers.schemas import LIGHTS
from tests.twin.serve_fixtures import LiveServer, app_for, fill_store, make_layer, write_key

ITEMS = "/collections/lights/items"


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Path:
    xs = np.array([114.30 + i * 0.001 for i in range(4)])
    lights = make_layer(
        LIGHTS,
        shapely.points(xs, np.full(4, 30.35)),
        [f"L{i}" for i in range(4)],
        status=["on"] * 4,
        wattage_w=[60.0] * 4,
    )
    return fill_store(tmp_path / "store", [lights])


def revision(store: Path) -> int:
    s = GeoPackageStore(store, create=False)
    try:
        return s.revision()
    finally:
        s.close()


def lamp(fid: str | None, x: float, **props: object) -> dict:
    out: dict = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [x, 30.351]},
        "properties": {"status": "on", **props},
    }
    if fid is not None:
        out["id"] = fid
    return out


def test_create_replace_update_delete(store: Path) -> None:
    with TestClient(app_for(store), headers=write_key(store)) as c:
        conf = c.get("/conformance").json()["conformsTo"]
        for cls in ("create-replace-delete", "update", "optimistic-locking-etags"):
            assert f"http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/{cls}" in conf
        r = c.post(ITEMS, json=lamp("N1", 114.31, wattage_w=40, lamp_type="LED"))
        assert r.status_code == 201, r.text
        assert r.headers["location"].endswith(f"{ITEMS}/N1")
        created = r.headers["etag"]
        got = c.get(f"{ITEMS}/N1")
        assert got.headers["etag"] == created
        assert got.json()["properties"]["wattage_w"] == 40
        assert c.post(ITEMS, json=lamp("N1", 114.31)).status_code == 412  # the id is taken
        anonymous = c.post(ITEMS, json=lamp(None, 114.32))
        assert anonymous.status_code == 201 and len(anonymous.json()["id"]) == 32
        # PUT replaces the whole feature.
        r = c.put(f"{ITEMS}/N1", json=lamp("N1", 114.315, status="off"))
        assert r.status_code == 200 and r.headers["etag"] != created
        assert r.json()["properties"]["wattage_w"] is None  # replaced, not merged
        assert r.json()["geometry"]["coordinates"] == [114.315, 30.351]
        # PATCH merges.
        etag = r.headers["etag"]
        r = c.patch(
            f"{ITEMS}/N1", json={"properties": {"status": "fault"}}, headers={"If-Match": etag}
        )
        assert r.status_code == 200 and r.json()["properties"]["status"] == "fault"
        assert r.json()["geometry"]["coordinates"] == [114.315, 30.351]
        stale = etag
        etag = r.headers["etag"]
        r = c.patch(
            f"{ITEMS}/N1", json={"properties": {"status": "on"}}, headers={"If-Match": stale}
        )
        assert r.status_code == 412 and r.json()["code"] == "PreconditionFailed"
        # DELETE, conditional too; the history stays.
        assert c.delete(f"{ITEMS}/N1", headers={"If-Match": stale}).status_code == 412
        assert c.delete(f"{ITEMS}/N1", headers={"If-Match": etag}).status_code == 204
        deadline = time.monotonic() + 5
        while c.get(f"{ITEMS}/N1").status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        history = c.get(f"{ITEMS}/N1/history").json()["versions"]
        assert [v["properties"]["status"] for v in history] == ["on", "off", "fault"]
        assert c.delete(f"{ITEMS}/N1").status_code == 404


@pytest.mark.parametrize(
    ("method", "body", "words"),
    [
        ("patch", {"properties": {"colour": "red"}}, "no property 'colour'"),
        ("patch", {"properties": {"status": "broken"}}, "one of on, off, fault"),
        ("patch", {"properties": {"wattage_w": "high"}}, "a number"),
        ("patch", {"properties": {"wattage_w": -1}}, "at least 0"),
        (
            "patch",
            {"geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}},
            "point geometries",
        ),
        ("patch", {"geometry": {"type": "Point", "coordinates": [500, 30]}}, "longitude"),
        ("patch", {"owner": "x"}, "unknown member 'owner'"),
        ("patch", [1, 2], "merge patch"),
        ("put", {"type": "Feature", "properties": {}}, "geometry"),
        (
            "put",
            {
                "type": "Feature",
                "id": "L9",
                "geometry": {"type": "Point", "coordinates": [114.3, 30.35]},
                "properties": {},
            },
            "not the id in the path",
        ),
        ("put", {"type": "FeatureCollection", "features": []}, "GeoJSON Feature"),
    ],
)
def test_edits_outside_the_schema_change_nothing(store: Path, method, body, words) -> None:
    with TestClient(app_for(store), headers=write_key(store)) as c:
        before = c.get(f"{ITEMS}/L1")
        seq = revision(store)
        r = getattr(c, method)(f"{ITEMS}/L1", json=body)
        assert r.status_code == 400, r.text
        assert words in r.json()["description"], r.json()["description"]
        after = c.get(f"{ITEMS}/L1")
        assert after.json() == before.json() and after.headers["etag"] == before.headers["etag"]
        assert revision(store) == seq
    with TestClient(app_for(store), headers=write_key(store)) as c:
        r = c.patch(f"{ITEMS}/L1", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not JSON" in r.json()["description"]
        assert c.patch(f"{ITEMS}/L404", json={"properties": {}}).status_code == 404
        assert c.patch("/collections/lamps/items/L1", json={"properties": {}}).status_code == 404


def test_two_concurrent_patches_with_one_etag(store: Path) -> None:
    key = write_key(store)
    with LiveServer(app_for(store)) as server:
        etag = httpx.get(f"{server.url}{ITEMS}/L2").headers["etag"]
        start = threading.Barrier(2)
        answers: dict[str, httpx.Response] = {}

        def patch(status: str) -> None:
            start.wait()
            answers[status] = httpx.patch(
                f"{server.url}{ITEMS}/L2",
                json={"properties": {"status": status}},
                headers={"If-Match": etag, **key},
                timeout=30,
            )

        threads = [threading.Thread(target=patch, args=(s,)) for s in ("off", "fault")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in answers.values())
        assert codes == [200, 412], {s: r.text for s, r in answers.items()}
        (winner,) = [s for s, r in answers.items() if r.status_code == 200]
        final = httpx.get(f"{server.url}{ITEMS}/L2")
        assert final.json()["properties"]["status"] == winner
        assert final.headers["etag"] == answers[winner].headers["etag"]


def test_the_document_declares_what_edits_answer(store: Path) -> None:
    with TestClient(app_for(store), headers=write_key(store)) as c:
        paths = c.get("/api").json()["paths"]
    item = paths["/collections/{collectionId}/items/{featureId}"]
    for method in ("put", "patch", "delete"):
        assert {"400", "404", "412"} <= set(item[method]["responses"]), method
        assert any(p["name"] == "If-Match" for p in item[method]["parameters"]), method
    create = paths["/collections/{collectionId}/items"]["post"]
    assert {"201", "400", "404", "412", "413"} <= set(create["responses"])
    assert "application/geo+json" in create["requestBody"]["content"]


def test_out_of_range_times_and_long_ids_are_refused(store: Path) -> None:
    with TestClient(app_for(store), headers=write_key(store)) as c:
        far = {
            "collection": "lights",
            "id": "L1",
            "property": "status",
            "value": "on",
            "time": "0001-01-01T00:00:00+14:00",
        }
        r = c.post("/twin/observations", json=[far])
        assert r.status_code == 200
        assert "out of range" in r.json()["rejected"][0]["reason"]
        r = c.get(ITEMS, params={"asof": "0001-01-01T00:00:00+14:00"})
        assert r.status_code == 400 and "out of range" in r.json()["description"]
        r = c.post(ITEMS, json=lamp("x" * 257, 114.3))
        assert r.status_code == 400 and "at most 256" in r.json()["description"]
