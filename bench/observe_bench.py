"""Ingest micro benchmark (issue 10): the CPU cost of taking one batch of 1,000 readings, in
process, as `POST /twin/observations` takes it: the body parsed (`json.loads`,
`observations.readings_of`), checked (`observations.check`, against 100k street lights) and
written (`GeoPackageStore.observe`), each timed per batch, over `--batches` batches made as
`bench/live_bench.py` makes them (random lamps, `status`, times increasing). Run by hand, one
benchmark at a time:

    flock /tmp/twin-bench.lock .venv/bin/python bench/observe_bench.py

The store is settled (`settle(history=False)`, what the server does every second) every
`--settle-every` batches, outside the timings. Printed: per step, the p50 and mean ms per batch
and the readings per second of one core at the mean.

Baseline, measured before the column-wise check and write (2026-12-07, this 2-core VM, 100k
lights, 299 batches timed; ms per batch p50 / mean, readings/s of one core at the mean):

    parse        0.84 /  1.15    865,952
    check        2.61 /  2.86    349,220
    write        9.40 / 10.83     92,378
    check+write 12.02 / 13.69     73,053
    all         12.85 / 14.84     67,370

After (same day and machine, load average ~2 from other work on it):

    parse        0.75 /  0.91  1,098,104
    check        2.00 /  2.05    486,726
    write        5.44 /  6.15    162,649
    check+write  7.44 /  8.20    121,910
    all          8.19 /  9.11    109,728
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from live_bench import BATCH, batches, build_store  # noqa: E402

from layers.catalog import Catalog  # noqa: E402
from layers.gpkg import GeoPackageStore  # noqa: E402
from layers.models import Access  # noqa: E402
from twin import observations  # noqa: E402

STEPS = ("parse", "check", "write", "check+write", "all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lights", type=int, default=100_000)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--settle-every", type=int, default=50)
    a = ap.parse_args()
    template = build_store(a.lights)
    work = Path(tempfile.mkdtemp(prefix="twin-observe-"))
    shutil.copytree(template, work / "store")
    store = GeoPackageStore(work / "store")
    try:
        catalog = Catalog(store)
        ids = [f"L{i:07d}" for i in range(a.lights)]
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        bodies = [json.dumps(b).encode() for b in batches(ids, a.batches, 7, start)]
        # One batch first: the store's state times and the layer's id set made.
        warm = observations.readings_of(json.loads(bodies[0]), BATCH)
        store.observe(
            observations.check(catalog, Access.RESTRICTED, warm, _now()).accepted, user="b"
        )
        took: dict[str, list[float]] = {s: [] for s in STEPS}
        accepted = changed = 0
        for k, body in enumerate(bodies[1:], 1):
            t0 = time.perf_counter()
            items = observations.readings_of(json.loads(body), BATCH)
            t1 = time.perf_counter()
            batch = observations.check(catalog, Access.RESTRICTED, items, _now())
            t2 = time.perf_counter()
            done = store.observe(batch.accepted, user="bench")
            t3 = time.perf_counter()
            accepted += len(batch.accepted)
            changed += done.changed
            for step, s in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t3 - t1, t3 - t0), strict=True):
                took[step].append(s * 1000)
            if k % a.settle_every == 0:
                store.settle(history=False)
        n = len(bodies) - 1
        print(
            f"{a.lights} lights, {n} batches of {BATCH}: {accepted} readings accepted, "
            f"{changed} state changes"
        )
        print(f"{'step':<12} {'p50 ms':>8} {'mean ms':>8} {'readings/s':>11}")
        for step in STEPS:
            mean = statistics.fmean(took[step])
            print(
                f"{step:<12} {statistics.median(took[step]):8.2f} {mean:8.2f} "
                f"{BATCH / mean * 1000:11,.0f}"
            )
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


if __name__ == "__main__":
    main()
