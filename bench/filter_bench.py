"""Filtered items on PostGIS (issue 13): the selection compiled to SQL (`Store.select`) against
the chunk scan evaluated in memory (what a server not holding the layer did before), in the
same run, on the same server and database.

Run by hand (never in tests), one benchmark at a time on the machine:

    flock /tmp/twin-bench.lock .venv/bin/python bench/filter_bench.py --n 200000
    flock /tmp/twin-bench.lock .venv/bin/python bench/filter_bench.py --n 1000000 --keep

What it does: the kit's city (`../shared/bench/gen_city.py --n N`, cached in
$TMPDIR/twin-filterbench) has its pipes written by `PostGISStore.write` into a fresh database
`twin_filterbench_N` on the PostgreSQL at `--pg` (ANALYZEd; `--keep` keeps it for the next
run). The app (`twin.app.create_app` over that store: a `WindowCatalog`, as `twin serve` on
PostGIS) answers `GET /collections/pipes/items?...&limit=10` for a few typical selections,
in process (FastAPI's TestClient: routing, the selection, the page's GeoJSON), each first by
SQL, then with `Catalog.select` switched off so that the same request scans the layer a chunk
at a time. Every pair of answers is checked equal (features and numberMatched). Prints p50 /
p95 ms of each and the scan / SQL ratio, and writes them to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KIT = ROOT.parent / "shared" / "bench" / "gen_city.py"
CENTRE = (114.316, 30.351)  # inside the kit's dense 6 km box

CASES = [
    ("equality (filter)", "filter=" + quote("material = 'PE'")),
    ("two comparisons", "filter=" + quote("diameter_mm >= 300 AND install_year < 1985")),
    ("LIKE prefix", "filter=" + quote("pressure_zone LIKE 'PZ-1%'")),
    ("IN list", "filter=" + quote("material IN ('PVC', 'CI') AND diameter_mm > 400")),
    ("property=value", "material=DI&diameter_mm=300"),
    ("datetime", "datetime=" + quote("../1975-12-31")),
    (
        "S_DWITHIN 200 m",
        "filter=" + quote(f"S_DWITHIN(geometry, POINT({CENTRE[0]} {CENTRE[1]}), 200)"),
    ),
    (
        "S_INTERSECTS box + attr",
        "filter="
        + quote(
            f"S_INTERSECTS(geometry, BBOX({CENTRE[0] - 0.01}, {CENTRE[1] - 0.01}, "
            f"{CENTRE[0] + 0.01}, {CENTRE[1] + 0.01})) AND install_year >= 2000"
        ),
    ),
    ("no match", "filter=" + quote("diameter_mm > 100000")),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def city(n: int, cache: Path) -> Path:
    out = cache / f"city_{n}.gpkg"
    if not out.exists():
        log(f"generating the kit's city, {n} pipes")
        subprocess.run([sys.executable, str(KIT), "--n", str(n), "--out", str(out)], check=True)
    return out


def database(pg: str, n: int, gpkg: Path, keep: bool) -> str:
    import psycopg

    from bench.city import load_city
    from layers.postgis import PostGISStore

    name = f"twin_filterbench_{n}"
    url = pg.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg, autocommit=True) as db:
        found = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found and keep:
            log(f"reusing database {name}")
            return url
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')
    layer = load_city(gpkg, "pipes")
    log(f"writing {len(layer)} pipes into {name}")
    t0 = time.perf_counter()
    store = PostGISStore(url)
    try:
        store.write(layer, source="gen_city", user="bench")
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM ANALYZE")
    log(f"written in {time.perf_counter() - t0:.1f} s")
    return url


def timed(client: Any, url: str, repeat: int) -> tuple[list[float], dict]:
    out, doc = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        doc = r.json()
    return out, doc


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="pipes of the city")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--repeat", type=int, default=20, help="SQL requests per selection")
    ap.add_argument("--scan-repeat", type=int, default=3, help="scanned requests per selection")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    from fastapi.testclient import TestClient

    from layers.settings import StoreSettings
    from twin.app import create_app
    from twin.settings import GuardSettings, LimitSettings, ServerSettings

    cache = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "twin-filterbench"
    cache.mkdir(parents=True, exist_ok=True)
    url = database(a.pg, a.n, city(a.n, cache), a.keep)
    app = create_app(
        ServerSettings(_env_file=None),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=url),  # type: ignore[call-arg]
        # The scan of a large layer outlasts the default budget of a request (10 s): a 400.
        guard_settings=GuardSettings(_env_file=None, request_timeout_s=600),  # type: ignore[call-arg]
        limit_settings=LimitSettings(  # type: ignore[call-arg]
            _env_file=None, rate_anonymous=0, rate_viewer=0, rate_engineer=0, rate_admin=0
        ),
    )
    rows = []
    try:
        with TestClient(app) as client:
            catalog = app.state.catalog
            assert not catalog.holds
            for label, query in CASES:
                path = f"/collections/pipes/items?{query}&limit=10"
                timed(client, path, 1)  # warm the plan and the page cache
                sql_ms, by_sql = timed(client, path, a.repeat)
                catalog.select = lambda *args, **kw: None  # the chunk scan, as before
                try:
                    scan_ms, by_scan = timed(client, path, a.scan_repeat)
                finally:
                    del catalog.select
                for doc in (by_sql, by_scan):
                    doc.pop("timeStamp", None)
                assert by_sql == by_scan, label
                row = {
                    "selection": label,
                    "query": query,
                    "matched": by_sql["numberMatched"],
                    "sql_p50_ms": statistics.median(sql_ms),
                    "sql_p95_ms": pct(sql_ms, 0.95),
                    "scan_p50_ms": statistics.median(scan_ms),
                    "scan_p95_ms": pct(scan_ms, 0.95),
                }
                row["ratio_p50"] = row["scan_p50_ms"] / row["sql_p50_ms"]
                rows.append(row)
                log(
                    f"{label:26s} matched {row['matched']:>7}  SQL p50 {row['sql_p50_ms']:8.1f} "
                    f"p95 {row['sql_p95_ms']:8.1f}  scan p50 {row['scan_p50_ms']:8.1f} "
                    f"p95 {row['scan_p95_ms']:8.1f} ms  x{row['ratio_p50']:.0f}"
                )
    finally:
        if not a.keep:
            import psycopg

            with psycopg.connect(a.pg, autocommit=True) as db:
                db.execute(f'DROP DATABASE IF EXISTS "twin_filterbench_{a.n}" WITH (FORCE)')
    print()
    print("| selection | matched | SQL p50 / p95 ms | chunk scan p50 / p95 ms | scan ÷ SQL (p50) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['selection']} | {r['matched']:,} | {r['sql_p50_ms']:.1f} / {r['sql_p95_ms']:.1f} "
            f"| {r['scan_p50_ms']:.0f} / {r['scan_p95_ms']:.0f} | {r['ratio_p50']:.0f}× |"
        )
    if a.out:
        a.out.write_text(json.dumps({"n": a.n, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
