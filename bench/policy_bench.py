"""Benchmark of access control: warm tiles and near queries with a viewer key against anonymous.

Run by hand (never in tests), under the machine lock:

    flock /tmp/twin-bench.lock .venv/bin/python bench/policy_bench.py [--pipes 200000] [--rounds 5]

Builds a store of `--pipes` generated pipes (a fifth of them gas) and 50k lights, a policy that
makes gas pipes restricted and `pressure_zone` internal (so the viewer's view differs from the
anonymous one: both are real policy views, each with its own filtered layers and tiles), and a
viewer key; serves it with `twin serve` (one worker) and, over one keep-alive connection,
requests the same tiles (z12-16 over the city) and the same near queries as each caller, in
alternating rounds, after a warm-up pass of each. Every request of the viewer carries its key
(looked up in the key ring on every request, so a revocation takes effect at once).

Prints p50/p95 and requests/s per caller and the ratios viewer/anonymous; the aim is a cost of
at most 10 % (ratio <= 1.10).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import morecantile
import numpy as np
import pandas as pd
import shapely

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from layers.gpkg import GeoPackageStore  # noqa: E402
from layers.keys import KeyRing  # noqa: E402
from layers.layer import Layer, coerce, empty_attrs  # noqa: E402
from layers.schemas import LIGHTS, PIPES  # noqa: E402

BOX = (114.25, 30.45, 114.35, 30.55)
POLICY = """
[layers.pipes.fields]
pressure_zone = "internal"

[[layers.pipes.rows]]
match = { network = "gas" }
classification = "restricted"
departments = ["gas"]
"""


def make_store(root: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    x = BOX[0] + rng.random(n) * (BOX[2] - BOX[0])
    y = BOX[1] + rng.random(n) * (BOX[3] - BOX[1])
    geom = shapely.linestrings(np.stack([np.c_[x, y], np.c_[x + 0.0008, y + 0.0003]], 1))
    attrs = empty_attrs(PIPES, n)
    attrs["network"] = coerce(
        pd.Series(rng.choice(["water", "water", "sewer", "storm", "gas"], n)),
        PIPES.field("network").type,
    )
    attrs["pressure_zone"] = coerce(
        pd.Series(rng.choice(["low", "high"], n)), PIPES.field("pressure_zone").type
    )
    attrs["diameter_mm"] = coerce(
        pd.Series(rng.choice([100.0, 150.0, 300.0], n)), PIPES.field("diameter_mm").type
    )
    pipes = Layer(PIPES, np.array([f"p{i}" for i in range(n)], dtype=object), geom, attrs)
    m = 50_000
    lx = BOX[0] + rng.random(m) * (BOX[2] - BOX[0])
    ly = BOX[1] + rng.random(m) * (BOX[3] - BOX[1])
    lattrs = empty_attrs(LIGHTS, m)
    lattrs["status"] = coerce(
        pd.Series(rng.choice(["on", "off", "fault"], m)), LIGHTS.field("status").type
    )
    lights = Layer(
        LIGHTS, np.array([f"l{i}" for i in range(m)], dtype=object), shapely.points(lx, ly), lattrs
    )
    store = GeoPackageStore(root)
    try:
        store.write(pipes, source="bench", user="bench")
        store.write(lights, source="bench", user="bench")
    finally:
        store.close()


def tile_paths() -> list[str]:
    tms = morecantile.tms.get("WebMercatorQuad")
    inner = (114.28, 30.48, 114.32, 30.52)
    out = []
    for z in range(12, 17):
        for t in tms.tiles(*inner, zooms=[z]):
            out.append(f"/collections/pipes/tiles/WebMercatorQuad/{z}/{t.y}/{t.x}")
    rng = np.random.default_rng(1)
    rng.shuffle(out)
    return out[:400]


def near_paths(k: int = 300) -> list[str]:
    rng = np.random.default_rng(2)
    lon = 114.28 + rng.random(k) * 0.04
    lat = 30.48 + rng.random(k) * 0.04
    return [
        f"/query/near?lon={a:.6f}&lat={b:.6f}&radius=150&limit=50"
        for a, b in zip(lon, lat, strict=True)
    ]


def timed(
    conn: http.client.HTTPConnection, paths: list[str], headers: dict[str, str]
) -> list[float]:
    out = []
    for p in paths:
        t0 = time.perf_counter()
        conn.request("GET", p, headers=headers)
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t0)
        if r.status not in (200, 204):
            raise SystemExit(f"{p}: {r.status}")
    return out


def start(root: Path, port: int, log: Path, policy: Path | None) -> subprocess.Popen[bytes]:
    """`twin serve` over `root` on `port` (with `policy`, or none), once it answers."""
    env = {**os.environ, "TWIN_RATE_ANONYMOUS": "0", "TWIN_RATE_VIEWER": "0"}
    env.pop("TWIN_POLICY", None)
    if policy is not None:
        env["TWIN_POLICY"] = str(policy)
    cmd = [sys.executable, "-m", "twin.cli", "serve", "--store", str(root), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 300
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"server did not start: {log.read_text()}")
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipes", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port", type=int, default=8097)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        print(f"building {args.pipes:,} pipes and 50,000 lights ...", flush=True)
        make_store(root, args.pipes)
        policy = Path(tmp) / "policy.toml"
        policy.write_text(POLICY)
        _, secret = KeyRing.beside(root).add("bench-viewer", "viewer")
        # The same store served twice: without a policy (the baseline: no key, no view), and
        # with the policy (anonymous and viewer callers, each through its own view).
        plain = start(root, args.port, Path(tmp) / "plain.log", None)
        ruled = start(root, args.port + 1, Path(tmp) / "ruled.log", policy)
        try:
            conns = {
                "no policy": http.client.HTTPConnection("127.0.0.1", args.port, timeout=60),
                "anonymous": http.client.HTTPConnection("127.0.0.1", args.port + 1, timeout=60),
                "viewer": http.client.HTTPConnection("127.0.0.1", args.port + 1, timeout=60),
            }
            headers = {
                "no policy": {},
                "anonymous": {},
                "viewer": {"Authorization": f"Bearer {secret}"},
            }
            for what, paths in (("tiles", tile_paths()), ("near", near_paths())):
                for who in conns:  # warm: every tile drawn, every view's layers made
                    timed(conns[who], paths, {**headers[who], "Accept-Encoding": "gzip"})
                got: dict[str, list[float]] = {k: [] for k in conns}
                for r in range(args.rounds):
                    order = list(conns) if r % 2 == 0 else list(reversed(conns))
                    for who in order:
                        got[who] += timed(
                            conns[who], paths, {**headers[who], "Accept-Encoding": "gzip"}
                        )
                stats = {}
                for who, xs in got.items():
                    xs.sort()
                    stats[who] = (
                        statistics.median(xs) * 1e3,
                        xs[int(0.95 * len(xs))] * 1e3,
                        len(xs) / sum(xs),
                    )
                    print(
                        f"{what:5s} {who:9s} p50 {stats[who][0]:.3f} ms  p95 {stats[who][1]:.3f} ms"
                        f"  {stats[who][2]:,.0f} req/s  (n={len(xs)})"
                    )
                base = stats["no policy"]
                for who in ("anonymous", "viewer"):
                    v = stats[who]
                    print(
                        f"{what:5s} {who}/no policy: p50 {v[0] / base[0]:.3f}x  "
                        f"p95 {v[1] / base[1]:.3f}x  time per request {base[2] / v[2]:.3f}x"
                    )
                a, v = stats["anonymous"], stats["viewer"]
                print(
                    f"{what:5s} viewer/anonymous: p50 {v[0] / a[0]:.3f}x  p95 {v[1] / a[1]:.3f}x  "
                    f"time per request {a[2] / v[2]:.3f}x  (aim <= 1.10)"
                )
        finally:
            for proc in (plain, ruled):
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
