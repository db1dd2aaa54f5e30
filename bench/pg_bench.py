"""PostGIS benchmark (issue 13): `twin serve --store postgresql://...` beside tipg on the same
database cluster, the kit's city, one run.

Run by hand (never in tests), one benchmark at a time on the machine:

    cp -r ../shared/bench /tmp/tipg-kit && (cd /tmp/tipg-kit && ./setup.sh)
    flock /tmp/twin-bench.lock .venv/bin/python bench/pg_bench.py --quick       # ~4 min check
    flock /tmp/twin-bench.lock .venv/bin/python bench/pg_bench.py --n 100000
    flock /tmp/twin-bench.lock .venv/bin/python bench/pg_bench.py --no-compare \\
        --rss-sizes 100000,1000000,5000000
    .venv/bin/python bench/pg_bench.py --twin-root /work/main ...   # measure another checkout

What it does:

1. the kit's city (`gen_city.py --n N`, cached in $TMPDIR/twin-pgbench) is loaded (a) by the
   kit's `load_pg.sh` into database `kit_N` for tipg (tables `public.pipes|lights|parks`, GIST,
   ANALYZE, the `pipes_near` function) and (b) by `twin migrate` + `twin import` (pipes with
   `--set network=water --set status=in_service`, lights with `--map power_w=wattage_w`,
   parks as they are) into a fresh database `twin_N`; both in the kit's own PostgreSQL cluster
   (`pg_up.sh`, 127.0.0.1:--pg-port, its bench.conf), which this script starts and stops;
2. tipg (1 worker, then 2) and twin (`twin.server.serve`, the path of `twin serve`, with the
   access log off and no rate limit, `--workers 1`, then 2) are served in turn on 127.0.0.1;
3. each gets the kit's `loadgen.py` tile list (pipes, z12-16 over the dense 6 km box, seed 42):
   PostgreSQL and the server restarted, then cold c=1, validation, warm c=1 and c=8; the near
   list (200 points, radius 100/250/500 m, limit 1000; twin `/query/near`, tipg the kit's
   `pipes_near` function collection) on the same server; then PostgreSQL and the server
   restarted again for cold c=8. A table of tiles/s, near p95 and server memory, the ratios
   the issue's aims name, and the feature counts of both servers' tiles and near answers;
4. `--rss-sizes`: for each size a fresh database `twin_rss_N` holding only the city's pipes,
   `twin serve --workers 1`, the tile and near lists once each, then the server's VmRSS and
   VmHWM (from /proc), its start-up time and the table size. A server still loading when the
   host's MemAvailable falls under `--mem-floor-gb` (3 GB; the machine is shared) is stopped
   and reported with the memory it had reached.

"Cold" is the first request for each URL after PostgreSQL and the server started; the OS page
cache is not dropped (other people share the machine). Raw loadgen JSON goes to the cache
folder, the summary to `--out` (default `bench/results/pg_<N>.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BBOX = "114.284548,30.3246,114.347006,30.378499"  # the kit's dense 6 km box, same for every N
SEED = 42  # loadgen's default: the kit's published list
PGBIN = Path("/usr/lib/postgresql/15/bin")
TIPG_PORT = 8181
TWIN_PORT = 8191
TIPG_TILE = "/collections/public.pipes/tiles/WebMercatorQuad/{z}/{x}/{y}"
TIPG_NEAR = "/collections/public.pipes_near/items?lon={lon}&lat={lat}&radius={r}&limit=1000"
TWIN_TILE = "/collections/pipes/tiles/WebMercatorQuad/{z}/{y}/{x}"  # row before column
TWIN_NEAR = "/query/near?lon={lon}&lat={lat}&radius={r}&collections=pipes&limit=1000"

# `twin serve` as the product runs it (`twin.server.serve`), access log off and warnings only,
# as the kit runs tipg; works with any checkout whose `serve` takes these keywords or not.
LAUNCH = """
import inspect, sys
from layers.settings import StoreSettings
from twin.server import serve
from twin.settings import ServerSettings
url, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
params = inspect.signature(serve).parameters
kw = {k: v for k, v in (("access_log", False), ("log_level", "warning")) if k in params}
serve(ServerSettings(_env_file=None, host="127.0.0.1", port=port), StoreSettings(store=url),
      workers=workers, **kw)
"""


# loadgen.py with `wait_quiet` capped at argv[1] seconds (the kit waits up to 120 s before each
# pass for the host to be quiet; on a machine busy with other people's tests that is every pass).
QUIET_WAIT = """
import sys
sys.path.insert(0, ".")
import loadgen
cap = float(sys.argv.pop(1))
wait = loadgen.wait_quiet
loadgen.wait_quiet = lambda max_wait_s=120, threshold_cores=0.15: wait(min(max_wait_s, cap),
                                                                      threshold_cores)
sys.argv[0] = "loadgen.py"
loadgen.main()
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


# -- /proc ---------------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (MB) of the main process, and RSS / PSS summed over its tree."""
    out = {"vmrss_mb": 0.0, "vmhwm_mb": 0.0, "tree_rss_mb": 0.0, "tree_pss_mb": 0.0}
    for p in tree(pid):
        try:
            if p == pid:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        out[line[:5].lower() + "_mb"] = round(int(line.split()[1]) / 1024, 1)
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    out["tree_rss_mb"] += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    out["tree_pss_mb"] += int(line.split()[1]) / 1024
        except OSError:
            pass
    out["tree_rss_mb"] = round(out["tree_rss_mb"], 1)
    out["tree_pss_mb"] = round(out["tree_pss_mb"], 1)
    return out


class MemoryFloor(RuntimeError):
    """The host's MemAvailable fell under the floor while a server was loading."""


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def wait_http(url: str, alive: Any, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if not alive():
            raise RuntimeError(f"the server stopped before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.perf_counter() - t0
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


# -- PostgreSQL (the kit's cluster) -----------------------------------------------------------


class Postgres:
    """The kit's throwaway cluster (`pg_up.sh` / `pg_down.sh`, its bench.conf) on `port`."""

    def __init__(self, kit: Path, port: int) -> None:
        self.kit, self.port = kit, port
        self.env = {**os.environ, "PGPORT": str(port), "PGDATABASE": "bench"}

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def up(self) -> None:
        run(["./pg_up.sh"], cwd=self.kit, env=self.env, stdout=subprocess.DEVNULL)

    def down(self) -> None:
        run(["./pg_down.sh"], cwd=self.kit, env=self.env, stdout=subprocess.DEVNULL)

    def restart(self) -> None:
        self.down()
        self.up()

    def pid(self) -> int:
        return int((self.kit / "pg/data/postmaster.pid").read_text().split()[0])

    def sql(self, sql: str, db: str = "postgres") -> str:
        cmd = [str(PGBIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        cmd += ["-d", db, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql]
        return run(cmd, capture_output=True, text=True).stdout.strip()

    def fresh(self, db: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{db}"')

    def count(self, db: str, table: str) -> int | None:
        """Rows of `table` in `db`, None when either is missing."""
        if not self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'"):
            return None
        found = self.sql(f"SELECT to_regclass('{table}') IS NOT NULL", db)
        return int(self.sql(f"SELECT count(*) FROM {table}", db)) if found == "t" else None


# -- data ------------------------------------------------------------------------------------------


def city(kit: Path, cache: Path, n: int) -> Path:
    """The kit's city of `n` pipes (and lights), made once and kept in the cache folder."""
    gpkg = cache / f"city_{n}.gpkg"
    if not gpkg.exists():
        log(f"gen_city.py --n {n} ...")
        t0 = time.perf_counter()
        tmp = cache / f"city_{n}.tmp.gpkg"
        run(
            [str(kit / ".venv/bin/python"), "gen_city.py", "--n", str(n), "--out", str(tmp)],
            cwd=kit,
        )
        tmp.rename(gpkg)
        (cache / f"city_{n}.tmp.json").rename(cache / f"city_{n}.json")
        log(f"city of {n:,} pipes made in {time.perf_counter() - t0:.0f} s")
    return gpkg


# twin layer <- the city's layer, with the importer's options that map its columns
TWIN_LAYERS = {
    "pipes": ["--set", "network=water", "--set", "status=in_service"],
    "lights": ["--map", "power_w=wattage_w"],
    "parks": [],
}


def twin_store(
    pg: Postgres, twin: Path, gpkg: Path, db: str, n: int, layers: list[str], reuse: bool
) -> dict:
    """`twin migrate` + `twin import` of `layers` of the city into database `db`."""
    if reuse and pg.count(db, "layers.pipes") == n:
        log(f"reusing database {db} ({n:,} pipes)")
        return {"reused": True}
    pg.fresh(db)
    url = pg.url(db)
    exe = str(twin / ".venv/bin/twin")
    out: dict = {"reused": False}
    t0 = time.perf_counter()
    run([exe, "migrate", "--store", url], stdout=subprocess.DEVNULL)
    out["migrate_s"] = round(time.perf_counter() - t0, 1)
    for name in layers:
        t0 = time.perf_counter()
        cmd = [exe, "import", name, str(gpkg), "--layer", name, "--store", url]
        cmd += [*TWIN_LAYERS[name], "--source", "gen_city", "--user", "bench", "--json"]
        rep = json.loads(run(cmd, capture_output=True, text=True).stdout)
        took = round(time.perf_counter() - t0, 1)
        out[name] = {"imported": rep["imported"], "rejected": len(rep["rejected"]), "s": took}
        log(f"twin import {name} -> {db}: {rep['imported']:,} in {took} s")
    t0 = time.perf_counter()
    pg.sql("VACUUM (ANALYZE)", db)  # as load_pg.sh does for tipg's tables
    out["vacuum_analyze_s"] = round(time.perf_counter() - t0, 1)
    out["pipes_table_mb"] = round(
        int(pg.sql("SELECT pg_total_relation_size('layers.pipes')", db)) / 2**20, 1
    )
    return out


# -- servers ---------------------------------------------------------------------------------------


class Tipg:
    """The kit's `servers/tipg_up.sh` / `tipg_down.sh` (stopped by the PID it records)."""

    name = "tipg"
    base = f"http://127.0.0.1:{TIPG_PORT}"
    tile, near = TIPG_TILE, TIPG_NEAR

    def __init__(self, kit: Path, pg: Postgres, db: str, workers: int) -> None:
        self.kit, self.pg, self.db, self.workers = kit, pg, db, workers
        self.env = {**pg.env, "PGDATABASE": db, "WORKERS": str(workers)}
        self.env["TIPG_PORT"] = str(TIPG_PORT)

    def start(self) -> int:
        run(["./servers/tipg_up.sh"], cwd=self.kit, env=self.env, stdout=subprocess.DEVNULL)
        self.pid = int((self.kit / "run/tipg.pid").read_text())
        return self.pid

    def stop(self) -> None:
        run(["./servers/tipg_down.sh"], cwd=self.kit, env=self.env, stdout=subprocess.DEVNULL)


class Twin:
    """`twin.server.serve` of checkout `root` over database `url`, in its own session."""

    name = "twin"
    base = f"http://127.0.0.1:{TWIN_PORT}"
    tile, near = TWIN_TILE, TWIN_NEAR

    def __init__(
        self, root: Path, url: str, workers: int, logfile: Path, floor_mb: float = 0.0
    ) -> None:
        self.root, self.url, self.workers, self.logfile = root, url, workers, logfile
        self.floor_mb = floor_mb
        self.proc: subprocess.Popen | None = None
        self.started_s = 0.0
        self.peak: dict[str, float] = {}

    def start(self) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
        # Every request of a benchmark comes from one address: no per-caller rate limit.
        env.update({f"TWIN_RATE_{r}": "0" for r in ("ANONYMOUS", "VIEWER", "ENGINEER")})
        py = str(self.root / ".venv/bin/python")
        args = [py, "-c", LAUNCH, self.url, str(TWIN_PORT), str(self.workers)]
        with open(self.logfile, "ab") as f:
            self.proc = subprocess.Popen(
                args, cwd=self.root, env=env, stdout=f, stderr=f, start_new_session=True
            )
        proc = self.proc

        def alive() -> bool:
            # The machine is shared: a server loading more than it can hold is stopped
            # before the kernel has to pick something (someone else's) to kill.
            if mem_available_mb() < self.floor_mb:
                self.peak = memory(proc.pid)
                raise MemoryFloor(f"MemAvailable < {self.floor_mb:.0f} MB while loading")
            return proc.poll() is None

        self.started_s = wait_http(f"{self.base}/healthz", alive, 3600)
        return proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)  # the parent stops and reaps its workers
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for p in pids[1:]:  # a worker left behind: ours (same command line), stopped by PID
            with contextlib.suppress(OSError):
                if b"twin.server" in Path(f"/proc/{p}/cmdline").read_bytes():
                    os.kill(p, signal.SIGKILL)
        self.proc = None


# -- loadgen ---------------------------------------------------------------------------------------


class Load:
    """The kit's loadgen.py with this run's lists."""

    def __init__(self, kit: Path, cache: Path, a: argparse.Namespace) -> None:
        self.kit, self.out, self.a = kit, cache / "loadgen", a
        self.out.mkdir(exist_ok=True)

    def __call__(self, kind: str, label: str, url: str, procs: dict[str, int], *args: str) -> dict:
        a = self.a
        out = self.out / f"{label}.json"
        cmd = [str(self.kit / ".venv/bin/python"), "loadgen.py", kind, "--label", label]
        if a.quiet_wait is not None:  # the kit's loadgen, its wait for a quiet host shortened
            cmd[1:2] = ["-c", QUIET_WAIT, str(a.quiet_wait)]
        cmd += ["--bbox", BBOX, "--seed", str(SEED), "--url", url, "--out", str(out)]
        if kind == "tiles":
            cmd += ["--zooms", a.zooms]
        else:
            cmd += ["--count", str(a.near_count), "--radii-m", "100,250,500"]
        cmd += [f"--proc={k}={v}" for k, v in procs.items()]
        res = subprocess.run([*cmd, *args], cwd=self.kit, check=False)
        if res.returncode not in (0, 2):
            raise RuntimeError(f"loadgen failed ({res.returncode}): {label}")
        return json.loads(out.read_text())


def p(res: dict, which: str) -> dict:
    """One pass of a loadgen result: 'cold' or a warm concurrency."""
    got = res["cold"] if which == "cold" else res["warm"][which]
    return {"rps": got["rps"], "p95_ms": got["lat_ms"]["p95"], "noisy": got["noisy"]}


def measure(server: Tipg | Twin, pg: Postgres, load: Load, a: argparse.Namespace) -> dict:
    """Cold c=1 + warm c=1,8 tiles and the near list on one start; cold c=8 on a second."""
    label = f"{server.name}-{a.n}-w{server.workers}"
    tile_url, near_url = server.base + server.tile, server.base + server.near
    warm = ["--warm-repeats", str(a.warm_repeats), "--repeat", str(a.repeat)]
    warm += ["--retry-noisy", str(a.retry_noisy)]
    row: dict = {}

    pg.restart()
    pid = server.start()
    row["start_s"] = round(server.started_s, 1) if isinstance(server, Twin) else None
    try:
        procs = {server.name: pid, "postgres": pg.pid()}
        log(f"{label}: tiles cold c=1, warm c=1,8")
        t = load("tiles", f"{label}-tiles", tile_url, procs, "-c", "1,8", *warm)
        log(f"{label}: near")
        q = load("queries", f"{label}-near", near_url, procs, "-c", "1,8", *warm)
        row["memory"] = memory(pid)
    finally:
        server.stop()
    pg.restart()
    pid = server.start()
    try:
        procs = {server.name: pid, "postgres": pg.pid()}
        log(f"{label}: tiles cold c=8")
        t8 = load("tiles", f"{label}-tiles-c8", tile_url, procs, "-c", "8", *warm[:2])
        row["memory_after_c8"] = memory(pid)
    finally:
        server.stop()

    cpu = {k: v["cpu_ms_per_req"] for k, v in t["cold"]["server"].items()}
    row.update(
        {
            "cold_c1": p(t, "cold"),
            "cold_c8": p(t8, "cold"),
            "warm_c1": p(t, "1"),
            "warm_c8": p(t, "8"),
            "near_c1": p(q, "1"),
            "near_c8": p(q, "8"),
            "cold_c1_cpu_ms_per_tile": cpu,
            "valid": t["valid"] and t8["valid"] and q["valid"],
            "tiles": {f"{i['z']}/{i['x']}/{i['y']}": i["features"] for i in t["items"]},
            "tile_bytes_mean": t["validation"]["bytes_mean"],
            "near": [i["features"] for i in q["items"]],
            "summaries": [t["summary"], q["summary"], t8["summary"]],
        }
    )
    return row


# -- the comparison ----------------------------------------------------------------------------


def compare(kit: Path, cache: Path, pg: Postgres, a: argparse.Namespace) -> dict:
    gpkg = city(kit, cache, a.n)
    kit_db, twin_db = f"kit_{a.n}", f"twin_{a.n}"
    res: dict = {}
    if a.reuse_db and pg.count(kit_db, "public.pipes") == a.n:
        log(f"reusing database {kit_db}")
    else:
        pg.fresh(kit_db)
        pg.sql("CREATE EXTENSION postgis", kit_db)
        env = {**pg.env, "PGDATABASE": kit_db}
        t0 = time.perf_counter()
        run(["./load_pg.sh", str(gpkg)], cwd=kit, env=env, stdout=subprocess.DEVNULL)
        res["kit_load_s"] = round(time.perf_counter() - t0, 1)
        log(f"load_pg.sh -> {kit_db}: {res['kit_load_s']} s")
    res["twin_import"] = twin_store(
        pg, a.twin_root, gpkg, twin_db, a.n, list(TWIN_LAYERS), a.reuse_db
    )
    load = Load(kit, cache, a)
    servers: list[tuple[str, Tipg | Twin]] = [
        ("tipg_1w", Tipg(kit, pg, kit_db, 1)),
        ("tipg_2w", Tipg(kit, pg, kit_db, 2)),
        ("twin_1w", Twin(a.twin_root, pg.url(twin_db), 1, cache / "twin.log")),
        ("twin_2w", Twin(a.twin_root, pg.url(twin_db), 2, cache / "twin.log")),
    ]
    for key, server in servers:
        if key in a.skip:
            continue
        res[key] = measure(server, pg, load, a)
        for line in res[key].pop("summaries"):
            log(line)
    return res


def ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 2) if x and y else None


def counts(res: dict) -> dict:
    """Features per tile and per near answer, twin against tipg (1 worker each)."""
    if "twin_1w" not in res or "tipg_1w" not in res:
        return {}
    tw, tp = res["twin_1w"]["tiles"], res["tipg_1w"]["tiles"]
    by_z: dict[str, dict[str, list[int]]] = {}
    for key in tw:
        z = key.split("/")[0]
        by_z.setdefault(z, {"twin": [], "tipg": []})
        by_z[z]["twin"].append(tw[key])
        by_z[z]["tipg"].append(tp.get(key, 0))
    zooms = {
        z: {
            "tiles": len(v["twin"]),
            "twin_mean": round(sum(v["twin"]) / len(v["twin"]), 1),
            "tipg_mean": round(sum(v["tipg"]) / len(v["tipg"]), 1),
            "tipg_capped": sum(1 for n in v["tipg"] if n >= 10_000),
            "sum_abs_diff": sum(abs(x - y) for x, y in zip(v["twin"], v["tipg"], strict=True)),
        }
        for z, v in sorted(by_z.items(), key=lambda kv: int(kv[0]))
    }
    # the busiest tile of each zoom (by tipg's count), and the first listed of each zoom
    samples = {}
    for z in by_z:
        keys = [k for k in tw if k.split("/")[0] == z]
        for k in (max(keys, key=lambda k: tp.get(k, 0)), keys[0]):
            samples[k] = {"twin": tw[k], "tipg": tp.get(k, 0)}
    nw, npg = res["twin_1w"]["near"], res["tipg_1w"]["near"]
    near = {
        "queries": len(nw),
        "equal": sum(1 for x, y in zip(nw, npg, strict=True) if x == y),
        "sum_abs_diff": sum(abs(x - y) for x, y in zip(nw, npg, strict=True)),
        "features_twin": sum(nw),
        "features_tipg": sum(npg),
        "at_limit_1000": sum(1 for x in npg if x >= 1000),
    }
    return {"tiles_by_zoom": zooms, "tile_samples": samples, "near": near}


def aims(res: dict) -> dict:
    out: dict = {}
    one, two, peer = res.get("twin_1w"), res.get("twin_2w"), res.get("tipg_1w")
    if one and peer:
        for c in ("cold_c1", "cold_c8"):
            r = ratio(one[c]["rps"], peer[c]["rps"])
            out[f"twin_1w_over_tipg_{c}"] = {"ratio": r, "aim": 1.5, "met": bool(r and r >= 1.5)}
    if one and two:
        for c in ("cold_c1", "cold_c8"):
            r = ratio(two[c]["rps"], one[c]["rps"])
            out[f"twin_2w_over_1w_{c}"] = {"ratio": r, "aim": 1.8, "met": bool(r and r >= 1.8)}
        out["twin_2w_over_1w_near_c8"] = {
            "ratio": ratio(two["near_c8"]["rps"], one["near_c8"]["rps"])
        }
    return out


def table(res: dict) -> str:
    head = (
        "| | tiles/s cold c=1 | cold c=8 | warm c=1 | warm c=8 | near p95 ms c=1 / c=8 "
        "| near/s c=8 | server RSS (PSS) MB after near | start s |"
    )
    lines = [head, "|" + "---|" * 9]
    for key in ("tipg_1w", "tipg_2w", "twin_1w", "twin_2w"):
        r = res.get(key)
        if not r:
            continue
        m = r["memory"]
        noisy = " (noisy)" if any(r[k]["noisy"] for k in ("cold_c1", "cold_c8", "warm_c8")) else ""
        lines.append(
            f"| {key}{'' if r['valid'] else ' INVALID'}{noisy} | {r['cold_c1']['rps']} "
            f"| {r['cold_c8']['rps']} | {r['warm_c1']['rps']} | {r['warm_c8']['rps']} "
            f"| {r['near_c1']['p95_ms']} / {r['near_c8']['p95_ms']} | {r['near_c8']['rps']} "
            f"| {m['tree_rss_mb']:.0f} ({m['tree_pss_mb']:.0f}) | {r['start_s'] or '-'} |"
        )
    return "\n".join(lines)


# -- RSS against size --------------------------------------------------------------------------


def rss_sizes(kit: Path, cache: Path, pg: Postgres, a: argparse.Namespace) -> dict:
    load = Load(kit, cache, a)
    out: dict = {}
    for n in a.rss_sizes:
        gpkg = city(kit, cache, n)
        db = f"twin_rss_{n}"
        row: dict = {"import": twin_store(pg, a.twin_root, gpkg, db, n, ["pipes"], a.reuse_db)}
        row["pipes_table_mb"] = round(
            int(pg.sql("SELECT pg_total_relation_size('layers.pipes')", db)) / 2**20, 1
        )
        pg.restart()
        server = Twin(a.twin_root, pg.url(db), 1, cache / "twin.log", a.mem_floor_gb * 1024)
        log(f"rss {n:,}: starting twin serve --workers 1")
        t0 = time.perf_counter()
        try:
            pid = server.start()
        except MemoryFloor as exc:
            server.stop()
            row["aborted"] = f"{exc} after {time.perf_counter() - t0:.0f} s"
            row["at_abort"] = server.peak
            log(f"rss {n:,} pipes: {row['aborted']}: {server.peak}")
            out[str(n)] = row
            continue
        try:
            row["start_s"] = round(server.started_s, 1)
            row["after_start"] = memory(pid)
            procs = {"twin": pid}
            # each list once cold at c=8 (then loadgen's validation and one warm pass)
            once = ["-c", "8", "--warm-repeats", "1", "--repeat", "1", "--retry-noisy", "0"]
            t = load("tiles", f"rss-{n}-tiles", server.base + server.tile, procs, *once)
            q = load("queries", f"rss-{n}-near", server.base + server.near, procs, *once)
            row["after_lists"] = memory(pid)
            row["tiles_valid"], row["near_valid"] = t["valid"], q["valid"]
            row["tiles_cold_c8_rps"] = t["cold"]["rps"]
            row["near_cold_c8_p95_ms"] = q["cold"]["lat_ms"]["p95"]
        finally:
            server.stop()
        m = row["after_lists"]
        log(
            f"rss {n:,} pipes: start {row['start_s']} s, VmRSS {m['vmrss_mb']:.0f} MB, "
            f"VmHWM {m['vmhwm_mb']:.0f} MB (after start: {row['after_start']['vmrss_mb']:.0f} MB)"
        )
        out[str(n)] = row
    sizes = [r for r in out.values() if "after_lists" in r]
    if len(sizes) > 1:
        lo, hi = sizes[0]["after_lists"]["vmhwm_mb"], sizes[-1]["after_lists"]["vmhwm_mb"]
        # "flat": the largest size's peak within 1.25x the smallest's
        out["flat"] = {"hwm_ratio_largest_over_smallest": ratio(hi, lo), "met": hi <= 1.25 * lo}
    return out


def rss_table(out: dict) -> str:
    lines = [
        "| pipes | table MB | start s | VmRSS after start | VmRSS after lists | VmHWM | "
        "tiles/s cold c=8 | near p95 ms cold c=8 |",
        "|" + "---|" * 8,
    ]
    for n, r in out.items():
        if n == "flat":
            continue
        if "aborted" in r:
            m = r["at_abort"]
            lines.append(
                f"| {int(n):,} | {r['pipes_table_mb']:.0f} | stopped: {r['aborted']} "
                f"| | {m.get('vmrss_mb', 0):.0f} when stopped | {m.get('vmhwm_mb', 0):.0f} | | |"
            )
            continue
        m = r["after_lists"]
        lines.append(
            f"| {int(n):,} | {r['pipes_table_mb']:.0f} | {r['start_s']} "
            f"| {r['after_start']['vmrss_mb']:.0f} | {m['vmrss_mb']:.0f} | {m['vmhwm_mb']:.0f} "
            f"| {r['tiles_cold_c8_rps']} | {r['near_cold_c8_p95_ms']} |"
        )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100_000, help="pipes (and lights) of the city")
    ap.add_argument("--kit", type=Path, default=Path("/tmp/tipg-kit"), help="writable kit copy")
    ap.add_argument("--twin-root", type=Path, default=ROOT, help="the twin checkout to measure")
    ap.add_argument("--pg-port", type=int, default=55439, help="port of the kit's cluster")
    ap.add_argument("--quick", action="store_true", help="10k city, z14-15, 30 near, 1 repeat")
    ap.add_argument("--no-compare", action="store_true", help="only the --rss-sizes part")
    ap.add_argument("--rss-sizes", default="", help="e.g. 100000,1000000,5000000")
    ap.add_argument("--skip", default="", help="rows to leave out, e.g. tipg_2w")
    ap.add_argument("--zooms", default="12-16")
    ap.add_argument("--near-count", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="warm passes per concurrency (median)")
    ap.add_argument("--warm-repeats", type=int, default=2, help="the list x this per warm pass")
    ap.add_argument("--retry-noisy", type=int, default=2)
    ap.add_argument(
        "--quiet-wait",
        type=float,
        help="cap on loadgen's wait for a quiet host before each pass, s (kit: 120)",
    )
    ap.add_argument(
        "--mem-floor-gb",
        type=float,
        default=3.0,
        help="stop a loading server when the host's MemAvailable falls below this (shared box)",
    )
    ap.add_argument("--reuse-db", action="store_true", help="keep loaded databases of size N")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.quick:
        a.n, a.zooms, a.near_count, a.repeat, a.warm_repeats = 10_000, "14-15", 30, 1, 1
        a.retry_noisy = 0
    a.rss_sizes = [int(v) for v in a.rss_sizes.split(",") if v]
    a.skip = set(a.skip.split(","))
    a.twin_root = a.twin_root.resolve()
    kit = a.kit.resolve()
    if not (kit / ".venv/bin/python").exists():
        sys.exit(f"{kit}: copy ../shared/bench there and run its ./setup.sh first")
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "twin-pgbench"
    cache.mkdir(exist_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(a.twin_root), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    res: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "twin_root": str(a.twin_root),
        "twin_commit": commit[:100],
        "n": a.n,
        "zooms": a.zooms,
        "bbox": BBOX,
        "near_count": a.near_count,
        "pg": f"the kit's cluster on 127.0.0.1:{a.pg_port} (pg_up.sh, bench.conf)",
    }
    log(f"twin at {a.twin_root} ({commit[:60]}), kit {kit}, cache {cache}")
    pg = Postgres(kit, a.pg_port)
    pg.up()
    try:
        if not a.no_compare:
            cmp = compare(kit, cache, pg, a)
            res["compare"] = {k: v for k, v in cmp.items()}
            res["counts"] = counts(cmp)
            res["aims"] = aims(cmp)
            for row in cmp.values():
                if isinstance(row, dict):
                    row.pop("tiles", None)
                    row.pop("near", None)
        if a.rss_sizes:
            res["rss"] = rss_sizes(kit, cache, pg, a)
    finally:
        pg.down()
    out = a.out or ROOT / "bench" / "results" / f"pg_{'quick' if a.quick else a.n}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print()
    if "compare" in res:
        print(f"city of {a.n:,} pipes, tiles z{a.zooms} over {BBOX}, near {a.near_count} points")
        print(table(res["compare"]))
        print()
        for k, v in res["aims"].items():
            met = "" if "met" not in v else (" (aim met)" if v["met"] else " (aim NOT met)")
            print(f"{k}: {v['ratio']}x{met}")
        print(json.dumps(res["counts"], indent=1))
    if "rss" in res:
        print(rss_table(res["rss"]))
        if "flat" in res["rss"]:
            print(f"RSS flat: {res['rss']['flat']}")
    print(f"summary: {out}")


if __name__ == "__main__":
    shutil.which("wrk") or sys.exit("needs wrk (the kit's setup.sh installs it)")
    main()
