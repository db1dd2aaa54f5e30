"""Live twin benchmark (issue 10): readings ingested per second (batches of 1,000 over 100k
street lights) while a tile list is being served, the tiles' p95 during ingest against idle,
and the time from a reading's POST to its event at an SSE subscriber; against the floor a
user would reach for, a PostgreSQL table written with one `INSERT ... ON CONFLICT` per batch
(history kept, latest by time), measured in the same run. Run by hand, one benchmark at a time:

    flock /tmp/twin-bench.lock .venv/bin/python bench/live_bench.py --label run1
    .venv/bin/python bench/live_bench.py --quick            # 5 s phases, 10k lights: a check

What it does:

1. Builds a store of N lights (a jittered grid over ~6 x 6 km of Jiangxia, Wuhan) once into
   `$TMPDIR/twin-live-bench/lights-N` and copies it afresh for the run.
2. Starts `twin serve --workers W` on the copy (stopped by its PID at the end), fetches every
   tile of the list once (z14-16 over the lights, `/collections/lights/tiles/...`).
3. Idle phase: `--tile-clients` keep-alive clients fetch random tiles of the list for
   `--seconds`; each tile's latency is recorded.
4. Ingest phase, the same tile load plus `--posters` clients POSTing batches of 1,000
   readings (random lamps, `status`, times increasing) as fast as they are answered, and one
   SSE subscriber on `/events?bbox=` over a small part of the area: each event's delay is
   its arrival less the start of the POST that carried it (matched by the change-log
   sequence numbers the POST's answer gives: `revision`, `changed`).
5. The floor: the same batches into PostgreSQL (127.0.0.1:5432, `--pg-dsn`), one statement
   per batch (readings appended, state upserted where newer), for the same number of batches.

Printed: readings/s (twin over HTTP, PostgreSQL floor, ratio), tile p50/p95/p99 idle and
during ingest (ratio), event delay p50/p95/p99 and count, against the aims (>= 50,000
readings/s, tile p95 <= 2x idle, event p95 < 100 ms). JSON to bench/results/live_<label>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import shapely

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from overload_bench import Server, tiles_covering  # noqa: E402

from layers.gpkg import GeoPackageStore  # noqa: E402
from layers.keys import KeyRing  # noqa: E402
from layers.layer import (  # noqa: E402
    Layer,
    coerce,
    empty_attrs,
)
from layers.schemas import LIGHTS  # noqa: E402

BOX = (114.28, 30.33, 114.34, 30.39)
BATCH = 1000
AIMS = {"readings_per_s": 50_000, "tile_p95_ratio": 2.0, "event_p95_ms": 100.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_store(n: int) -> Path:
    """N lights on a jittered grid over BOX, made once."""
    where = Path(tempfile.gettempdir()) / "twin-live-bench" / f"lights-{n}"
    if (where / "twin.gpkg").exists():
        return where
    rng = np.random.default_rng(1)
    side = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid(np.linspace(BOX[0], BOX[2], side), np.linspace(BOX[1], BOX[3], side))
    xs = gx.ravel()[:n] + rng.uniform(-2e-5, 2e-5, n)
    ys = gy.ravel()[:n] + rng.uniform(-2e-5, 2e-5, n)
    attrs = empty_attrs(LIGHTS, n)
    attrs["status"] = coerce(pd_series(["on"] * n), LIGHTS.field("status").type)
    attrs["wattage_w"] = coerce(pd_series([60.0] * n), LIGHTS.field("wattage_w").type)
    ids = np.array([f"L{i:07d}" for i in range(n)], dtype=object)
    layer = Layer(LIGHTS, ids, shapely.points(xs, ys), attrs)
    store = GeoPackageStore(where)
    try:
        store.write(layer, source="bench", user="bench")
    finally:
        store.close()
    return where


def pd_series(values: list[Any]) -> Any:
    import pandas as pd

    return pd.Series(values)


class TileLoad:
    """Keep-alive clients fetching random tiles of the list; (start, latency) of each."""

    def __init__(self, port: int, paths: list[str], clients: int) -> None:
        self.port, self.paths, self.clients = port, paths, clients
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self, seconds: float) -> list[tuple[float, float]]:
        self.samples, self.errors = [], 0
        self.stop.clear()
        threads = [threading.Thread(target=self._client, args=(i,)) for i in range(self.clients)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join()
        return self.samples

    def _client(self, i: int) -> None:
        rng = random.Random(i)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        mine: list[tuple[float, float]] = []
        while not self.stop.is_set():
            path = rng.choice(self.paths)
            t0 = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
                r = conn.getresponse()
                r.read()
                if r.status not in (200, 204):
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            mine.append((t0, time.perf_counter() - t0))
        self.samples.extend(mine)


def batches(ids: list[str], count: int, seed: int, start: dt.datetime) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for b in range(count):
        t = start + dt.timedelta(seconds=b)
        out.append(
            [
                {
                    "collection": "lights",
                    "id": rng.choice(ids),
                    "time": (t + dt.timedelta(microseconds=i * 500)).isoformat(),
                    "property": "status",
                    "value": rng.choice(("on", "off", "fault")),
                }
                for i in range(BATCH)
            ]
        )
    return out


class Posters:
    """Clients POSTing batches (JSON made beforehand: a sensor gateway's cost, not the
    server's) as fast as they are answered; what each POST covered. Run in a process of
    their own (`post`), so the tile clients' threads do not wait on their GIL."""

    def __init__(self, port: int, bodies: list[bytes], clients: int, key: str) -> None:
        self.port, self.bodies, self.clients = port, bodies, clients
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        self.posts: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> bytes | None:
        with self._lock:
            if self._next >= len(self.bodies):
                return None
            self._next += 1
            return self.bodies[self._next - 1]

    def client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            body = self._take()
            if body is None:
                return
            t0 = time.monotonic()
            conn.request("POST", "/twin/observations", body, self.headers)
            r = conn.getresponse()
            answer = json.loads(r.read())
            t1 = time.monotonic()
            if r.status == 200:
                timing = server_timing(r.getheader("Server-Timing") or "")
                self.posts.append(
                    {"start": t0, "end": t1, **answer, "rejected": 0, "timing": timing}
                )


def server_timing(header: str) -> dict[str, float]:
    """The `name;dur=ms` parts of a Server-Timing header."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


class LoadAverage:
    """/proc/loadavg's 1-minute figure sampled every second in a thread (the machine is
    shared: the figures of a run say how busy it was)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            with contextlib.suppress(OSError, ValueError):
                self.samples.append(float(Path("/proc/loadavg").read_text().split()[0]))

    def __enter__(self) -> LoadAverage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def figures(self) -> dict[str, float | None]:
        s = self.samples
        return {
            "min": min(s, default=None),
            "max": max(s, default=None),
            "last": s[-1] if s else None,
        }


def post(port: int, bodies: list[bytes], clients: int, key: str, stop: Any, out: str) -> None:
    """`Posters` (sending readings with an engineer's `key`) until `stop` is set, then what
    each POST covered written to `out`."""
    posters = Posters(port, bodies, clients, key)
    threads = [threading.Thread(target=posters.client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    stop.wait()
    posters.stop.set()
    for t in threads:
        t.join()
    Path(out).write_text(
        json.dumps({"seconds": time.monotonic() - started, "posts": posters.posts})
    )
    os._exit(0)


def subscribe(port: int, query: str, seconds: float, out: str) -> None:
    """One SSE stream in a process of its own (the load's threads would delay its reads):
    the arrival time (CLOCK_MONOTONIC, shared by all processes) of each event id, written to
    `out` as JSON after `seconds`."""
    arrivals: dict[int, float] = {}
    after_stamp: list[float] = []  # arrival less the time the store recorded the change

    def read() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=None)
        conn.request("GET", f"/events?{query}")
        r = conn.getresponse()
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            for raw in r:
                if raw.startswith(b"id:"):
                    arrivals[int(raw[3:])] = time.monotonic()
                elif raw.startswith(b"data:") and len(after_stamp) < 100_000:
                    stamp = json.loads(raw[5:])["time"]
                    recorded = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
                    after_stamp.append(time.time() - recorded.timestamp())

    threading.Thread(target=read, daemon=True).start()
    time.sleep(seconds)
    Path(out).write_text(json.dumps({"arrivals": arrivals, "after_stamp": after_stamp}))
    os._exit(0)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def tile_stats(samples: list[tuple[float, float]]) -> dict[str, Any]:
    ms = [s[1] * 1000 for s in samples]
    return {"n": len(ms), "p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99)}


def pg_floor(dsn: str, work: list[list[dict]]) -> dict[str, Any]:
    """The same batches into PostgreSQL, one statement each: readings appended, the state
    upserted where the reading is newer."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS twin_bench_readings, twin_bench_state")
        conn.execute(
            "CREATE TABLE twin_bench_readings (id text, property text, time timestamptz, "
            "value jsonb)"
        )
        conn.execute(
            "CREATE TABLE twin_bench_state (id text, property text, time timestamptz, "
            "value jsonb, PRIMARY KEY (id, property))"
        )
        sql = (
            "WITH r AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], "
            "%s::jsonb[]) AS r(id, property, time, value)), "
            "h AS (INSERT INTO twin_bench_readings SELECT * FROM r) "
            "INSERT INTO twin_bench_state SELECT DISTINCT ON (id, property) * FROM r "
            "ORDER BY id, property, time DESC ON CONFLICT (id, property) DO UPDATE SET "
            "time = excluded.time, value = excluded.value "
            "WHERE twin_bench_state.time <= excluded.time"
        )
        t0 = time.perf_counter()
        for batch in work:
            conn.execute(
                sql,
                (
                    [r["id"] for r in batch],
                    [r["property"] for r in batch],
                    [r["time"] for r in batch],
                    [json.dumps(r["value"]) for r in batch],
                ),
            )
        seconds = time.perf_counter() - t0
        conn.execute("DROP TABLE twin_bench_readings, twin_bench_state")
    n = sum(len(b) for b in work)
    return {"readings": n, "seconds": seconds, "readings_per_s": n / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lights", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=30.0, help="each phase (quick: 5)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tile-clients", type=int, default=4)
    ap.add_argument("--posters", type=int, default=2)
    ap.add_argument("--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    ap.add_argument("--label")
    ap.add_argument("--profile", help="a directory: py-spy stacks of each worker during ingest")
    ap.add_argument(
        "--profile-gil", action="store_true", help="profile only threads holding the GIL"
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server log)")
    a = ap.parse_args()
    if a.quick:
        a.lights, a.seconds = 10_000, 5.0
    template = build_store(a.lights)
    work_dir = Path(tempfile.mkdtemp(prefix="twin-live-"))
    store = work_dir / "store"
    shutil.copytree(template, store)
    ids = [f"L{i:07d}" for i in range(a.lights)]
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    work = batches(ids, int(a.seconds * 200), 7, start)  # more than can be posted
    _, key = KeyRing.beside(store).add("live-bench", "engineer")  # readings need a key
    server = Server(store, a.workers, work_dir / "serve.log")
    log(f"store of {a.lights} lights; starting twin serve --workers {a.workers}")
    server.start()
    result: dict[str, Any] = {"lights": a.lights, "workers": a.workers, "batch": BATCH}
    try:
        paths = [
            f"/collections/lights/tiles/WebMercatorQuad/{z}/{y}/{x}"
            for zoom in (14, 15, 16)
            for z, x, y in tiles_covering(BOX, zoom)
        ]
        load = TileLoad(server.port, paths, a.tile_clients)
        log(f"{len(paths)} tiles: fetching each once")
        warm = TileLoad(server.port, paths, 1)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for p in paths:
            conn.request("GET", p)
            conn.getresponse().read()
        del warm
        log(f"idle: {a.tile_clients} tile clients for {a.seconds:g} s")
        with LoadAverage() as idle_load:
            idle = tile_stats(load.run(a.seconds))
        result["loadavg_idle"] = idle_load.figures()
        mid = ((BOX[0] + BOX[2]) / 2, (BOX[1] + BOX[3]) / 2)
        arrivals_file = work_dir / "arrivals.json"
        query = f"bbox={mid[0]},{mid[1]},{mid[0] + 0.01},{mid[1] + 0.01}"
        sub = multiprocessing.get_context("fork").Process(
            target=subscribe, args=(server.port, query, a.seconds + 5, str(arrivals_file))
        )
        sub.start()
        time.sleep(0.5)
        bodies = [json.dumps(b).encode() for b in work]
        fork = multiprocessing.get_context("fork")
        stop = fork.Event()
        posts_file = work_dir / "posts.json"
        poster = fork.Process(
            target=post, args=(server.port, bodies, a.posters, key, stop, str(posts_file))
        )
        log(f"ingest: {a.posters} posters of {BATCH}-reading batches with the same tile load")
        spies = []
        if a.profile:  # where the workers' time goes during ingest (py-spy, collapsed stacks)
            Path(a.profile).mkdir(parents=True, exist_ok=True)
            for pid in sorted(server.children()):
                out = Path(a.profile) / f"worker-{pid}.txt"
                spy = str(Path(sys.executable).parent / "py-spy")
                args = ["record", "-p", str(pid), "-d", str(int(a.seconds)), "-f", "raw"]
                args += ["-o", str(out), "-r", "200", "--nonblocking"]
                args += ["--gil"] if a.profile_gil else []
                spies.append(
                    subprocess.Popen(
                        [spy, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                )
        poster.start()
        with LoadAverage() as busy_load:
            busy = tile_stats(load.run(a.seconds))
        result["loadavg_ingest"] = busy_load.figures()
        stop.set()
        poster.join(timeout=60)
        for spy in spies:
            spy.wait(timeout=60)
        sub.join(timeout=a.seconds + 30)
        posted = json.loads(posts_file.read_text())
        elapsed = posted["seconds"]
        posts = posted["posts"]
        heard = json.loads(arrivals_file.read_text())
        arrivals = {int(k): v for k, v in heard["arrivals"].items()}
        since_recorded = [x * 1000 for x in heard["after_stamp"]]
        accepted = sum(p["accepted"] for p in posts)
        delays = []
        for p in posts:
            for seq in range(p["revision"] - p["changed"] + 1, p["revision"] + 1):
                if seq in arrivals:
                    delays.append((arrivals[seq] - p["start"]) * 1000)
        result["twin"] = {
            "batches": len(posts),
            "readings": accepted,
            "seconds": elapsed,
            "readings_per_s": accepted / elapsed,
            "post_ms_p50": pct([(p["end"] - p["start"]) * 1000 for p in posts], 50),
            "post_ms_p95": pct([(p["end"] - p["start"]) * 1000 for p in posts], 95),
            # Where the server says a POST's time went (its Server-Timing header), p50 ms.
            "server_timing_p50": {
                k: pct([p["timing"][k] for p in posts if k in p["timing"]], 50)
                for k in ("wait", "check", "write")
            },
        }
        result["tiles_idle"], result["tiles_ingest"] = idle, busy
        result["tile_errors"] = load.errors
        result["events"] = {
            "n": len(delays),
            "p50_ms": pct(delays, 50),
            "p95_ms": pct(delays, 95),
            "p99_ms": pct(delays, 99),
            # From when the store recorded the change (the POST's wait and write before it).
            "since_recorded_p50_ms": pct(since_recorded, 50),
            "since_recorded_p95_ms": pct(since_recorded, 95),
        }
    finally:
        result["server_stop"] = server.stop()
    log(f"PostgreSQL floor: the same {len(posts)} batches, one statement each")
    result["postgres"] = pg_floor(a.pg_dsn, work[: max(len(posts), 1)])
    twin_rate, pg_rate = result["twin"]["readings_per_s"], result["postgres"]["readings_per_s"]
    ratio = (busy["p95"] or 0) / (idle["p95"] or busy["p95"] or 1)
    result["ratios"] = {
        "readings_twin_over_pg": twin_rate / pg_rate,
        "tile_p95_ingest_over_idle": ratio,
    }
    result["aims"] = {
        "readings_per_s": twin_rate >= AIMS["readings_per_s"],
        "tile_p95_ratio": ratio <= AIMS["tile_p95_ratio"],
        "event_p95_ms": (result["events"]["p95_ms"] or 1e9) < AIMS["event_p95_ms"],
    }
    print(json.dumps(result, indent=2, default=float))
    print(
        f"readings/s: twin {twin_rate:,.0f} over HTTP, PostgreSQL floor {pg_rate:,.0f} "
        f"({twin_rate / pg_rate:.2f}x); tile p95 idle {idle['p95'] or 0:.1f} ms, during ingest "
        f"{busy['p95'] or 0:.1f} ms ({ratio:.2f}x); events p50/p95 "
        f"{result['events']['p50_ms']} / {result['events']['p95_ms']} ms "
        f"({result['events']['n']} events); aims {result['aims']}; POST p50 "
        f"{result['twin']['post_ms_p50']:.0f} ms (server: {result['twin']['server_timing_p50']}); "
        f"load average {result['loadavg_idle']} idle, {result['loadavg_ingest']} ingest"
    )
    if a.label:
        out = ROOT / "bench" / "results" / f"live_{a.label}.json"
        out.write_text(json.dumps(result, indent=2, default=float))
        log(f"wrote {out}")
    if not a.keep:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
