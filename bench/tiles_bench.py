"""Tile benchmark: twin's tile engine and server against tipg over PostGIS, one run, same city.

Run by hand (never in tests), on a writable copy of the kit (`cp -r ../shared/bench /tmp/bench`,
then `./setup.sh` and `gen_city.py` there, see its README):

    .venv/bin/python bench/tiles_bench.py --kit /tmp/bench --size 100k
    .venv/bin/python bench/tiles_bench.py --kit /tmp/bench --size 1m --skip-tipg

Parts (each prints ratios against a baseline measured in the same run):

1. in process: `render_tile` over the kit's 247-tile list (pipes, z12-16) against the kit's
   pure-Python baseline (`baseline_py.py`: STRtree + mapbox_vector_tile.encode), and our
   encoder against `mapbox_vector_tile.encode` on the very same features (bytes compared);
2. low zooms: every tile z0-10 over the whole city, pipes and lights forced visible from
   zoom 0, largest tile and slowest tile;
3. HTTP: twin (`bench/serve_twin.py`) and tipg (the kit's scripts, PostgreSQL on 55432) with
   the kit's `loadgen.py` (wrk): cold c=1 and c=8 (each after a restart), warm c=1 and c=8,
   tiles/s and p95, plus warm c=8 with `Accept-Encoding: gzip`, and features per zoom.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import numpy as np
import shapely

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.city import load_city  # noqa: E402
from layers.gpkg import GeoPackageStore  # noqa: E402
from tiles import render  # noqa: E402
from tiles.grid import Tile, covering, xy_bounds  # noqa: E402
from tiles.prepared import prepare  # noqa: E402
from tiles.render import render_tile  # noqa: E402
from tiles.settings import TileSettings  # noqa: E402

BBOX = "114.284548,30.3246,114.347006,30.378499"  # the kit's dense 6 km box, same for every N
TWIN_PORT = 8090
TWIN_URL = f"http://127.0.0.1:{TWIN_PORT}/collections/pipes/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}"
REPEAT = 3
RETRY_NOISY = 2
TIPG_URL = "http://127.0.0.1:8081/collections/public.pipes/tiles/WebMercatorQuad/{z}/{x}/{y}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# -- 1. in process ---------------------------------------------------------------------------


def tile_list(kit: Path) -> list[Tile]:
    sys.path.insert(0, str(kit))
    import loadgen  # the kit's harness: same list, same order as the HTTP runs

    bbox = [float(v) for v in BBOX.split(",")]
    return [Tile(x, y, z) for z, x, y in loadgen.tile_list(bbox, loadgen.parse_zooms("12-16"), 42)]


def in_process(kit: Path, gpkg: Path, tiles: list[Tile]) -> dict:
    settings = TileSettings(_env_file=None)
    t0 = time.perf_counter()
    pipes = load_city(gpkg, "pipes")
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare(pipes)
    _ = pipes.tree
    t_prep = time.perf_counter() - t0
    log(f"pipes: {len(pipes)} features, read {t_load:.1f} s, prepared {t_prep:.1f} s")

    lat, sizes, feats, by_z = [], [], [], {}
    for t in tiles:
        a = time.perf_counter()
        raw = render_tile([(pipes, None)], t, settings)
        lat.append(time.perf_counter() - a)
        sizes.append(len(raw))
    for t, raw in zip(
        tiles, (render_tile([(pipes, None)], t, settings) for t in tiles), strict=True
    ):
        n = len(mapbox_vector_tile.decode(raw)["pipes"]["features"]) if raw else 0
        feats.append(n)
        by_z.setdefault(t.z, []).append(n)
    engine = {
        "tiles_per_s": round(len(tiles) / sum(lat), 1),
        "p50_ms": round(pct(lat, 50) * 1e3, 2),
        "p95_ms": round(pct(lat, 95) * 1e3, 2),
        "bytes_mean": round(statistics.fmean(sizes)),
        "features_total": sum(feats),
        "features_mean_by_z": {z: round(statistics.fmean(v), 1) for z, v in sorted(by_z.items())},
        "prepare_s": round(t_prep, 2),
    }

    # Our encoder against mapbox_vector_tile.encode, on exactly the same features.
    ours_s = ref_s = 0.0
    identical = decoded_equal = 0
    for t in tiles:
        cut = render._cut(pipes, None, t, settings)
        if cut is None:
            continue
        b = xy_bounds(t)
        a = time.perf_counter()
        mine = cut.encode(b, settings.extent)
        ours_s += time.perf_counter() - a
        geoms = shapely.transform(cut.geoms, render._to_mercator)
        keys = cut.properties.keys
        table = cut.properties.table
        feats_in = []
        for i, g in enumerate(geoms):
            props = {}
            for j, k in enumerate(keys):
                code = cut.properties.codes[i, j]
                if code >= 0:
                    props[k] = _value_of(table, int(code))
            f = {"geometry": g, "properties": props}
            if cut.ids[i] >= 0:
                f["id"] = int(cut.ids[i])
            feats_in.append(f)
        a = time.perf_counter()
        ref = mapbox_vector_tile.encode(
            [{"name": "pipes", "features": feats_in}],
            default_options={"quantize_bounds": tuple(b), "extents": settings.extent},
        )
        ref_s += time.perf_counter() - a
        identical += mine == ref
        decoded_equal += mapbox_vector_tile.decode(mine) == mapbox_vector_tile.decode(ref)
    encoder = {
        "ours_ms_per_tile": round(ours_s / len(tiles) * 1e3, 2),
        "mapbox_ms_per_tile": round(ref_s / len(tiles) * 1e3, 2),
        "speedup": round(ref_s / ours_s, 1),
        "byte_identical_tiles": identical,
        "decode_identical_tiles": decoded_equal,
        "tiles": len(tiles),
    }
    log(f"engine: {engine}")
    log(f"encoder: {encoder}")

    log("kit baseline_py.py (STRtree + mapbox_vector_tile.encode) ...")
    out = kit / "results" / f"twinbench_py_{gpkg.stem}.json"
    out.parent.mkdir(exist_ok=True)
    subprocess.run(
        [
            str(kit / ".venv/bin/python"),
            "baseline_py.py",
            "--gpkg",
            str(gpkg),
            "--bbox",
            BBOX,
            "--label",
            "py",
            "--out",
            str(out),
        ],
        cwd=kit,
        check=True,
    )
    baseline = json.loads(out.read_text())
    engine["vs_baseline_py"] = round(engine["tiles_per_s"] / baseline["tiles_per_s"], 1)
    return {
        "engine": engine,
        "encoder": encoder,
        "baseline_py": {
            "tiles_per_s": baseline["tiles_per_s"],
            "p95_ms": baseline["lat_ms"]["p95"],
            "bytes_mean": baseline["bytes_mean"],
        },
    }


def _value_of(table, number: int):
    """Decode one value entry of the table (for building the reference encoder's input)."""
    entry = mapbox_vector_tile.decoder.vector_tile.tile.value()
    raw = table.entries(np.array([number]))
    # entry = 0x22 len message; the length fits one byte for every value written here
    entry.ParseFromString(raw[2:] if raw[1] < 0x80 else raw[3:])
    return mapbox_vector_tile.decoder.TileData.parse_value(entry)


# -- 2. low zooms ----------------------------------------------------------------------------


def low_zooms(gpkg: Path) -> dict:
    settings = TileSettings(_env_file=None, minzoom={"pipes": 0, "lights": 0})
    out = {}
    for name in ("pipes", "lights"):
        layer = load_city(gpkg, name)
        prepare(layer)
        _ = layer.tree
        worst_bytes = worst_ms = 0.0
        per_zoom = {}
        for t in covering(layer.bounds, range(0, 11)):
            a = time.perf_counter()
            raw = render_tile([(layer, None)], t, settings)
            ms = (time.perf_counter() - a) * 1e3
            worst_bytes, worst_ms = max(worst_bytes, len(raw)), max(worst_ms, ms)
            z = per_zoom.setdefault(
                t.z, {"tiles": 0, "max_bytes": 0, "max_ms": 0.0, "max_features": 0}
            )
            z["tiles"] += 1
            z["max_bytes"] = max(z["max_bytes"], len(raw))
            z["max_ms"] = round(max(z["max_ms"], ms), 1)
            if raw:
                n = len(mapbox_vector_tile.decode(raw)[name]["features"])
                z["max_features"] = max(z["max_features"], n)
        out[name] = {
            "max_bytes": int(worst_bytes),
            "max_ms": round(worst_ms, 1),
            "by_zoom": per_zoom,
        }
        log(f"low zooms {name}: max {int(worst_bytes)} bytes, max {worst_ms:.1f} ms")
        del layer
    return out


# -- 3. HTTP -----------------------------------------------------------------------------------


def wait_http(url: str, timeout: float = 600) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def twin_store(kit: Path, gpkg: Path, size: str) -> Path:
    store = kit / "data" / f"twin_{size}"
    if (store / "twin.gpkg").exists():
        return store
    log(f"writing the city into a twin store at {store} ...")
    s = GeoPackageStore(store)
    try:
        for name in ("pipes", "lights", "parks"):
            s.write(load_city(gpkg, name), source="gen_city", user="bench")
    finally:
        s.close()
    return store


class TwinServer:
    """bench/serve_twin.py in its own process group, stopped by its PID."""

    def __init__(self, store: Path, workers: int = 1) -> None:
        self.store = store
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    def start(self) -> int:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "serve_twin.py"),
                "--store",
                str(self.store),
                "--port",
                str(TWIN_PORT),
                "--workers",
                str(self.workers),
            ],
            cwd=ROOT,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{TWIN_PORT}/healthz")
        return self.proc.pid

    def worker_cpu(self) -> dict[int, float]:
        """CPU seconds used so far by each serving process (the workers, or the one server)."""
        assert self.proc is not None
        pid = self.proc.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()] or [pid]
        out = {}
        tick = os.sysconf("SC_CLK_TCK")
        for p in pids:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def stop(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGTERM)  # the parent stops and reaps its workers
            self.proc.wait(timeout=60)
            self.proc = None


def balanced(server: TwinServer, *args: Any) -> dict:
    """`loadgen(*args)` with the CPU seconds each twin worker spent in it: the kernel's
    spread of wrk's connections over the workers, seen from the server side."""
    before = server.worker_cpu()
    res = loadgen(*args)
    after = server.worker_cpu()
    res["worker_cpu_s"] = {str(p): round(after[p] - before.get(p, 0.0), 2) for p in after}
    return res


def loadgen(kit: Path, label: str, url: str, procs: dict[str, int], out: Path, *args: str) -> dict:
    cmd = [
        str(kit / ".venv/bin/python"),
        "loadgen.py",
        "tiles",
        "--label",
        label,
        "--bbox",
        BBOX,
        "--zooms",
        "12-16",
        "--url",
        url,
        "--out",
        str(out),
        "--repeat",
        str(REPEAT),
        "--retry-noisy",
        str(RETRY_NOISY),
        *args,
    ]
    for name, pid in procs.items():
        cmd += ["--proc", f"{name}={pid}"]
    subprocess.run(cmd, cwd=kit, check=False)
    return json.loads(out.read_text())


def sh(kit: Path, *cmd: str) -> None:
    subprocess.run(list(cmd), cwd=kit, check=True)


def pass_row(res: dict, kind: str, c: str | None = None) -> dict:
    p = res["cold"] if kind == "cold" else res["warm"][c]
    return {"rps": p["rps"], "p95_ms": p["lat_ms"]["p95"], "noisy": p.get("noisy", False)}


# The three loadgen passes of each server: label suffix, file suffix, loadgen arguments, and
# whether the server starts afresh (empty cache) first.
PASSES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("", "c1", ("-c", "1,8", "--warm-repeats", "2"), False),
    ("-c8", "c8", ("-c", "8", "--warm-repeats", "2"), True),
    (
        "-gzip",
        "gzip",
        ("-c", "8", "--warm-repeats", "2", "--no-cold", "-H", "Accept-Encoding: gzip"),
        False,
    ),
)


def three_passes(
    run: Callable[[str, str, tuple[str, ...]], dict], restart: Callable[[], None]
) -> dict:
    """`run(label_suffix, file_suffix, args)` for each of `PASSES` (restarting the server where
    a pass needs an empty cache), summed up as rows; the raw results under `passes`."""
    got = []
    for suffix, file, args, fresh in PASSES:
        if fresh:
            restart()
        got.append(run(suffix, file, args))
    r1, r8, rg = got
    return {
        "cold_c1": pass_row(r1, "cold"),
        "warm_c1": pass_row(r1, "warm", "1"),
        "cold_c8": pass_row(r8, "cold"),
        "warm_c8": pass_row(r8, "warm", "8"),
        "warm_c8_gzip": pass_row(rg, "warm", "8"),
        "features_by_z": {z: v["features_mean"] for z, v in r1["validation"]["by_z"].items()},
        "bytes_mean": r1["validation"]["bytes_mean"],
        "passes": got,
    }


def twin_rows(kit: Path, gpkg: Path, size: str, workers: int, results: Path) -> dict:
    """The three passes against `twin serve --workers N`, with each worker's CPU seconds."""
    label = f"twin-{size}" + ("" if workers == 1 else f"-w{workers}")
    server = TwinServer(twin_store(kit, gpkg, size), workers)
    pids = [server.start()]

    def run(suffix: str, file: str, args: tuple[str, ...]) -> dict:
        out = results / f"{label}_{file}.json"
        return balanced(server, kit, label + suffix, TWIN_URL, {"twin": pids[-1]}, out, *args)

    def restart() -> None:
        server.stop()
        pids.append(server.start())

    try:
        rows = three_passes(run, restart)
    finally:
        server.stop()
    r1, r8, rg = rows.pop("passes")
    rows["worker_cpu_s"] = {
        "cold_c1_and_warm": r1["worker_cpu_s"],
        "cold_c8_and_warm_c8": r8["worker_cpu_s"],
        "warm_c8_gzip": rg["worker_cpu_s"],
    }
    return rows


def http_runs(kit: Path, gpkg: Path, size: str, skip_tipg: bool, twin_workers: list[int]) -> dict:
    results = kit / "results"
    results.mkdir(exist_ok=True)
    out: dict = {}
    for workers in twin_workers:
        key = "twin" if workers == 1 else f"twin_w{workers}"
        out[key] = twin_rows(kit, gpkg, size, workers, results)
    if skip_tipg:
        return out

    pg_pid = lambda: int((kit / "pg/data/postmaster.pid").read_text().split()[0])  # noqa: E731
    tipg_pid = lambda: int((kit / "run/tipg.pid").read_text().strip())  # noqa: E731

    def tipg_run(suffix: str, file: str, args: tuple[str, ...]) -> dict:
        return loadgen(
            kit,
            f"tipg-{size}{suffix}",
            TIPG_URL,
            {"tipg": tipg_pid(), "postgres": pg_pid()},
            results / f"tipg_{size}_{file}.json",
            *args,
        )

    def tipg_restart() -> None:
        sh(kit, "./servers/tipg_down.sh")
        sh(kit, "./pg_down.sh")
        sh(kit, "./pg_up.sh")
        sh(kit, "./servers/tipg_up.sh")

    sh(kit, "./servers/tipg_down.sh")
    sh(kit, "./pg_up.sh")
    sh(kit, "./load_pg.sh", str(gpkg))
    try:
        tipg_restart()
        out["tipg"] = three_passes(tipg_run, tipg_restart)
        del out["tipg"]["passes"]
    finally:
        sh(kit, "./servers/tipg_down.sh")
        sh(kit, "./pg_down.sh")
    for key in [k for k in out if k.startswith("twin")]:
        out[f"ratio_{key}_over_tipg"] = {
            k: round(out[key][k]["rps"] / out["tipg"][k]["rps"], 2)
            for k in ("cold_c1", "cold_c8", "warm_c1", "warm_c8", "warm_c8_gzip")
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kit", type=Path, required=True, help="writable copy of ../shared/bench")
    ap.add_argument("--size", choices=["100k", "1m"], default="100k")
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--skip-low", action="store_true")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-tipg", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--twin-workers", default="1", help="twin server process counts to run, e.g. 1,2"
    )
    ap.add_argument("--repeat", type=int, default=3, help="warm passes per concurrency (median)")
    ap.add_argument("--retry-noisy", type=int, default=2, help="re-runs of a noisy warm pass")
    a = ap.parse_args()
    global REPEAT, RETRY_NOISY
    REPEAT, RETRY_NOISY = a.repeat, a.retry_noisy
    gpkg = a.kit / "data" / f"city_{a.size}.gpkg"
    res: dict = {"size": a.size, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    tiles = tile_list(a.kit)
    if not a.skip_inprocess:
        res["in_process"] = in_process(a.kit, gpkg, tiles)
    if not a.skip_low:
        res["low_zooms"] = low_zooms(gpkg)
    if not a.skip_http:
        workers = [int(w) for w in a.twin_workers.split(",")]
        res["http"] = http_runs(a.kit, gpkg, a.size, a.skip_tipg, workers)
    out = a.out or ROOT / "bench" / "results" / f"tiles_{a.size}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
