"""`twin serve --workers N` survives its workers: a killed worker is restarted (with back-off)
while the others serve, the new one joins the tile mesh warm, `/metrics` counts restarts, and
SIGTERM drains and stops every worker within a bound. Real processes, real HTTP."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import morecantile
import pytest
import shapely

from tests.twin.serve_fixtures import fill_store, sites_layer, wuhan_pipes
from tests.twin.worker_fixtures import (
    Served,
    children,
    connect_to,
    get,
    lookups,
    metric,
    running,
    serving,
)
from tiles.cache import TileCache, TileKey, pack
from tiles.grid import Tile
from twin.peers import TilePeers, control_pair, link, send_link
from twin.server import KILL_AFTER_S, Backoff

TMS = morecantile.tms.get("WebMercatorQuad")
CLIENTS = 8
LOAD_S = 6.0
KILL_AT_S = 2.0
WARM = "/collections/pipes/tiles/WebMercatorQuad/16/{t.y}/{t.x}".format(
    t=TMS.tile(114.3025, 30.5025, 16)
)
"""A tile no client of the load asks for: the restarted worker can only hold it if a live
worker handed it over."""


def load_paths() -> list[str]:
    """What the clients ask for: health, tiles around the pipes, features."""
    tiles = list(TMS.tiles(114.28, 30.48, 114.36, 30.54, [14]))
    return [
        "/healthz",
        *(f"/collections/pipes/tiles/WebMercatorQuad/14/{t.y}/{t.x}" for t in tiles),
        "/collections/pipes/items?limit=5",
        "/healthz",
        "/collections/sites/items",
        *(f"/tiles/WebMercatorQuad/14/{t.y}/{t.x}?collections=pipes,sites" for t in tiles[:4]),
    ]


@dataclass
class Load:
    """What the clients saw."""

    sent: int = 0
    """Requests made (a request sent again on a new connection counts once)."""
    failed: int = 0
    """Requests without an answer, or answered 5xx."""
    reconnects: int = 0
    """Kept-alive connections found broken, on which the request went out again on a new
    connection (as browsers and HTTP libraries do; never after an answer)."""
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, *, failed: bool = False, reconnect: bool = False, error: str = "") -> None:
        """Count one request (or one reconnect)."""
        with self.lock:
            if reconnect:
                self.reconnects += 1
                return
            self.sent += 1
            self.failed += failed
            if error:
                self.errors.append(error)


def client(port: int, paths: list[str], until: float, load: Load, offset: int) -> None:
    """Keep-alive GETs of `paths` in turn until `until`."""
    conn: http.client.HTTPConnection | None = None
    reused = False
    for path in itertools.islice(itertools.cycle(paths), offset, None):
        if time.monotonic() >= until:
            break
        for retry in (False, True):
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                reused = False
            try:
                conn.request("GET", path)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                if reused and not retry:
                    load.count(reconnect=True)
                    continue
                load.count(failed=True, error=f"{path}: {exc!r}")
                break
            try:
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                load.count(failed=True, error=f"{path}: {exc!r} (after the status)")
                break
            reused = True
            status = response.status
            load.count(failed=status >= 500, error=f"{path}: {status}" if status >= 500 else "")
            if response.will_close:
                conn.close()
                conn = None
            break
    if conn is not None:
        conn.close()


def wait_for(what: str, timeout_s: float, probe):
    """`probe()`'s first true value, polled every 10 ms for `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"{what} within {timeout_s} s")


@dataclass
class KillRun:
    """A worker killed under load, and what followed."""

    served: Served
    killed: int
    survivor: int
    new: int
    load: Load
    new_pid_s: float
    """Seconds from the kill until the new worker's pid was among the server's children."""
    answered_s: float
    """Seconds from the kill until the new worker answered a request."""
    warm_body: bytes


@pytest.fixture(scope="module")
def killed_under_load(tmp_path_factory) -> Iterator[KillRun]:
    where = tmp_path_factory.mktemp("restart")
    store = fill_store(where / "store", [wuhan_pipes(), sites_layer()])
    with serving(store, 2, where / "serve.log") as served:
        port, parent = served.port, served.proc.pid
        killed, survivor = workers = children(parent)
        conn = connect_to(port, survivor, workers)
        status, warm_body = get(conn, WARM)  # rendered by the survivor (and handed on)
        conn.close()
        assert status == 200 and warm_body

        load = Load()
        paths = load_paths()
        until = time.monotonic() + LOAD_S
        threads = [
            threading.Thread(target=client, args=(port, paths, until, load, i), daemon=True)
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        try:
            time.sleep(KILL_AT_S)
            killed_at = time.monotonic()
            os.kill(killed, signal.SIGKILL)

            def new_worker() -> int | None:
                return next((p for p in children(parent) if p not in workers), None)

            new = wait_for("a new worker", 10, new_worker)
            new_pid_s = time.monotonic() - killed_at
            connect_to(port, new, [survivor, new]).close()
            answered_s = time.monotonic() - killed_at
        finally:
            for t in threads:
                t.join(timeout=LOAD_S + 30)
        yield KillRun(served, killed, survivor, new, load, new_pid_s, answered_s, warm_body)


def test_killing_a_worker_under_load_fails_under_one_percent(killed_under_load):
    run = killed_under_load
    load = run.load
    print(
        f"\nrequests {load.sent}, failed {load.failed}, broken keep-alive connections "
        f"reopened {load.reconnects}; new worker {run.new} listed after {run.new_pid_s:.3f} s, "
        f"answering after {run.answered_s:.3f} s; failures: {load.errors}"
    )
    assert load.sent > 200, load.sent  # a real load, not a trickle
    assert load.failed < 0.01 * load.sent, load.errors[:20]
    assert run.new_pid_s < 5 and run.answered_s < 5
    assert sorted(children(run.served.proc.pid)) == sorted([run.survivor, run.new])
    log = run.served.output()
    assert re.search(
        rf"worker {run.killed} was killed by SIGKILL after [0-9.]+ s; restarting it in 0\.1 s", log
    ), log
    assert f"worker {run.new} started (restart 1)" in log


def test_every_worker_counts_the_restart(killed_under_load):
    run = killed_under_load
    for pid in (run.survivor, run.new):
        conn = connect_to(run.served.port, pid, [run.survivor, run.new])
        assert metric(conn, "twin_worker_restarts_total") == {"": 1.0}
        assert metric(conn, "twin_workers") == {"": 2.0}
        conn.close()


def test_the_new_worker_starts_with_the_tiles_of_the_others(killed_under_load):
    run = killed_under_load
    conn = connect_to(run.served.port, run.new, [run.survivor, run.new])
    before = lookups(conn)
    status, body = get(conn, WARM)
    after = lookups(conn)
    conn.close()
    assert status == 200 and body == run.warm_body
    assert after.get("miss", 0) == before.get("miss", 0)  # not rendered by the new worker
    assert after["hit"] == before.get("hit", 0) + 1


def intersects_body() -> bytes:
    """A dig check around the first vertex of a pipe of the store."""
    lon, lat = shapely.get_coordinates(wuhan_pipes().geometry[0])[0]
    return json.dumps(
        {"geometry": {"type": "Point", "coordinates": [lon, lat]}, "buffer_m": 20}
    ).encode()


def test_sigterm_drains_requests_in_flight_and_stops_within_the_bound(tmp_path):
    store = fill_store(tmp_path / "store", [wuhan_pipes(), sites_layer()])
    with serving(store, 2, tmp_path / "serve.log") as served:
        proc, port = served.proc, served.port
        draining, stuck = workers = children(proc.pid)
        conn = connect_to(port, draining, workers)
        os.kill(stuck, signal.SIGSTOP)  # a worker that cannot drain: it must be killed
        body = intersects_body()
        conn.putrequest("POST", "/query/intersects")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[:10])  # in flight: the server waits for the rest of the body
        time.sleep(0.3)
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        conn.send(body[10:])
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        code = proc.wait(timeout=KILL_AFTER_S + 15)
        took = time.monotonic() - asked
        log = served.output()
    assert response.status == 200 and any(f["collection"] == "pipes" for f in answer["features"])
    assert code == 0, log
    assert KILL_AFTER_S - 1 < took < KILL_AFTER_S + 5, took
    assert not any(map(running, workers))
    assert f"worker {stuck} did not stop in time; killing it" in log
    assert f"twin: worker {draining} served" in log  # it shut down by itself, and reported
    assert "started (restart" not in log  # no worker is restarted while stopping


def test_a_worker_that_keeps_dying_waits_longer_each_time(tmp_path):
    store = fill_store(tmp_path / "store", [sites_layer()])
    with serving(store, 2, tmp_path / "serve.log") as served:
        parent = served.proc.pid
        first, other = children(parent)
        known = {first, other}
        victim = first
        waited = []
        for _ in range(3):
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            victim = wait_for(
                "a new worker",
                10,
                lambda: next((p for p in children(parent) if p not in known), None),
            )
            waited.append(time.monotonic() - killed_at)
            known.add(victim)
        os.kill(other, signal.SIGKILL)  # the other slot starts its own back-off
        wait_for(
            "a new worker", 10, lambda: next((p for p in children(parent) if p not in known), None)
        )
        log = served.output()
    delays = [float(d) for d in re.findall(r"restarting it in ([0-9.]+) s", log)]
    assert delays == [0.1, 0.2, 0.4, 0.1], log
    assert waited[2] >= 0.4 > waited[0], waited


def test_the_backoff_doubles_for_quick_deaths_and_resets_after_a_long_life():
    backoff = Backoff(first=0.1, longest=10.0, settle=30.0)
    quick = [backoff.delay(lived=0.5) for _ in range(10)]
    assert quick == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10, 10])
    assert backoff.delay(lived=29.9) == 10  # still quick
    assert backoff.delay(lived=30.0) == 0.1  # lived a while: starts over
    assert backoff.delay(lived=1.0) == 0.2
    forever = Backoff()
    assert [forever.delay(0) for _ in range(200)][-1] == forever.longest  # no overflow


def test_the_server_stops_when_no_worker_can_start(tmp_path):
    """Never a supervisor without workers: when restarts cannot open the store and the last
    worker dies, the server stops with exit code 1."""
    store = fill_store(tmp_path / "store", [sites_layer()])
    with serving(store, 2, tmp_path / "serve.log") as served:
        first, second = children(served.proc.pid)
        store.rename(tmp_path / "moved")
        os.kill(first, signal.SIGKILL)
        os.kill(second, signal.SIGKILL)
        code = served.proc.wait(timeout=30)
        log = served.output()
    assert code == 1, log
    assert "cannot open the store" in log
    assert re.search(r"could not start \(exit code 3\) and no worker is left", log), log


def test_workers_stop_when_the_supervisor_dies(tmp_path):
    """A worker left without its supervisor stops: a new server could not take the port."""
    store = fill_store(tmp_path / "store", [sites_layer()])
    with serving(store, 2, tmp_path / "serve.log") as served:
        workers = children(served.proc.pid)
        served.proc.kill()
        served.proc.wait(timeout=10)
        wait_for("the workers to stop", 10, lambda: not any(map(running, workers)))


def test_a_new_peer_gets_the_held_tiles_and_a_dead_one_is_dropped():
    held = TileCache(level=9)
    keys = [TileKey.of(Tile(x, 5, 4), ["pipes"]) for x in range(3)]
    for i, key in enumerate(keys):
        held.insert(key, pack(b"\x1a\x03abc" * (i + 2), 9))
    fresh = TileCache(level=1)
    closed: list[bool] = []

    async def main() -> None:
        old_end, new_end = link()
        worker_control, supervisor_control = control_pair()
        a = TilePeers([], worker_control, lambda: closed.append(True))
        b = TilePeers([new_end])  # started after `a`, as a restarted worker is
        await a.start(held)
        await b.start(fresh)
        assert send_link(supervisor_control, old_end)
        old_end.close()
        for _ in range(3000):
            if b.received == len(keys):
                break
            await asyncio.sleep(0.01)
        assert a.links == 1 and a.warmed == len(keys)
        await b.close()  # the new worker dies: `a` drops its link
        for _ in range(3000):
            if not a.links:
                break
            await asyncio.sleep(0.01)
        assert a.links == 0
        supervisor_control.close()  # the supervisor dies
        for _ in range(3000):
            if closed:
                break
            await asyncio.sleep(0.01)
        await a.close()

    asyncio.run(main())
    assert closed == [True]
    for key in keys:
        got, sent = fresh.peek(key), held.peek(key)
        assert got is not None and sent is not None
        assert got.raw() == sent.raw() and got.data == sent.data  # gzip bytes came along
