"""History and time travel over HTTP: `/items/{id}/history` lists every version recorded and
every reading; `asof=` answers items and single items with what the twin recorded then."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import mapbox_vector_tile
import morecantile
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from layers.gpkg import GeoPackageStore
from layers.schemas import LIGHTS
from tests.twin.serve_fixtures import app_for, fill_store, make_layer, write_key

XS = [114.30 + i * 0.001 for i in range(5)]


def now() -> str:
    time.sleep(0.01)
    t = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    time.sleep(0.01)
    return t


def lights(ids: list[str], xs: list[float], status: list[str]):
    return make_layer(
        LIGHTS, shapely.points(np.array(xs), np.full(len(xs), 30.35)), ids, status=status
    )


def wait_for(c: TestClient, fid: str, status: str) -> None:
    deadline = time.monotonic() + 5
    while c.get(f"/collections/lights/items/{fid}").json()["properties"]["status"] != status:
        assert time.monotonic() < deadline, f"{fid} never became {status}"
        time.sleep(0.02)


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Path:
    ids = [f"L{i}" for i in range(5)]
    return fill_store(tmp_path / "store", [lights(ids, XS, ["on"] * 5)])


def test_history_and_asof(store: Path) -> None:
    t_start = now()
    key = write_key(store)
    with TestClient(app_for(store), headers=key) as c:
        crew = c.app.state.keys.find(key["Authorization"].split()[1]).name
        t0 = now()
        readings = [
            {
                "collection": "lights",
                "id": "L1",
                "time": f"2026-12-07T0{h}:00:00Z",
                "property": "status",
                "value": v,
            }
            for h, v in ((8, "off"), (9, "fault"))
        ]
        assert c.post("/twin/observations", json=readings).json()["changed"] == 1
        wait_for(c, "L1", "fault")
        t1 = now()
        # A department re-imports L1 moved 50 m and back on; L4 is removed.
        other = GeoPackageStore(store, create=False)
        other.write(lights(["L1"], [XS[1] + 0.0005], ["on"]), source="fix", user="gis")
        other.delete_features("lights", ["L4"], user="gis", source="cleanup")
        other.close()
        wait_for(c, "L1", "on")
        t2 = now()
        history = c.get("/collections/lights/items/L1/history").json()
        versions = history["versions"]
        assert [v["properties"]["status"] for v in versions] == ["on", "fault", "on"]
        assert [v["version"] for v in versions] == [1, 2, 3]
        assert [v["ended_by"] for v in versions] == [crew, "gis", None]  # who sent the readings
        assert versions[-1]["recorded_to"] is None
        assert versions[0]["recorded_to"] == versions[1]["recorded_from"]
        assert versions[2]["geometry"]["coordinates"][0] == pytest.approx(XS[1] + 0.0005)
        assert [(r["time"][:13], r["value"]) for r in history["readings"]] == [
            ("2026-12-07T08", "off"),
            ("2026-12-07T09", "fault"),
        ]
        page = c.get("/collections/lights/items/L1/history", params={"limit": 1}).json()
        assert page["numberMatched"] == 2 and page["numberReturned"] == 1
        (nxt,) = [lk["href"] for lk in page["links"] if lk["rel"] == "next"]
        second = c.get(nxt).json()
        assert [r["value"] for r in page["readings"] + second["readings"]] == ["off", "fault"]
        assert second["numberMatched"] == 2 and not any(
            lk["rel"] == "next" for lk in second["links"]
        )

        # Time travel: the item and the whole collection as recorded at t0, t1, t2.
        def status(at: str, fid: str = "L1") -> str | None:
            r = c.get(f"/collections/lights/items/{fid}", params={"asof": at})
            return r.json()["properties"]["status"] if r.status_code == 200 else None

        assert (status(t0), status(t1), status(t2)) == ("on", "fault", "on")
        assert status(t1, "L4") == "on" and status(t2, "L4") is None
        then = c.get("/collections/lights/items", params={"asof": t1}).json()
        assert sorted(f["id"] for f in then["features"]) == [f"L{i}" for i in range(5)]
        x1 = {f["id"]: f["geometry"]["coordinates"][0] for f in then["features"]}["L1"]
        assert x1 == pytest.approx(XS[1])
        later = c.get("/collections/lights/items", params={"asof": t2}).json()
        assert sorted(f["id"] for f in later["features"]) == [f"L{i}" for i in range(4)]
        assert (
            c.get("/collections/lights/items", params={"asof": t_start}).json()["numberMatched"]
            == 5
        )  # imported before the server started
        r = c.get("/collections/lights/items", params={"asof": "last tuesday"})
        assert r.status_code == 400 and "asof" in r.json()["description"]
        # A removed feature still has its history.
        gone = c.get("/collections/lights/items/L4/history").json()
        assert gone["versions"][-1]["ended_why"] == "delete by cleanup"
        assert c.get("/collections/lights/items/L9/history").status_code == 404


def test_asof_on_tiles_and_queries(store: Path) -> None:
    x, y = XS[1], 30.35
    t = morecantile.tms.get("WebMercatorQuad").tile(x, y, 16)
    tile = f"/collections/lights/tiles/WebMercatorQuad/16/{t.y}/{t.x}"

    def lamp_in_tile(c: TestClient, **params: str) -> dict | None:
        r = c.get(tile, params=params)
        if r.status_code == 204:
            return None
        feats = mapbox_vector_tile.decode(r.content)["lights"]["features"]
        found = [f["properties"] for f in feats if f["properties"]["id"] == "L1"]
        return found[0] if found else None

    def near_ids(c: TestClient, **params: str) -> list[str]:
        r = c.get("/query/near", params={"lon": x, "lat": y, "radius": 5, **params})
        assert r.status_code == 200, r.text
        return [f["id"] for f in r.json()["features"]]

    with TestClient(app_for(store), headers=write_key(store)) as c:
        t0 = now()
        reading = {
            "collection": "lights",
            "id": "L1",
            "time": "2026-12-07T08:00:00Z",
            "property": "status",
            "value": "fault",
        }
        assert c.post("/twin/observations", json=[reading]).json()["changed"] == 1
        wait_for(c, "L1", "fault")
        t1 = now()
        other = GeoPackageStore(store, create=False)
        other.write(lights(["L1"], [x + 0.0005], ["on"]), source="fix", user="gis")
        other.close()
        wait_for(c, "L1", "on")
        # Now: L1 is 48 m east, on again.
        assert near_ids(c) == []
        assert lamp_in_tile(c)["status"] == "on"
        # As recorded at t0 and t1: where it stood, on then fault.
        assert near_ids(c, asof=t0) == ["L1"] and near_ids(c, asof=t1) == ["L1"]
        assert lamp_in_tile(c, asof=t0)["status"] == "on"
        assert lamp_in_tile(c, asof=t1)["status"] == "fault"
        at = c.get("/query/at", params={"lon": x, "lat": y, "asof": t1}).json()
        (hit,) = at["layers"]["lights"]["features"]
        assert hit["id"] == "L1" and hit["properties"]["status"] == "fault"
        # The live tile is not the one of the past (each cached apart).
        assert lamp_in_tile(c)["status"] == "on"
        r = c.get("/query/near", params={"lon": x, "lat": y, "asof": "then"})
        assert r.status_code == 400 and "asof" in r.json()["description"]
