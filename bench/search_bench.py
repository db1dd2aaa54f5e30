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
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd
import shapely

from layers.layer import Layer, coerce, empty_attrs
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
        PIPES,
        n,
        np.array([f"city:{o}" for o in own], dtype=object),
        rng,
        pressure_zone=rng.choice(["JX-低区", "JX-高区"], n),
    )
    pipes.attrs["pipe_id"] = coerce(pd.Series(own), PIPES.field("pressure_zone").type)
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

    from twin.routes.search import router

    app = _app(layers, router)
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


def _app(layers: dict[str, Layer], router: Any) -> Any:
    """A bare app serving `/search` over `layers` (the route's own dependencies)."""
    from fastapi import FastAPI

    from layers.models import Access
    from twin.app import _install_errors
    from twin.settings import GuardSettings

    class _Catalog:
        def layers(self, scope: Access) -> dict[str, Layer]:
            return layers

        def layer(self, name: str, scope: Access) -> Layer:
            return layers[name]

    app = FastAPI()
    app.state.catalog = _Catalog()
    app.state.anonymous_access = Access.RESTRICTED
    app.state.guard = GuardSettings()
    _install_errors(app)
    app.include_router(router)
    return app


if __name__ == "__main__":
    main()
