"""Network traces on PostGIS (issue 13): windows of the network (`twin.trace_window`) against
the whole layers' network held in memory, the same requests, one run.

Run by hand (never in tests), one benchmark at a time on the machine:

    flock /tmp/twin-bench.lock .venv/bin/python bench/trace_bench.py --sizes 100000,1000000
    flock /tmp/twin-bench.lock .venv/bin/python bench/trace_bench.py --sizes 20000 --requests 20

What it does, for each size N:

1. a region of N pipes: copies of the small demo town's networks (`importers.demo_assets`:
   water and heat with valves, hydrants and two pumps per town, gas without pumps, sewer and
   storm by gravity; 6,056 pipes and 1,570 valves a town) laid on a grid 0.05 degrees apart,
   so each network of a town is one component of a few thousand pipes, and the region grows
   by towns; written by `PostGISStore.write` into a fresh database `twin_trace_N` on
   127.0.0.1:5432 (dropped afterwards unless `--keep`);
2. the same list of requests (seeded): isolations of water, heat and gas pipes (gas: the
   largest remaining part is taken as fed, so the whole of the town's gas component is read)
   and upstream and downstream traces of sewer and storm pipes, spread over every town;
3. two servers in turn (`twin.server.serve`, 1 worker, no rate limit): `windows` (the PostGIS
   default: nothing of the layers held, traces on windows) and `whole` (`TWIN_HOLD_LAYERS=1`:
   every layer held, the network of the whole layers built at start-up); each gets the list
   twice at c=1 (the first pass: each pipe asked once; the second: again, the networks of the
   windows kept), timed per request; the server's start-up time, VmRSS after start and after
   the passes and its VmHWM (from /proc);
4. the answers of both servers compared byte for byte (every request of both passes).

A table of p50/p95/max per pass, RSS and start-up, the ratios windows/whole, and whether the
answers were alike; JSON to `--out` (default `bench/results/trace.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from pg_bench import LAUNCH, memory, tree, wait_http  # bench/ is this script's path

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PORT = 8197
STEP = 0.05  # degrees between towns: ~4.8 km east, ~5.5 km north; a town is ~3 km across


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the region --------------------------------------------------------------------------------


def region(n: int) -> tuple[Any, Any]:
    """Pipes and valves layers of ~n pipes: copies of the small demo town on a grid."""
    from importers import demo_assets, demo_city
    from layers.layer import SOURCE, Layer, coerce, empty_attrs
    from layers.schemas import PIPES, VALVES

    city = demo_city.build_city("small", 1)
    pipes, fittings = demo_assets.pipes_and_fittings(city)
    pipes, fittings = pipes.to_crs(4326), fittings.to_crs(4326)
    towns = max(1, round(n / len(pipes)))
    side = int(np.ceil(np.sqrt(towns)))

    def layer(schema: Any, df: Any, id_col: str, cols: list[str]) -> Layer:
        k = len(df)
        geoms, ids, parts = [], [], []
        for t in range(towns):
            dx, dy = (t % side) * STEP, (t // side) * STEP
            moved = shapely.transform(df.geometry.to_numpy(), lambda c, d=np.array([dx, dy]): c + d)
            geoms.append(moved)
            ids.append(np.char.add(f"t{t}-", df[id_col].to_numpy().astype(str)))
            parts.append(df[cols])
        attrs = empty_attrs(schema, k * towns)
        both = pd.concat(parts, ignore_index=True)
        for c in cols:
            attrs[c] = coerce(both[c].to_numpy(), schema.field(c).type).to_numpy()
        attrs[SOURCE] = pd.array(["trace_bench"] * (k * towns), dtype="string")
        return Layer(schema, np.concatenate(ids).astype(object), np.concatenate(geoms), attrs)

    p = layer(
        PIPES,
        pipes,
        "pipe_id",
        ["network", "material", "diameter_mm", "install_year", "depth_m", "status"],
    )
    v = layer(
        VALVES,
        fittings,
        "valve_id",
        ["kind", "network", "normally_open", "operable", "diameter_mm", "status"],
    )
    return p, v


def database(n: int, keep: bool) -> str:
    """A fresh database holding the region of n pipes; its URL."""
    import psycopg

    from layers.postgis import PostGISStore

    name = f"twin_trace_{n}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as db:
        exists = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and keep:
            log(f"{name}: kept from an earlier run")
            return url
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    t0 = time.perf_counter()
    pipes, valves = region(n)
    log(f"{name}: region of {len(pipes):,} pipes, {len(valves):,} valves made")
    store = PostGISStore(url)
    try:
        for lyr in (pipes, valves):
            store.write(lyr, source="trace_bench", user="bench")
    finally:
        store.close()
    log(f"{name}: written in {time.perf_counter() - t0:.0f} s")
    return url


def drop(n: int) -> None:
    import psycopg

    with psycopg.connect(ADMIN, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "twin_trace_{n}" WITH (FORCE)')


def requests(url: str, count: int, seed: int) -> list[str]:
    """The request paths: isolations (water, heat, gas) and gravity traces (sewer up and down,
    storm down), pipes drawn over every town."""
    import psycopg

    rng = np.random.default_rng(seed)
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT id, network FROM layers.pipes WHERE status IS DISTINCT FROM "
            "'abandoned' AND network IS NOT NULL ORDER BY fid"
        ).fetchall()
    ids = np.array([r[0] for r in rows], dtype=object)
    nets = np.array([r[1] for r in rows], dtype=object)
    plan = [("water", "isolation", 0.3), ("heat", "isolation", 0.1), ("gas", "isolation", 0.2)]
    plan += [
        ("sewer", "upstream", 0.15),
        ("sewer", "downstream", 0.1),
        ("storm", "downstream", 0.15),
    ]
    out = []
    for kind, what, share in plan:
        pick = rng.choice(ids[nets == kind], max(1, round(count * share)), replace=False)
        out += [f"/collections/pipes/items/{fid}/{what}" for fid in pick]
    rng.shuffle(out)
    return out


# -- the servers -------------------------------------------------------------------------------


class Server:
    """`twin.server.serve` over the database, one worker, in its own session."""

    def __init__(self, url: str, hold: bool, logfile: Path) -> None:
        self.url, self.hold, self.logfile = url, hold, logfile
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
        env.update({f"TWIN_RATE_{r}": "0" for r in ("ANONYMOUS", "VIEWER", "ENGINEER")})
        env["TWIN_HOLD_LAYERS"] = "1" if self.hold else "0"
        env["TWIN_REQUEST_TIMEOUT_S"] = "600"
        args = [sys.executable, "-c", LAUNCH, self.url, str(PORT), "1"]
        with open(self.logfile, "ab") as f:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=f, stderr=f, start_new_session=True
            )
        proc = self.proc
        return wait_http(f"http://127.0.0.1:{PORT}/healthz", lambda: proc.poll() is None, 3600)

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for p in pids[1:]:  # a worker of ours left behind, stopped by its PID
            with contextlib.suppress(OSError):
                if b"twin.server" in Path(f"/proc/{p}/cmdline").read_bytes():
                    os.kill(p, signal.SIGKILL)
        self.proc = None


def ask(paths: list[str]) -> tuple[list[float], list[bytes]]:
    """Each path once, in order, on one connection: milliseconds and bodies."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=900)
    times, bodies = [], []
    for path in paths:
        t0 = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        times.append((time.perf_counter() - t0) * 1000)
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status} {body[:300]!r}")
        bodies.append(body)
    conn.close()
    return times, bodies


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "max_ms": round(float(a.max()), 1),
        "mean_ms": round(float(a.mean()), 1),
    }


def run(url: str, paths: list[str], hold: bool, logfile: Path) -> dict[str, Any]:
    server = Server(url, hold, logfile)
    try:
        start_s = server.start()
        assert server.proc is not None
        pid = server.proc.pid
        after_start = memory(pid)
        first, bodies1 = ask(paths)
        second, bodies2 = ask(paths)
        after = memory(pid)
    finally:
        server.stop()
    return {
        "start_s": round(start_s, 1),
        "rss_after_start_mb": after_start["vmrss_mb"],
        "rss_after_mb": after["vmrss_mb"],
        "hwm_mb": after["vmhwm_mb"],
        "first": stats(first),
        "second": stats(second),
        "first_request_ms": round(first[0], 1),
        "bodies": bodies1 + bodies2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the databases")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/trace.json")
    a = ap.parse_args()
    results: dict[str, Any] = {"requests": a.requests, "seed": a.seed, "sizes": {}}
    logfile = Path(os.environ.get("TMPDIR", "/tmp")) / "twin-trace-bench.log"
    for n in [int(s) for s in a.sizes.split(",")]:
        url = database(n, a.keep)
        try:
            paths = requests(url, a.requests, a.seed)
            row: dict[str, Any] = {"paths": len(paths)}
            for mode, hold in (("windows", False), ("whole", True)):
                log(f"{n:,} pipes: {mode} server")
                row[mode] = run(url, paths, hold, logfile)
                w = row[mode]
                log(
                    f"{n:,} {mode}: start {w['start_s']} s, first pass p50 {w['first']['p50_ms']}"
                    f" p95 {w['first']['p95_ms']} ms, second p50 {w['second']['p50_ms']} p95 "
                    f"{w['second']['p95_ms']} ms, RSS {w['rss_after_start_mb']:.0f} -> "
                    f"{w['rss_after_mb']:.0f} MB (peak {w['hwm_mb']:.0f})"
                )
            row["alike"] = row["windows"].pop("bodies") == row["whole"].pop("bodies")
            for p in ("first", "second"):
                row[f"{p}_p95_ratio"] = round(
                    row["windows"][p]["p95_ms"] / row["whole"][p]["p95_ms"], 2
                )
            row["rss_ratio"] = round(row["windows"]["hwm_mb"] / row["whole"]["hwm_mb"], 2)
            results["sizes"][str(n)] = row
            log(f"{n:,}: answers alike: {row['alike']}; {json.dumps(row)}")
        finally:
            if not a.keep:
                drop(n)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict[str, Any]) -> str:
    lines = [
        "| pipes | server | start s | 1st pass p50 / p95 ms | 2nd pass p50 / p95 ms "
        "| RSS after start / after / peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for n, row in results["sizes"].items():
        for mode in ("windows", "whole"):
            w = row[mode]
            lines.append(
                f"| {int(n):,} | {mode} | {w['start_s']} | {w['first']['p50_ms']} / "
                f"{w['first']['p95_ms']} | {w['second']['p50_ms']} / {w['second']['p95_ms']} | "
                f"{w['rss_after_start_mb']:.0f} / {w['rss_after_mb']:.0f} / {w['hwm_mb']:.0f} |"
            )
        lines.append(
            f"| | windows/whole | | p95 x{row['first_p95_ratio']} | p95 x{row['second_p95_ratio']}"
            f" | peak x{row['rss_ratio']}; answers alike: {row['alike']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
