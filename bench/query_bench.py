"""Benchmark of the spatial query engine: `near` and `at` queries per second and latency.

Run by hand (never in tests), on the benchmark kit's generated city (see
`../shared/bench/README.md`: `gen_city.py --n 100000|1000000`):

    .venv/bin/python bench/query_bench.py --gpkg /tmp/bench/data/city_100k.gpkg \\
        --gpkg /tmp/bench/data/city_1m.gpkg [--queries 2000] [--radius 100] [--no-postgis]

For each city it loads pipes, lights and parks (1M pipes + 1M lights + 10k parks at 1m), adds a
500 m management grid and a DEM, and times, on the same query points in the same run:

- `floor`: the raw STRtree query of each layer (`dwithin` a radius in degrees, no metres, no
  sorting, no attributes): the least any in-memory engine can do;
- `twin`: `twin.queries.near` / `twin.queries.at` as the routes call them: metres on the
  ground, exact geodesic distances, nearest first; `at` also finds the grid cells and reads the
  DEM (held in memory, as the server does under `TWIN_QUERY_RASTER_MEMORY_BYTES`);
  `twin+json` also writes the answer's JSON bytes (at most 100 features) as the route does;
- `http`: what a caller gets: `GET /query/near` / `GET /query/at` (limit 100) answered by the
  real app (`twin.app.create_app` over the same layers, uvicorn, in a process forked after
  loading) on 127.0.0.1, one keep-alive connection, the whole body read (identity encoding);
- `postgis`: `ST_DWithin` on geography with a GIST index (PostgreSQL on 127.0.0.1:5432,
  in a database made for the run and dropped after), one round trip per query (ids and
  distances only: no attributes, no GeoJSON).

Each query point is run through every engine back to back (starting with a different engine
at each point, as the engines after the first find the point's data in the CPU caches), so
load from other processes on the machine weighs on all of them alike. Ratios are against the
floor measured in this run.
Run it under `flock /tmp/twin-bench.lock` so that no other benchmark runs at the same time.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine

from layers.catalog import Catalog
from layers.layer import Layer, coerce, empty_attrs
from layers.models import Access, Bounds
from layers.schemas import GRIDS as GRIDS_SCHEMA
from layers.store import LayerInfo, RasterInfo
from twin import queries
from twin.settings import QuerySettings, ServerSettings

sys.path.insert(0, str(Path(__file__).parent))
from city import load_city

SCOPE = Access.PUBLIC
LAYERS = ("pipes", "lights", "parks")
M_PER_DEG = 111_320.0


class MemoryStore:
    """Just enough of the `Store` protocol for a `Catalog` over layers already in memory."""

    location = "memory"

    def __init__(self, layers: dict[str, Layer], rasters: dict[str, RasterInfo]) -> None:
        self._layers, self._rasters = layers, rasters

    def layers(self, scope: Access) -> dict[str, LayerInfo]:
        return {
            n: LayerInfo(lyr.schema, len(lyr), lyr.bounds, None) for n, lyr in self._layers.items()
        }

    def rasters(self, scope: Access) -> dict[str, RasterInfo]:
        return dict(self._rasters)

    def load(self, name: str, scope: Access) -> Layer:
        return self._layers[name]

    def revision(self) -> int:
        return 0


def as_served(layer: Layer) -> Layer:
    """The layer with every attribute in its schema's dtype, as a store loads it."""
    for f in layer.schema.fields:
        layer.attrs[f.name] = coerce(layer.attrs[f.name], f.type)
    return layer


def grid_layer(bounds: Bounds, cell_m: float = 500.0) -> Layer:
    """Square management cells of `cell_m` metres over the bounds."""
    minx, miny, maxx, maxy = bounds
    dx = cell_m / (M_PER_DEG * np.cos(np.radians((miny + maxy) / 2)))
    dy = cell_m / M_PER_DEG
    xs, ys = np.arange(minx, maxx, dx), np.arange(miny, maxy, dy)
    gx, gy = np.meshgrid(xs, ys)
    boxes = shapely.box(gx.ravel(), gy.ravel(), gx.ravel() + dx, gy.ravel() + dy)
    n = len(boxes)
    attrs = empty_attrs(GRIDS_SCHEMA, n)
    attrs["level"] = coerce(["cell"] * n, GRIDS_SCHEMA.field("level").type)
    attrs["code"] = coerce([f"C{i}" for i in range(n)], GRIDS_SCHEMA.field("code").type)
    return Layer(
        GRIDS_SCHEMA, np.array([f"cell-{i}" for i in range(n)], dtype=object), boxes, attrs
    )


def write_dem(path: Path, bounds: Bounds, res_deg: float = 0.0003) -> Path:
    """A float32 lon/lat DEM over the bounds (about 30 m cells), tiled."""
    minx, miny, maxx, maxy = bounds
    w, h = int((maxx - minx) / res_deg) + 1, int((maxy - miny) / res_deg) + 1
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    z = (20 + 0.01 * cols + 5 * np.sin(cols / 50) * np.cos(rows / 70)).astype(np.float32)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=Affine(res_deg, 0, minx, 0, -res_deg, maxy),
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as ds:
        ds.write(z, 1)
    return path


def stats(ms: np.ndarray) -> dict[str, float]:
    """Latency summary in milliseconds, and queries per second (1 / mean)."""
    return {
        "qps": 1000.0 / ms.mean(),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def timed(f: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = f()
    return (time.perf_counter() - t) * 1000.0, out


# -- PostGIS ------------------------------------------------------------------------------------


class PostGIS:
    """The same layers in a throw-away PostGIS database, geography columns with GIST indexes."""

    def __init__(self, dsn: str, layers: dict[str, Layer]) -> None:
        import psycopg

        self.psycopg = psycopg
        self.admin_dsn = dsn
        self.db = f"twin_query_bench_{os.getpid()}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db}"')
        self.conn = psycopg.connect(self._dsn(self.db), autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        self.load_seconds: dict[str, float] = {}
        for name, layer in layers.items():
            t = time.perf_counter()
            self._load(name, layer)
            self.load_seconds[name] = time.perf_counter() - t
        parts = [
            f"SELECT '{n}' AS collection, id, ST_Distance(geog, p.g) AS d FROM {n}, p "
            "WHERE ST_DWithin(geog, p.g, %(r)s)"
            for n in layers
        ]
        self.sql = (
            "WITH p AS (SELECT ST_SetSRID(ST_MakePoint(%(lon)s, %(lat)s), 4326)::geography AS g) "
            + " UNION ALL ".join(parts)
            + " ORDER BY d"
        )

    def _dsn(self, db: str) -> str:
        base = self.admin_dsn.rsplit("/", 1)[0]
        return f"{base}/{db}"

    def _load(self, name: str, layer: Layer) -> None:
        c = self.conn
        c.execute(f"CREATE TABLE {name} (id text PRIMARY KEY, geom geometry(Geometry, 4326))")
        ewkb = shapely.to_wkb(shapely.set_srid(layer.geometry, 4326), hex=True, include_srid=True)
        with c.cursor() as cur, cur.copy(f"COPY {name} (id, geom) FROM STDIN") as copy:
            for row in zip(layer.ids.tolist(), ewkb.tolist(), strict=True):
                copy.write_row(row)
        c.execute(f"ALTER TABLE {name} ADD COLUMN geog geography(Geometry, 4326)")
        c.execute(f"UPDATE {name} SET geog = geom::geography")
        c.execute(f"CREATE INDEX ON {name} USING gist (geog)")
        c.execute(f"VACUUM ANALYZE {name}")

    def near(self, lon: float, lat: float, radius: float) -> list[tuple]:
        return self.conn.execute(
            self.sql, {"lon": lon, "lat": lat, "r": radius}, prepare=True
        ).fetchall()

    def close(self) -> None:
        self.conn.close()
        with self.psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db}"')


# -- the app over HTTP ----------------------------------------------------------------------------


class Server:
    """The real app over `catalog`, served by uvicorn in a child process forked after loading
    (it shares the loaded layers copy-on-write), and a keep-alive client connection to it."""

    def __init__(self, catalog: Catalog) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        pid = os.fork()
        if pid == 0:  # the server
            try:
                import uvicorn

                from twin.app import create_app

                app = create_app(ServerSettings(), catalog=catalog, query_settings=QuerySettings())
                uvicorn.Server(
                    uvicorn.Config(
                        app,
                        host="127.0.0.1",
                        port=self.port,
                        access_log=False,
                        log_level="error",
                        timeout_keep_alive=3600,  # the client waits while PostGIS loads
                    )
                ).run()
            finally:
                os._exit(0)
        self.pid = pid
        deadline = time.monotonic() + 600
        while True:
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self.get("/conformance")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise
                time.sleep(0.5)

    def get(self, path: str) -> bytes:
        self.conn.request("GET", path)
        res = self.conn.getresponse()
        body = res.read()
        if res.status != 200:
            raise RuntimeError(f"{path}: {res.status} {body[:200]!r}")
        return body

    def close(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        os.waitpid(self.pid, 0)


# -- the run ------------------------------------------------------------------------------------


ENGINES = ("floor", "twin", "twin+json", "http", "postgis")


def run_city(gpkg: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    layers = {name: as_served(load_city(gpkg, name)) for name in LAYERS}
    for layer in layers.values():
        _ = layer.tree
    load_s = time.perf_counter() - t0
    n = {k: len(v) for k, v in layers.items()}
    manifest = gpkg.with_suffix(".json")
    dense = json.loads(manifest.read_text())["dense_bbox_6km"] if manifest.exists() else None
    bounds = layers["pipes"].bounds
    assert bounds is not None
    area = Bounds(*dense) if dense else bounds
    grid = grid_layer(area)
    dem = write_dem(tmp / f"dem_{gpkg.stem}.tif", area)
    catalog = Catalog(
        MemoryStore(
            {**layers, "grids": grid},
            {"dem": RasterInfo("dem", "DEM", dem)},
        )
    )
    _ = grid.tree
    rng = np.random.default_rng(args.seed)
    lon = rng.uniform(area[0], area[2], args.queries)
    lat = rng.uniform(area[1], area[3], args.queries)
    pts = shapely.points(lon, lat)
    r, tol = args.radius, args.tolerance
    deg_r = r / (M_PER_DEG * np.cos(np.radians(area[3])))
    deg_t = tol / (M_PER_DEG * np.cos(np.radians(area[3])))
    trees = [layers[name].tree for name in LAYERS]
    memory = QuerySettings().raster_memory_bytes

    def floor(p: shapely.Point, d: float) -> int:
        return sum(len(t.query(p, predicate="dwithin", distance=d)) for t in trees)

    def floor_at(p: shapely.Point, d: float) -> int:
        return floor(p, d) + len(grid.tree.query(p, predicate="intersects"))

    def near(p: shapely.Point) -> list[queries.Matches]:
        return queries.near(catalog, SCOPE, p, r)

    def near_json(p: shapely.Point) -> bytes:
        groups = queries.near(catalog, SCOPE, p, r)
        summary = [g.summary() for g in groups]
        return queries.feature_collection_bytes(groups, 100, {"radius": r, "summary": summary})

    def at(p: shapely.Point) -> queries.AtResult:
        return queries.at(catalog, SCOPE, p, tol, raster_memory_bytes=memory)

    def at_json(p: shapely.Point) -> bytes:
        return at(p).to_bytes(100)

    # Warm up every path (first calls build caches and read the DEM) before the server forks.
    for p in pts[:20]:
        floor(p, deg_r), near(p), near_json(p), at(p), at_json(p)
    print("  starting the app...", flush=True)
    server = Server(catalog)
    pg = None
    runs: dict[str, list[float]] = {f"{q} {e}": [] for q in ("near", "at") for e in ENGINES}
    counts = {"near twin": 0, "near http": 0, "near postgis": 0, "at twin": 0, "mismatch": 0}
    bytes_out = {"near": 0, "at": 0}
    try:
        if not args.no_postgis:
            print(f"  loading PostGIS ({sum(n.values()):,} features)...", flush=True)
            pg = PostGIS(args.dsn, layers)

        def near_http(p: shapely.Point) -> bytes:
            return server.get(f"/query/near?lon={p.x!r}&lat={p.y!r}&radius={r!r}&limit=100")

        def at_http(p: shapely.Point) -> bytes:
            return server.get(f"/query/at?lon={p.x!r}&lat={p.y!r}&tolerance={tol!r}&limit=100")

        for p in pts[:20]:
            near_http(p), at_http(p)
            if pg:
                pg.near(p.x, p.y, r)
        gc.collect()
        near_engines: dict[str, Callable[[shapely.Point], Any]] = {
            "floor": lambda p: floor(p, deg_r),
            "twin": near,
            "twin+json": near_json,
            "http": near_http,
        }
        at_engines: dict[str, Callable[[shapely.Point], Any]] = {
            "floor": lambda p: floor_at(p, deg_t),
            "twin": at,
            "twin+json": at_json,
            "http": at_http,
        }
        if pg:
            near_engines["postgis"] = lambda p: pg.near(p.x, p.y, r)
            at_engines["postgis"] = lambda p: pg.near(p.x, p.y, tol)
        for i, p in enumerate(pts):
            out: dict[str, Any] = {}
            for kind, engines in (("near", near_engines), ("at", at_engines)):
                # Each point starts with another engine: the one after the first finds the
                # point's data already in the CPU caches, so no engine gets that edge always.
                names = list(engines)
                names = names[i % len(names) :] + names[: i % len(names)]
                for name in names:
                    t, out[f"{kind} {name}"] = timed(partial(engines[name], p))
                    runs[f"{kind} {name}"].append(t)
            groups, res = out["near twin"], out["at twin"]
            bytes_out["near"] += len(out["near http"])
            bytes_out["at"] += len(out["at http"])
            ours = {(g.collection, i) for g in groups for i in g.layer.ids[g.rows].tolist()}
            counts["near twin"] += len(ours)
            counts["near http"] += json.loads(out["near http"])["numberMatched"]
            counts["at twin"] += sum(len(g) for g in res.groups)
            if pg:
                theirs = {(c, i) for c, i, _ in out["near postgis"]}
                counts["near postgis"] += len(theirs)
                counts["mismatch"] += len(ours ^ theirs)
    finally:
        server.close()
        pg_load = pg.load_seconds if pg else {}
        if pg:
            pg.close()
    return {
        "city": str(gpkg),
        "features": n,
        "queries": args.queries,
        "radius_m": r,
        "tolerance_m": tol,
        "load_s": round(load_s, 1),
        "postgis_load_s": {k: round(v, 1) for k, v in pg_load.items()},
        "counts": counts,
        "mean_bytes": {k: round(v / len(pts)) for k, v in bytes_out.items()},
        "engines": {k: stats(np.array(v)) for k, v in runs.items() if v},
    }


def report(res: dict[str, Any]) -> str:
    e = res["engines"]
    lines = [
        f"### {Path(res['city']).name}: {sum(res['features'].values()):,} features "
        f"({', '.join(f'{k} {v:,}' for k, v in res['features'].items())}), "
        f"{res['queries']} points, near radius {res['radius_m']:g} m, at tolerance "
        f"{res['tolerance_m']:g} m",
        "",
        "| query | engine | q/s | mean ms | p50 ms | p95 ms | p99 ms | × floor (mean, p50, p95) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("near", "at"):
        base = e[f"{kind} floor"]
        for eng in ENGINES:
            s = e.get(f"{kind} {eng}")
            if s is None:
                continue
            lines.append(
                f"| {kind} | {eng} | {s['qps']:,.0f} | {s['mean_ms']:.3f} | {s['p50_ms']:.3f} | "
                f"{s['p95_ms']:.3f} | {s['p99_ms']:.3f} | "
                + ", ".join(f"{s[k] / base[k]:.1f}" for k in ("mean_ms", "p50_ms", "p95_ms"))
                + " |"
            )
    c = res["counts"]
    lines.append("")
    lines.append(
        f"Features found by `near`: twin {c['near twin']:,} (over HTTP {c['near http']:,}), "
        f"PostGIS {c['near postgis']:,}, differing {c['mismatch']:,} (features within a few mm "
        f"of the radius). Mean answer over HTTP: near {res['mean_bytes']['near']:,} bytes, "
        f"at {res['mean_bytes']['at']:,} bytes."
    )
    if res["postgis_load_s"]:
        lines.append(f"PostGIS load + index, seconds: {res['postgis_load_s']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpkg", type=Path, action="append", required=True, help="generated city")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--radius", type=float, default=100.0, help="near radius, metres")
    ap.add_argument("--tolerance", type=float, default=1.0, help="at tolerance, metres")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-postgis", action="store_true")
    ap.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="twin-query-bench-") as tmp:
        for gpkg in args.gpkg:
            print(f"{gpkg}:", flush=True)
            res = run_city(gpkg, args, Path(tmp))
            print(report(res), flush=True)
            print(flush=True)
            results.append(res)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
