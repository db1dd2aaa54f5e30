"""Benchmark of `GET /search`: prefix queries over a million features.

Run by hand (never in tests), under the machine lock:

    flock /tmp/twin-bench.lock .venv/bin/python bench/search_bench.py [--n 1000000] [--queries 500]

Makes a generated layer of `--n` pipes (ids `city:W0000001`, own ids `W0000001`, a Chinese
street name on every tenth: what the demo carries, at scale) and 50k roads of Chinese names,
builds twin's search index (as warm-up does) and times, on the same prefix queries in the same
run:

- `baseline`: the naive scan a server without an index does: pandas `str.startswith` over the
  normalised id and name columns of every layer, the first `limit` matches;
- `twin`: `twin.search.search` as the route calls it (ranking, streets gathered, boxes);
- `http`: the real route through the app (`GET /search?q=`, TestClient in-process: routing,
  validation and JSON included).

Prints p50/p95/p99 per engine and the ratio to the baseline; the aim is p95 < 20 ms at 1M.

With `--postgis URL` (a server's maintenance database, e.g.
`postgresql://postgres@127.0.0.1:5432/postgres`) the same layers are also written into a
fresh database `twin_searchbench_<n>` there (`PostGISStore.write`, which keeps their search
keys) and, on the same queries in the same run:

- `sql`: the search of a server on PostGIS, in process (`WindowCatalog.search`: the keys read
  from `twin_search`, only the features matched read from the layers), its hits checked equal
  to `twin`'s (the embedded in-memory index) for every query;
- `http-pg`: `GET /search` against a real `twin serve` on the database (a child process),
  whose RSS is read (/proc) after start-up and a first request, and after every query;
- for scale, what a whole-layer read of `pipes` and its index (what `/search` did on PostGIS
  before) add to this process's RSS; and the time to write the layers and their keys.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from layers.layer import Layer, coerce, empty_attrs
from layers.models import Field, FieldType
from layers.schemas import PIPES, ROADS
from twin import search

STREETS = [
    "汤逊湖",
    "藏龙",
    "金港",
    "梅园",
    "凤凰",
    "丰收",
    "复兴",
    "江南",
    "荷塘",
    "文化",
    "民族",
    "熊廷弼",
    "纸坊",
    "庙山",
    "五里界",
]
SUFFIXES = ["路", "街", "大道", "北路", "南路", "东路", "西路"]


def _layer(schema: Any, n: int, ids: np.ndarray, rng: np.random.Generator, **cols: Any) -> Layer:
    x = 114.2 + rng.random(n) * 0.3
    y = 30.3 + rng.random(n) * 0.2
    geom = shapely.linestrings(np.stack([np.c_[x, y], np.c_[x + 0.001, y + 0.0005]], 1))
    attrs = empty_attrs(schema, n)
    for name, values in cols.items():
        attrs[name] = coerce(pd.Series(values, dtype=object), schema.field(name).type)
    return Layer(schema, ids, geom, attrs)


def make_layers(n: int, seed: int = 7) -> dict[str, Layer]:
    """`n` pipes and 50k roads with generated ids and Chinese street names."""
    rng = np.random.default_rng(seed)
    own = np.array([f"W{i:07d}" for i in range(1, n + 1)], dtype=object)
    streets = np.array([a + b for a in STREETS for b in SUFFIXES], dtype=object)
    pipes = _layer(
        PIPES.with_extras([Field("pipe_id", FieldType.STRING, extra=True)]),
        n,
        np.array([f"city:{o}" for o in own], dtype=object),
        rng,
        pressure_zone=rng.choice(["JX-低区", "JX-高区"], n),
        pipe_id=own,
    )
    m = 50_000
    roads = _layer(
        ROADS,
        m,
        np.array([f"osm:{i}" for i in range(m)], dtype=object),
        rng,
        name=[f"{s}{i % 7 or ''}" for i, s in enumerate(rng.choice(streets, m))],
    )
    return {"pipes": pipes, "roads": roads}


def baseline(frames: dict[str, list[pd.Series]], prefix: str, limit: int) -> int:
    """The naive scan: every normalised text column of every layer, `str.startswith`."""
    found = 0
    for columns in frames.values():
        hit = np.zeros(len(columns[0]), dtype=bool)
        for col in columns:
            hit |= col.str.startswith(prefix).to_numpy(bool)
        found += min(limit, int(hit.sum()))
    return found


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {p: float(np.percentile(ms, q)) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="pipes (features)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument(
        "--postgis", metavar="URL", help="also PostGIS: a maintenance database URL of a server"
    )
    parser.add_argument("--port", type=int, default=8197, help="of the `twin serve` on PostGIS")
    args = parser.parse_args()

    started = time.perf_counter()
    layers = make_layers(args.n)
    print(
        f"generated {sum(map(len, layers.values())):,} features in "
        f"{time.perf_counter() - started:.1f} s"
    )
    started = time.perf_counter()
    for layer in layers.values():
        search.index_of(layer)
    built = time.perf_counter() - started
    entries = sum(
        len(search.index_of(lyr).whole.keys) + len(search.index_of(lyr).words.keys)
        for lyr in layers.values()
    )
    print(f"index built in {built:.1f} s ({entries:,} entries)")
    frames = {
        name: [
            pd.Series(lyr.ids, dtype="string[pyarrow]").str.lower(),
            *(
                lyr.attrs[c].astype("string[pyarrow]").str.lower()
                for c in search.searched_columns(lyr)
            ),
        ]
        for name, lyr in layers.items()
    }

    rng = np.random.default_rng(11)
    pipes = layers["pipes"].attrs["pipe_id"].to_numpy(dtype=object)
    roads = layers["roads"].attrs["name"].to_numpy(dtype=object)
    queries = []
    for i in range(args.queries):
        if i % 2:
            own = str(rng.choice(pipes))
            queries.append(own[: rng.integers(3, 8)])  # W00, W0012, ...: many matches
        else:
            name = str(rng.choice(roads))
            queries.append(name[: rng.integers(1, 4)])

    from fastapi.testclient import TestClient

    app = _app(layers)
    times: dict[str, list[float]] = {"baseline": [], "twin": [], "http": []}
    with TestClient(app) as client:
        for q in queries:
            prefix = search.normalise(q)
            t = time.perf_counter()
            baseline(frames, prefix, args.limit)
            times["baseline"].append(time.perf_counter() - t)
            t = time.perf_counter()
            hits = search.search(layers, q, args.limit)
            times["twin"].append(time.perf_counter() - t)
            assert hits, q
            t = time.perf_counter()
            r = client.get("/search", params={"q": q, "limit": args.limit})
            times["http"].append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["features"], r.text

    base = percentiles(times["baseline"])
    print(f"{args.queries} prefix queries, limit {args.limit}, {args.n:,} pipes + 50,000 roads")
    print(f"{'engine':10} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'p95 vs baseline':>16}")
    for engine, ts in times.items():
        p = percentiles(ts)
        ratio = base["p95"] / p["p95"]
        print(f"{engine:10} {p['p50']:9.3f} {p['p95']:9.3f} {p['p99']:9.3f} {ratio:15.0f}×")
    aim = percentiles(times["http"])["p95"]
    print(f"aim p95 < 20 ms at 1M: {'met' if aim < 20 else 'NOT met'} ({aim:.2f} ms over HTTP)")
    if args.postgis:
        on_postgis(args, layers, queries, times)


def on_postgis(
    args: argparse.Namespace,
    layers: dict[str, Layer],
    queries: list[str],
    times: dict[str, list[float]],
) -> None:
    """The PostGIS rows (see the module's documentation), printed beside the embedded ones."""
    import tempfile

    import psycopg

    from layers import postgis_search as pgs
    from layers.catalog import WindowCatalog
    from layers.models import Access
    from layers.postgis import PostGISStore

    name = f"twin_searchbench_{args.n}"
    url = args.postgis.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(args.postgis, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')
    store = PostGISStore(url, raster_dir=tempfile.mkdtemp())
    server = None
    try:
        keying = [0.0, 0]
        reindex = pgs.reindex

        def timed(*a: Any, **k: Any) -> int:  # the keys' share of the writes
            t = time.perf_counter()
            got = reindex(*a, **k)
            keying[0] += time.perf_counter() - t
            keying[1] += got
            return got

        pgs.reindex = timed  # type: ignore[assignment]
        started = time.perf_counter()
        for layer in layers.values():
            store.write(layer, source="bench", user="bench")
        wrote = time.perf_counter() - started
        pgs.reindex = reindex  # type: ignore[assignment]
        with store._cursor() as cur:
            cur.execute("SELECT pg_total_relation_size('twin_search')")
            (size,) = cur.fetchone() or (0,)
            cur.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN "
                "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'layers' "
                "AND c.relkind = 'r'"
            )
            (tables,) = cur.fetchone() or (0,)
        print(
            f"postgis: layers written in {wrote:.1f} s, {keying[0]:.1f} s of it their "
            f"{keying[1]:,} search keys; twin_search {size / 2**20:.0f} MB with its indexes, "
            f"the layers' tables {int(tables) / 2**20:.0f} MB"
        )
        catalog = WindowCatalog(store)
        times["sql"], times["http-pg"] = [], []
        for q in queries:
            t = time.perf_counter()
            hits = search.search_catalog(catalog, Access.RESTRICTED, q, args.limit)
            times["sql"].append(time.perf_counter() - t)
            assert hits == search.search(layers, q, args.limit), q  # the same hits, in order
        server = _serve(url, args.port)
        before = _rss_mb(server.pid)
        for q in queries:
            t = time.perf_counter()
            body = _get(args.port, q, args.limit)
            times["http-pg"].append(time.perf_counter() - t)
            assert body["features"], q
        after = _rss_mb(server.pid)
        base = percentiles(times["baseline"])
        print(f"{'engine':10} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'p95 vs baseline':>16}")
        for engine in ("twin", "sql", "http", "http-pg"):
            p = percentiles(times[engine])
            print(
                f"{engine:10} {p['p50']:9.3f} {p['p95']:9.3f} {p['p99']:9.3f} "
                f"{base['p95'] / p['p95']:15.1f}×"
            )
        sql_p95 = percentiles(times["sql"])["p95"]
        print(f"sql p95 / embedded p95: {sql_p95 / percentiles(times['twin'])['p95']:.1f}×")
        print(
            f"twin serve on PostGIS: VmRSS {before:.0f} MB after start, {after:.0f} MB after "
            f"{len(queries)} searches ({after - before:+.0f} MB)"
        )
        grown = subprocess.run(
            [sys.executable, "-c", WHOLE, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        print(
            f"for scale: pipes read whole and indexed (what /search did on PostGIS before) "
            f"take a fresh process from {float(grown[0]):.0f} MB to {float(grown[1]):.0f} MB"
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        store.close()
        with psycopg.connect(args.postgis, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


WHOLE = """
import sys, tempfile
from pathlib import Path
from layers.models import Access
from layers.postgis import PostGISStore
from layers.search import index_of
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
store = PostGISStore(sys.argv[1], raster_dir=tempfile.mkdtemp(), create=False)
before = rss()
index_of(store.load("pipes", Access.RESTRICTED))
print(before, rss())
"""
"""A process reading `pipes` whole and indexing it: its RSS before and after."""


def _serve(url: str, port: int) -> subprocess.Popen:
    """`twin serve` on the database, no rate limit, answering /healthz and a first request."""
    env = {**os.environ, "TWIN_RATE_ANONYMOUS": "0", "TWIN_STORE": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "twin.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/collections", timeout=5):
                return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "twin serve did not start"
            time.sleep(0.2)


def _get(port: int, q: str, limit: int) -> Any:
    query = urllib.parse.urlencode({"q": q, "limit": limit})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/search?{query}", timeout=30) as r:
        return json.loads(r.read())


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _app(layers: dict[str, Layer]) -> Any:
    """The real app (`create_app`) over a catalog holding `layers` (warmed as a server's)."""
    import tempfile

    from layers.catalog import Catalog
    from layers.settings import StoreSettings
    from twin.app import create_app
    from twin.settings import LimitSettings, ServerSettings

    class _Held:
        """A store of the generated layers, held in memory as they are."""

        location = "memory"

        def revision(self) -> int:
            return 0

        def layers(self, scope: Any) -> dict[str, Layer]:
            return dict(layers)

        def rasters(self, scope: Any) -> dict:
            return {}

        def load(self, name: str, scope: Any) -> Layer:
            return layers[name]

        def log(self, since: int, limit: int = 0) -> list:
            return []

        def settle(self, history: bool = True) -> int:
            return 0

    where = Path(tempfile.mkdtemp())
    return create_app(
        ServerSettings(_env_file=None, anonymous_access="restricted", keys_file=where / "k"),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=where / "store"),  # type: ignore[call-arg]
        catalog=Catalog(_Held()),  # type: ignore[arg-type]
        limit_settings=LimitSettings(_env_file=None, rate_anonymous=0),  # type: ignore[call-arg]
    )


if __name__ == "__main__":
    main()
