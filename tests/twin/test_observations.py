"""`POST /twin/observations`: readings checked one by one (each lands whole or is rejected with
its reason), every reading kept as history, the newest by time (not by arrival) the feature's
state; served by every process of `twin serve --workers 2` within a second, the tile holding
the lamp made anew, a far tile kept."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import random
import time
from pathlib import Path

import mapbox_vector_tile
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from layers.gpkg import GeoPackageStore
from layers.models import Access
from layers.schemas import GRIDS, LIGHTS
from tests.twin.serve_fixtures import app_for, fill_store, make_layer, write_key
from tests.twin.worker_fixtures import children, connect_to, get, serving
from tiles.settings import TileSettings

XS = [114.3000 + i * 0.0002 for i in range(10)] + [114.3400 + i * 0.0002 for i in range(10)]
YS = [30.35] * 10 + [30.37] * 10
IDS = [f"L{i}" for i in range(20)]
FOLLOW_WITHIN_S = 2.0


def reading(fid: str, time_: str, value: object, prop: str = "status") -> dict:
    return {"collection": "lights", "id": fid, "time": time_, "property": prop, "value": value}


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Path:
    lights = make_layer(
        LIGHTS,
        shapely.points(np.array(XS), np.array(YS)),
        IDS,
        status=["on"] * 20,
        wattage_w=[60.0] * 20,
    )
    district = make_layer(
        GRIDS,
        [shapely.box(114.29, 30.34, 114.36, 30.38)],
        ["D1"],
        level=["district"],
        code=["420115"],
        name=["江夏区"],
    )
    return fill_store(tmp_path / "store", [lights, district])


def test_each_reading_lands_or_is_rejected_with_its_reason(store: Path) -> None:
    batch = [
        reading("L1", "2026-12-07T10:00:00Z", "fault"),
        reading("L404", "2026-12-07T10:00:00Z", "fault"),
        {**reading("L2", "2026-12-07T10:00:00Z", "fault"), "collection": "lamps"},
        reading("L2", "2026-12-07T10:00:00Z", 1, prop="colour"),
        reading("L2", "2026-12-07T10:00:00Z", "broken"),
        reading("L2", "2026-12-07T10:00:00Z", "high", prop="wattage_w"),
        reading("L2", "2026-12-07T10:00:00Z", -5, prop="wattage_w"),
        reading("L2", "2026-12-07T10:00:00", "off"),
        reading("L2", "2999-01-01T00:00:00Z", "off"),
        reading("L2", "yesterday", "off"),
        {**reading("L2", "2026-12-07T10:00:00Z", "off"), "unit": "none"},
        {"collection": "lights", "id": "L2"},
        ["lights", "L2"],
        reading("L3", "2026-12-07T10:00:00+08:00", 75, prop="wattage_w"),
        reading("L2", "2026-12-07T10:00:00Z", 10**400, prop="wattage_w"),  # past any float
    ]
    with TestClient(app_for(store), headers=write_key(store)) as c:
        r = c.post("/twin/observations", json=batch)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] == 2 and body["changed"] == 2
        reasons = {x["index"]: x["reason"] for x in body["rejected"]}
        assert sorted(reasons) == [*range(1, 13), 14]
        expected = {
            1: "no feature 'L404'",
            2: "no collection 'lamps'",
            3: "no property 'colour'",
            4: "one of on, off, fault",
            5: "a number",
            6: "at least 0",
            7: "no UTC offset",
            8: "in the future",
            9: "not ISO 8601",
            10: "unknown member 'unit'",
            11: "missing time, property, value",
            12: "is an object",
            14: "64-bit integer",
        }
        for i, words in expected.items():
            assert words in reasons[i], (i, reasons[i])
        deadline = time.monotonic() + 5
        while c.get("/collections/lights/items/L1").json()["properties"]["status"] != "fault":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        props = {i: c.get(f"/collections/lights/items/{i}").json()["properties"] for i in IDS[:4]}
        assert props["L2"]["status"] == "on" and props["L2"]["wattage_w"] == 60  # nothing landed
        assert props["L3"]["wattage_w"] == 75
        # Bad batches as a whole: 400 naming the problem, 413 past the size.
        for bad in ({"readings": []}, "lamp out", 42):
            r = c.post("/twin/observations", json=bad)
            assert r.status_code == 400 and "array of readings" in r.json()["description"]
        r = c.post(
            "/twin/observations", content=b"[{", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and "not JSON" in r.json()["description"]
        r = c.post("/twin/observations", content=b"[" + b" " * 11_000_000 + b"]")
        assert r.status_code == 413
    with TestClient(app_for(store, max_readings=3), headers=write_key(store)) as c:
        r = c.post("/twin/observations", json=[reading("L1", "2026-12-07T10:00:00Z", "on")] * 4)
        assert r.status_code == 400 and "TWIN_MAX_READINGS" in r.json()["description"]


def test_the_newest_reading_by_time_is_the_state_whatever_the_order(store: Path) -> None:
    rng = random.Random(3)
    start = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
    history = []  # (lamp, time, status) in time order
    for lamp in ("L4", "L5", "L6"):
        for k in range(12):
            status = rng.choice(["on", "off", "fault"])
            history.append((lamp, start + dt.timedelta(minutes=5 * k + rng.random()), status))
    shuffled = history[:]
    rng.shuffle(shuffled)
    with TestClient(app_for(store), headers=write_key(store)) as c:
        # In three batches, arriving out of order.
        for part in (shuffled[:10], shuffled[10:25], shuffled[25:]):
            batch = [reading(fid, t.isoformat(), s) for fid, t, s in part]
            r = c.post("/twin/observations", json={"observations": batch})
            assert r.status_code == 200 and r.json()["accepted"] == len(part)
        newest = {fid: s for fid, _, s in sorted(history, key=lambda h: h[1])}
        deadline = time.monotonic() + 5
        while True:
            got = {
                fid: c.get(f"/collections/lights/items/{fid}").json()["properties"]["status"]
                for fid in newest
            }
            if got == newest or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == newest
    opened = GeoPackageStore(store, create=False)
    try:
        kept, total = opened.readings("lights", "L5")
        assert total == len(kept)
        assert len(kept) == 12  # every reading kept, late ones too
        times = [t for _, t, _, _, _ in kept]
        assert times == sorted(times)
        assert [v for _, _, v, _, _ in kept] == [s for f, _, s in history if f == "L5"]
        assert opened.load("lights", Access.RESTRICTED).attrs["_version"].max() > 1
    finally:
        opened.close()


def _tile(lon: float, lat: float, z: int = 16) -> str:
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, z)
    return f"/collections/lights/tiles/WebMercatorQuad/{z}/{t.y}/{t.x}"


def _status_in_tile(conn: http.client.HTTPConnection, path: str, fid: str) -> tuple[str, str]:
    conn.request("GET", path, headers={"Accept-Encoding": "identity"})
    r = conn.getresponse()
    raw = r.read()
    assert r.status == 200
    feats = mapbox_vector_tile.decode(raw)["lights"]["features"]
    (lamp,) = [f for f in feats if f["properties"].get("id") == fid]
    return r.getheader("ETag"), lamp["properties"]["status"]


def _post(conn: http.client.HTTPConnection, batch: list[dict], key: dict[str, str]) -> dict:
    conn.request(
        "POST",
        "/twin/observations",
        json.dumps(batch),
        {"Content-Type": "application/json", **key},
    )
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 200, body
    return body


def test_a_reading_reaches_every_worker(tmp_path: Path, store: Path) -> None:
    key = write_key(store)
    with serving(store, 2, tmp_path / "serve.log") as served:
        workers = children(served.proc.pid)
        conns = [connect_to(served.port, pid, workers) for pid in workers]
        near, far = _tile(XS[3], YS[3]), _tile(XS[15], YS[15])
        before = []
        for c in conns:
            etag_near, status = _status_in_tile(c, near, "L3")
            etag_far, _ = _status_in_tile(c, far, "L15")
            assert status == "on"
            before.append((etag_near, etag_far))
        body = _post(conns[0], [reading("L3", "2026-12-07T10:00:00Z", "fault")], key)
        posted = time.monotonic()
        assert body["changed"] == 1
        seen: dict[int, float] = {}
        while len(seen) < 2 and time.monotonic() - posted < 10:
            for i, c in enumerate(conns):
                status, raw = get(c, "/collections/lights/items/L3")
                if i not in seen and json.loads(raw)["properties"]["status"] == "fault":
                    seen[i] = time.monotonic() - posted
            time.sleep(0.02)
        assert sorted(seen) == [0, 1] and max(seen.values()) < FOLLOW_WITHIN_S, seen
        # A late reading (older time) arriving after it changes nothing.
        late = _post(conns[1], [reading("L3", "2026-12-07T09:00:00Z", "on")], key)
        assert late["accepted"] == 1 and late["changed"] == 0
        time.sleep(0.5)
        for c, (etag_near, etag_far) in zip(conns, before, strict=True):
            # The tile covering it: drawn anew at once, or (served meanwhile) within
            # TWIN_TILES_REFRESH_S of when it was drawn last.
            deadline = time.monotonic() + TileSettings().refresh_s + 1.0
            new_etag, status = _status_in_tile(c, near, "L3")
            while status != "fault" and time.monotonic() < deadline:
                time.sleep(0.05)
                new_etag, status = _status_in_tile(c, near, "L3")
            assert status == "fault" and new_etag != etag_near
            assert _status_in_tile(c, far, "L15")[0] == etag_far
            at = json.loads(get(c, f"/query/at?lon={XS[3]}&lat={YS[3]}")[1])
            (lamp,) = at["layers"]["lights"]["features"]
            assert lamp["id"] == "L3" and lamp["properties"]["status"] == "fault"
            q = "/query/stats?level=district&collections=lights&filter=status%3D%27fault%27"
            stats = json.loads(get(c, q)[1])
            assert stats["totals"]["lights_count"] == 1
            assert (
                json.loads(get(c, "/collections/lights/items/L3")[1])["properties"]["status"]
                == "fault"
            )


def test_a_batch_waits_until_the_worker_serves_what_came_before(store: Path) -> None:
    """With TWIN_MAX_LAG entries of lag allowed (here none), a batch lands only once this
    worker has applied the store's log up to it: readings never run ahead of what is served."""
    with TestClient(
        app_for(store, max_lag=0, follow_interval_s=30.0), headers=write_key(store)
    ) as c:
        catalog = c.app.state.catalog
        real_follow, real_observe = catalog.follow, catalog.store.observe
        behind: list[int] = []

        def slow_follow():  # a worker busy with other work applies late
            time.sleep(0.3)
            return real_follow()

        def observe(readings, *, user):  # how far behind the store this worker is now
            behind.append(catalog.store.revision() - catalog.seq)
            return real_observe(readings, user=user)

        catalog.follow = slow_follow
        catalog.store.observe = observe
        for k in range(3):
            r = c.post("/twin/observations", json=[reading("L3", f"2026-12-07T1{k}:00:00Z", "off")])
            assert r.status_code == 200 and r.json()["changed"] == 1
        assert behind == [0, 0, 0]
        deadline = time.monotonic() + 5
        while catalog.seq < catalog.store.revision() and time.monotonic() < deadline:
            time.sleep(0.05)
        status = c.get("/collections/lights/items/L3").json()["properties"]["status"]
        assert status == "off"


def test_every_worker_streams_each_batch_in_order_once(tmp_path: Path, store: Path) -> None:
    """Batches taken by either worker of `twin serve --workers 2` reach the event streams of
    both (the other worker hears of them through the peer sockets): every entry once, in the
    order of the log."""
    import threading

    key = write_key(store)
    with serving(store, 2, tmp_path / "serve.log") as served:
        workers = children(served.proc.pid)
        posters = [connect_to(served.port, pid, workers) for pid in workers]
        streams = [connect_to(served.port, pid, workers) for pid in workers]
        heard: list[list[tuple[int, str]]] = [[], []]

        def listen(conn: http.client.HTTPConnection, out: list[tuple[int, str]]) -> None:
            conn.request("GET", "/events?collections=lights")
            r = conn.getresponse()
            for line in r:
                if line.startswith(b"data:"):
                    data = json.loads(line[5:])
                    out.append((data["seq"], data["id"]))

        for conn, out in zip(streams, heard, strict=True):
            threading.Thread(target=listen, args=(conn, out), daemon=True).start()
        time.sleep(0.5)  # both streams open
        sent: list[tuple[int, str]] = []
        for k in range(6):  # by turns on each worker
            lamps = [f"L{i}" for i in range(3 * k % 20, 3 * k % 20 + 3)]
            at = f"2026-12-07T10:0{k}:00Z"
            body = _post(posters[k % 2], [reading(fid, at, "off") for fid in lamps], key)
            first = body["revision"] - body["changed"] + 1
            sent += list(zip(range(first, body["revision"] + 1), lamps, strict=True))
        deadline = time.monotonic() + 10
        while any(len(out) < len(sent) for out in heard) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # nothing more comes
        assert heard[0] == sent and heard[1] == sent
