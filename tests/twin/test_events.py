"""`GET /events`: one Server-Sent Event per change the server applied, filtered by collections
and bbox, resumable with `Last-Event-ID` across a restart (the change log's sequence)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import shapely

from layers.gpkg import GeoPackageStore
from layers.models import Access, Change, Reading
from layers.schemas import LIGHTS
from tests.twin.serve_fixtures import LiveServer, app_for, fill_store, make_layer, write_key
from twin.events import run_events

XS = [114.3000 + i * 0.0002 for i in range(10)] + [114.3400 + i * 0.0002 for i in range(10)]
YS = [30.35] * 10 + [30.37] * 10
IDS = [f"L{i}" for i in range(20)]
EVENT_WITHIN_S = 1.0


KEYS: dict[str, dict[str, str]] = {}
"""A writer's key per server URL (readings need an engineer's key)."""


def keyed(server: LiveServer, store: Path) -> LiveServer:
    KEYS[server.url] = write_key(store)
    return server


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Path:
    lights = make_layer(LIGHTS, shapely.points(np.array(XS), np.array(YS)), IDS, status=["on"] * 20)
    return fill_store(tmp_path / "store", [lights])


class Subscriber:
    """An SSE client in a thread: each event's id, type, data and arrival time."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url, self.headers = url, headers or {}
        self.events: list[dict[str, Any]] = []
        self.status: int | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=None))
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        assert self._open.wait(10), "the stream did not open"
        assert self.status == 200
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self.url, headers=self.headers) as r:
                self.status = r.status_code
                self._open.set()
                event: dict[str, Any] = {}
                for line in r.iter_lines():
                    if not line:
                        if "data" in event:
                            event["at"] = time.monotonic()
                            self.events.append(event)
                        event = {}
                    elif line.startswith(":"):
                        continue
                    else:
                        key, _, value = line.partition(":")
                        event[key] = json.loads(value) if key == "data" else value.strip()
        except (httpx.HTTPError, RuntimeError):
            self._open.set()

    def wait(self, n: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.events


def post(url: str, readings: list[dict]) -> dict:
    r = httpx.post(f"{url}/twin/observations", json=readings, timeout=30, headers=KEYS[url])
    assert r.status_code == 200, r.text
    return r.json()


def lamp(fid: str, status: str, at: str = "2026-12-07T10:00:00Z") -> dict:
    return {"collection": "lights", "id": fid, "time": at, "property": "status", "value": status}


def test_a_reading_is_pushed_within_a_second_and_bbox_filters(store: Path) -> None:
    with keyed(LiveServer(app_for(store)), store) as server:
        far_box = "114.339,30.369,114.345,30.371"
        with (
            Subscriber(f"{server.url}/events?collections=lights") as everything,
            Subscriber(f"{server.url}/events?bbox={far_box}") as far,
        ):
            sent = time.monotonic()
            body = post(server.url, [lamp("L3", "fault")])
            (event,) = everything.wait(1)
            assert event["at"] - sent < EVENT_WITHIN_S
            assert event["event"] == "change" and int(event["id"]) == body["revision"]
            data = event["data"]
            assert (data["collection"], data["id"], data["kind"]) == ("lights", "L3", "updated")
            assert data["properties"] == ["status"]
            assert data["old_bbox"] == data["new_bbox"] == pytest.approx([XS[3], YS[3]] * 2)
            # The map refreshes on it and sees the new state.
            item = httpx.get(f"{server.url}/collections/lights/items/L3").json()
            assert item["properties"]["status"] == "fault"
            post(server.url, [lamp("L15", "off")])
            assert [e["data"]["id"] for e in everything.wait(2)] == ["L3", "L15"]
            assert [e["data"]["id"] for e in far.wait(1)] == ["L15"]  # not L3: outside its bbox
        r = httpx.get(f"{server.url}/events", headers={"Last-Event-ID": "soon"})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["description"]
        r = httpx.get(f"{server.url}/events?collections=lamps")
        assert r.status_code == 404


def test_a_client_resumes_after_a_restart_and_misses_nothing(store: Path) -> None:
    with (
        keyed(LiveServer(app_for(store)), store) as server,
        Subscriber(f"{server.url}/events") as sub,
    ):
        post(server.url, [lamp("L1", "fault")])
        (first,) = sub.wait(1)
    # While no server runs, readings land through another process's store.
    other = GeoPackageStore(store, create=False)
    t = dt.datetime(2026, 12, 7, 11, tzinfo=dt.UTC)
    other.observe([Reading("lights", "L2", "status", t, "off")], user="sensor-gw")
    other.observe([Reading("lights", "L4", "status", t, "fault")], user="sensor-gw")
    other.close()
    resume = {"Last-Event-ID": first["id"]}
    with (
        keyed(LiveServer(app_for(store)), store) as server,
        Subscriber(f"{server.url}/events", resume) as sub,
    ):
        missed = sub.wait(2)
        assert [e["data"]["id"] for e in missed] == ["L2", "L4"]
        assert [int(e["id"]) for e in missed] == [int(first["id"]) + 1, int(first["id"]) + 2]
        post(server.url, [lamp("L5", "off")])
        assert [e["data"]["id"] for e in sub.wait(3)] == ["L2", "L4", "L5"]


def test_a_client_resumes_inside_a_batch_of_readings(store: Path) -> None:
    """A batch's changes are one row of the log; a stream resumes after any one of them, from
    this process's memory or, after a restart, from the store, and a bbox keeps its part."""
    batch = [lamp(f"L{i}", "fault") for i in (1, 2, 3, 11, 12)]  # three west, two east
    with keyed(LiveServer(app_for(store)), store) as server:
        with Subscriber(f"{server.url}/events") as sub:
            answer = post(server.url, batch)
            got = sub.wait(5)
        first = answer["revision"] - answer["changed"] + 1
        assert [int(e["id"]) for e in got] == list(range(first, first + 5))
        headers = {"Last-Event-ID": str(first + 1)}  # seen L1 and L2
        with Subscriber(f"{server.url}/events", headers) as sub:
            assert [e["data"]["id"] for e in sub.wait(3)] == ["L3", "L11", "L12"]
    west = f"bbox={XS[0] - 1e-4},{YS[0] - 1e-4},{XS[9] + 1e-4},{YS[0] + 1e-4}"
    with (
        keyed(LiveServer(app_for(store)), store) as server,
        Subscriber(f"{server.url}/events?{west}", {"Last-Event-ID": str(first)}) as sub,
    ):
        resumed = sub.wait(2)
        assert [e["data"]["id"] for e in resumed] == ["L2", "L3"]
        assert resumed[0]["data"]["new_bbox"] == [XS[2], YS[2], XS[2], YS[2]]
        time.sleep(0.3)
        assert len(sub.events) == 2  # the east ones are not for this stream


def test_a_stream_behind_the_memory_reads_back_every_change_once(tmp_path: Path) -> None:
    """A stream older than what the feed keeps in memory reads the rest back from the store
    (batches of readings as runs, cut at the feed's floor), then goes on from memory: every
    change once, in order."""
    import asyncio

    from layers.catalog import Catalog
    from twin.events import ChangeFeed

    store = GeoPackageStore(fill_store(tmp_path / "s", [lights_layer()]))
    catalog = Catalog(store)
    feed = ChangeFeed(catalog, keep=4)
    start = catalog.seq
    t = dt.datetime(2026, 12, 7, 9, tzinfo=dt.UTC)
    for k in range(6):  # six batches of three lamps: 18 entries, 4 kept in memory
        batch = [
            Reading("lights", IDS[i], "status", t + dt.timedelta(minutes=k), "off")
            for i in (k, k + 1, k + 2)
        ]
        store.observe(batch, user="gw")
        feed.publish(catalog.follow())
    assert feed.floor > start  # the oldest were let go

    async def read() -> list[int]:
        seen: list[int] = []
        async for parts in feed.changes(start, lambda: len(seen) >= 18):
            for p in parts:
                seen.extend([p.seq] if isinstance(p, Change) else range(p.seq, p.last + 1))
        return seen

    seen = asyncio.run(asyncio.wait_for(read(), 10))
    assert seen == list(range(start + 1, start + 19))
    store.close()


def lights_layer():
    return make_layer(LIGHTS, shapely.points(np.array(XS), np.array(YS)), IDS, status=["on"] * 20)


def test_a_batch_heard_of_early_is_told_in_order_and_once(tmp_path: Path) -> None:
    """Runs of readings are told to the streams when written (`ChangeFeed.written`), before
    the process applies them; one heard of before the entries ahead of it waits for them, and
    the follower's `publish` of the same entries tells nothing twice."""
    import asyncio

    from layers.catalog import Catalog
    from twin.events import ChangeFeed

    store = GeoPackageStore(fill_store(tmp_path / "s", [lights_layer()]))
    catalog = Catalog(store)
    feed = ChangeFeed(catalog)
    start = catalog.seq
    t = dt.datetime(2026, 12, 7, 9, tzinfo=dt.UTC)
    first = store.observe(
        [Reading("lights", IDS[i], "status", t, "fault") for i in (1, 2)], user="gw"
    )
    second = store.observe(
        [Reading("lights", IDS[i], "status", t, "off") for i in (3, 12)], user="gw"
    )
    feed.written(second.runs)  # another worker's batch, heard of first: it waits
    assert feed.released == start
    feed.written(first.runs)
    assert feed.released == second.revision
    # Told, not applied yet: the layer served still has the old state.
    assert catalog.layer("lights", Access.RESTRICTED).attrs["status"].tolist()[1] == "on"
    feed.publish(catalog.follow(), catalog.seq)
    assert catalog.layer("lights", Access.RESTRICTED).attrs["status"].tolist()[1] == "fault"

    async def read() -> list[tuple[int, str, list[float] | None]]:
        seen: list[tuple[int, str, list[float] | None]] = []
        async for parts in feed.changes(start, lambda: len(seen) >= 4):
            for p in parts:
                assert not isinstance(p, Change)
                for seq, data in run_events(p, np.arange(len(p.run.ids))):
                    seen.append((seq, data["id"], data["new_bbox"]))
        return seen

    seen = asyncio.run(asyncio.wait_for(read(), 10))
    assert [s for s, _, _ in seen] == list(range(start + 1, start + 5))
    assert [fid for _, fid, _ in seen] == [IDS[1], IDS[2], IDS[3], IDS[12]]
    assert [box for _, _, box in seen] == [
        pytest.approx([XS[i], YS[i], XS[i], YS[i]]) for i in (1, 2, 3, 12)
    ]
    store.close()


def test_an_event_comes_before_the_change_is_applied_and_a_read_waits_for_it(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event of a reading is sent once it is written, while the follower has not applied
    it; a client fetching the feature on the event gets the new state all the same."""
    from layers.catalog import Catalog

    gate = threading.Event()
    follow = Catalog.follow

    def held(self: Catalog) -> Any:
        assert gate.wait(30)
        return follow(self)

    monkeypatch.setattr(Catalog, "follow", held)
    app = app_for(store)
    with keyed(LiveServer(app), store) as server:
        follower = app.state.follower
        reach = follower.reach

        async def reach_opening(seq: int) -> None:
            gate.set()  # the apply may go on once a read waits for it
            await reach(seq)

        follower.reach = reach_opening
        with Subscriber(f"{server.url}/events") as sub:
            body = post(server.url, [lamp("L7", "fault")])
            (event,) = sub.wait(1)
            assert int(event["id"]) == body["revision"]
            assert not gate.is_set() and app.state.catalog.seq < body["revision"]
            item = httpx.get(f"{server.url}/collections/lights/items/L7", timeout=30).json()
            assert gate.is_set()
            assert item["properties"]["status"] == "fault"
