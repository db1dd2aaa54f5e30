"""Apply benchmark (issue 10): what one worker spends per batch of 1,000 readings, in process,
without HTTP: applying the batch to its layer (`Catalog.follow` with the server's
`warm_layer` and tile invalidation) and drawing anew the z14-16 tiles over the lights the
batch made stale. Run by hand, one benchmark at a time:

    flock /tmp/twin-bench.lock .venv/bin/python bench/apply_bench.py
    .venv/bin/python bench/apply_bench.py --lights 10000 --batches 5     # a check

What it does: the store of `bench/live_bench.py` (N lights on a grid over ~6 x 6 km), a
catalog over a copy of it made ready as the server makes it (`twin.warmup.warm`, then
`warm_layer` for every changed layer) with a tile cache subscribed to its changes, every
z14-16 tile over the lights drawn once; then per batch: 1,000 random readings of `status`
checked and written through the store as `POST /twin/observations` does (`store.observe`,
not timed: the worker that takes the POST pays it, every worker pays the apply), the
catalog's `follow` timed (apply), and every tile the batch made stale drawn anew as the
server's background redraw draws it (`TileServer.draw`: the MVT, its ETag and gzip bytes)
timed (redraw). In the same run, two baselines: the tiles rendered from scratch
(`render_tile`, its ETag and gzip bytes) and the layer's
derived data made from scratch (`warm_layer` of a copy of the layer with nothing kept).

Figures, 100k lights, 30 batches, this shared 2-core VM, medians per batch (201 of the 208
tiles stale each time); the baselines measured in the same run say how loaded the machine was:

    before (e0e49ea): apply 14.5 ms (0.067x a rebuild, 216 ms); redraw 366 ms, 1.82 ms a
                      tile (1.02x from scratch, 359 ms: every stale tile was drawn from scratch)
    after:            apply 12.5 ms (0.047x a rebuild, 267 ms); redraw 248 ms, 1.23 ms a
                      tile (0.54x from scratch, 458 ms)
    after, machine at load 9: apply 18.3 ms (0.030x a rebuild, 616 ms); redraw 534 ms
                      (0.52x from scratch, 1037 ms)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from live_bench import BOX, batches, build_store  # noqa: E402
from overload_bench import tiles_covering  # noqa: E402

from layers.catalog import Catalog  # noqa: E402
from layers.gpkg import GeoPackageStore  # noqa: E402
from layers.layer import Layer  # noqa: E402
from layers.models import Access  # noqa: E402
from tiles import grid  # noqa: E402
from tiles.cache import CachedTile, TileKey, etag  # noqa: E402
from tiles.render import render_tile  # noqa: E402
from tiles.settings import TileSettings  # noqa: E402
from twin import observations  # noqa: E402
from twin.metrics import Metrics  # noqa: E402
from twin.tileserve import TileServer  # noqa: E402
from twin.warmup import warm, warm_layer  # noqa: E402

EVERYTHING = Access.RESTRICTED


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ms(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values) * 1000,
        "p95": float(np.percentile(values, 95)) * 1000,
        "mean": statistics.fmean(values) * 1000,
    }


def fresh_copy(layer: Layer) -> Layer:
    """The layer with nothing derived kept (no earlier version to take data from)."""
    return Layer(layer.schema, layer.ids, layer.geometry, layer.attrs.copy(), dict(layer.meta))


def scratch_tile(layer: Layer, tile: grid.Tile, settings: TileSettings) -> CachedTile:
    """A tile drawn from scratch: rendered, its ETag, its gzip bytes (`gzip_level`)."""
    raw = render_tile([(layer, None)], tile, settings)
    made = CachedTile(raw, etag(raw), settings.gzip_level)
    _ = made.data
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lights", type=int, default=100_000)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--label")
    ap.add_argument(
        "--steps",
        default="1,5",
        help="batches applied per step (comma-separated) in the coalescing phase",
    )
    a = ap.parse_args()

    template = build_store(a.lights)
    work_dir = Path(tempfile.mkdtemp(prefix="twin-apply-"))
    shutil.copytree(template, work_dir / "store")
    store = GeoPackageStore(work_dir / "store")
    settings = TileSettings(_env_file=None)  # type: ignore[call-arg]
    tiles = TileServer(settings, Metrics())
    catalog = Catalog(store)
    catalog.subscribe(lambda name, boxes: tiles.invalidate(name, boxes, catalog.revision(name)))
    warm(catalog)
    catalog.prepare = warm_layer
    keys = [
        (grid.tile(z, x, y), TileKey.of(grid.tile(z, x, y), ["lights"], scope=EVERYTHING.label))
        for zoom in (14, 15, 16)
        for z, x, y in tiles_covering(BOX, zoom)
    ]

    def layers() -> list[tuple[Layer, Any]]:
        return [(catalog.layer("lights", EVERYTHING), None)]

    for tile, key in keys:
        tiles.cache.insert(key, tiles.draw(tile, layers, gzip_ok=True))
    log(f"{a.lights} lights, {len(keys)} tiles z14-16 drawn; {a.batches} batches")

    ids = [f"L{i:07d}" for i in range(a.lights)]
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    work = batches(ids, a.batches + 3, 11, start)
    apply_s: list[float] = []
    redraw_s: list[float] = []
    scratch_s: list[float] = []
    rebuild_s: list[float] = []
    touched: list[int] = []
    for b, items in enumerate(work):
        checked = observations.check(catalog, EVERYTHING, items, dt.datetime.now(dt.UTC))
        store.observe(checked.accepted, user="bench")
        t0 = time.perf_counter()
        catalog.follow()
        t1 = time.perf_counter()
        stale = [(tile, key) for tile, key in keys if tiles.cache.peek(key) is None]
        t2 = time.perf_counter()
        for tile, key in stale:
            held = tiles.cache.stale(key, any_age=True)
            tiles.cache.insert(key, tiles.draw(tile, layers, True, held))
        t3 = time.perf_counter()
        layer = catalog.layer("lights", EVERYTHING)
        for tile, _ in stale:
            scratch_tile(layer, tile, settings)
        t4 = time.perf_counter()
        warm_layer(fresh_copy(layer))
        t5 = time.perf_counter()
        if b % 5 == 4:
            store.settle(history=False)  # the server's settler does it every second
        if b < 3:
            continue  # the first batches make what later ones reuse
        apply_s.append(t1 - t0)
        redraw_s.append(t3 - t2)
        scratch_s.append(t4 - t3)
        rebuild_s.append(t5 - t4)
        touched.append(len(stale))

    # The tiles held are those a fresh render draws, byte for byte.
    layer = catalog.layer("lights", EVERYTHING)
    for tile, key in keys:
        held = tiles.cache.peek(key)
        assert held is not None
        assert held.raw() == render_tile([(layer, None)], tile, settings), key
        assert gzip.decompress(held.data) == held.raw()

    # Coalescing: k batches written, then one step applies them all (the follower's gap
    # between steps), for each k; the time per batch against k = 1, in the same run.
    coalesce: dict[str, dict[str, float]] = {}
    more = iter(batches(ids, 10_000, 13, start + dt.timedelta(hours=1)))
    for k in [int(x) for x in a.steps.split(",")]:
        per_step: list[float] = []
        for step in range(max(4, 60 // k)):
            for _ in range(k):
                items = next(more)
                checked = observations.check(catalog, EVERYTHING, items, dt.datetime.now(dt.UTC))
                store.observe(checked.accepted, user="bench")
            t0 = time.perf_counter()
            catalog.follow()
            if step:
                per_step.append(time.perf_counter() - t0)
            store.settle(history=False)
        coalesce[str(k)] = {
            "step_ms": statistics.median(per_step) * 1000,
            "per_batch_ms": statistics.median(per_step) * 1000 / k,
        }
    base = next(iter(coalesce.values()))["per_batch_ms"]
    for got in coalesce.values():
        got["per_batch_over_first"] = got["per_batch_ms"] / base
    log(f"coalescing (batches per step: median ms per step, per batch): {coalesce}")

    result = {
        "lights": a.lights,
        "coalesce": coalesce,
        "batches": len(apply_s),
        "tiles": len(keys),
        "stale_per_batch": statistics.median(touched),
        "apply_ms": ms(apply_s),
        "redraw_ms": ms(redraw_s),
        "redraw_ms_per_tile": statistics.median(redraw_s) * 1000 / statistics.median(touched),
        "baseline_scratch_redraw_ms": ms(scratch_s),
        "baseline_rebuild_ms": ms(rebuild_s),
    }
    apply_ratio = result["apply_ms"]["median"] / result["baseline_rebuild_ms"]["median"]
    redraw_ratio = result["redraw_ms"]["median"] / result["baseline_scratch_redraw_ms"]["median"]
    result["ratios"] = {"apply_over_rebuild": apply_ratio, "redraw_over_scratch": redraw_ratio}
    print(json.dumps(result, indent=2))
    print(
        f"per batch of 1,000 readings (medians): apply {result['apply_ms']['median']:.1f} ms "
        f"({apply_ratio:.2f}x a rebuild of the layer's derived data, "
        f"{result['baseline_rebuild_ms']['median']:.1f} ms); redraw of "
        f"{result['stale_per_batch']:.0f} stale tiles {result['redraw_ms']['median']:.1f} ms "
        f"({result['redraw_ms_per_tile']:.2f} ms a tile; {redraw_ratio:.2f}x from scratch, "
        f"{result['baseline_scratch_redraw_ms']['median']:.1f} ms)"
    )
    if a.label:
        out = ROOT / "bench" / "results" / f"apply_{a.label}.json"
        out.write_text(json.dumps(result, indent=2))
        log(f"wrote {out}")
    store.close()
    shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
