"""Import benchmark: `twin import` of a generated N-pipe GeoPackage against the raw
`pyogrio.read_dataframe` of the same file, in the same run (run by hand, never in tests).

    .venv/bin/python bench/import_bench.py                    # 1M pipes, generated in a temp dir
    .venv/bin/python bench/import_bench.py --n 100000         # smaller, while developing
    .venv/bin/python bench/import_bench.py --gpkg city.gpkg   # reuse a generated file

The city comes from ../shared/bench/gen_city.py (run from where it is, writing into a temp
dir). Every step runs in a fresh child process, which reports its wall time around the work
alone (imports excluded) and its peak resident memory (`ru_maxrss`), so steps do not share
caches of Python objects and memory peaks do not hide each other. The aim of issue 2: the
import costs no more than 3x the raw read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = Path(os.environ.get("TWIN_GEN_CITY", ROOT.parent / "shared" / "bench" / "gen_city.py"))


def _rss_mb() -> float:
    """Current resident memory of this process, MB (from /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(step: str, gpkg: str, store: str) -> None:
    """Run one step and print its measures as JSON (this is the child process)."""
    import pyogrio

    if step in ("import", "reimport"):
        from importers.options import ImportOptions
        from importers.pipeline import import_file
        from layers.gpkg import GeoPackageStore
    before = _rss_mb()
    t0 = time.perf_counter()
    if step == "raw":
        features = len(pyogrio.read_dataframe(gpkg, layer="pipes"))
        extra: dict = {}
    elif step == "raw-arrow":
        features = len(pyogrio.read_dataframe(gpkg, layer="pipes", use_arrow=True))
        extra = {}
    else:
        db = GeoPackageStore(store)
        report = import_file(db, "pipes", gpkg, ImportOptions(layer="pipes"), user="bench")
        db.close()
        features = report.read
        extra = {
            "added": report.added,
            "unchanged": report.unchanged,
            "rejected": len(report.rejected),
        }
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"seconds": seconds, "features": features, "rss_before_mb": before, "peak_mb": peak}
            | extra
        )
    )


def measure(step: str, gpkg: Path, store: Path) -> dict:
    """Run `step` in a fresh child process; its JSON line of measures."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", step, str(gpkg), str(store)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def generate(n: int, folder: Path) -> Path:
    """A city of `n` pipes (and as many lights) from the shared generator."""
    if not GENERATOR.exists():
        sys.exit(f"no generator at {GENERATOR}; set TWIN_GEN_CITY or pass --gpkg")
    out = folder / f"city_{n}.gpkg"
    print(f"generating {n:,} pipes with {GENERATOR} ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, str(GENERATOR), "--n", str(n), "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"  {time.perf_counter() - t0:.0f} s, {out.stat().st_size / 1e6:.0f} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="pipes to generate (default 1M)")
    ap.add_argument("--gpkg", type=Path, help="an existing generated city instead")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of runs; the fastest counts")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (file and store)")
    ap.add_argument("--child", nargs=3, metavar=("STEP", "GPKG", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    tmp = Path(tempfile.mkdtemp(prefix="twin-import-bench-"))
    try:
        gpkg = args.gpkg or generate(args.n, tmp)
        steps = ("raw", "raw-arrow", "import", "reimport")
        runs: dict[str, list[dict]] = {step: [] for step in steps}
        # Rounds interleave the steps, so that each sees the same load on a shared machine.
        for round_no in range(args.repeat):
            store = tmp / "store"
            if store.exists():
                shutil.rmtree(store)
            for step in steps:
                runs[step].append(measure(step, gpkg, store))
            pair = runs["import"][-1]["seconds"] / runs["raw"][-1]["seconds"]
            print(f"round {round_no + 1}: import / raw read {pair:.2f}x", flush=True)
        results = {step: min(r, key=lambda x: x["seconds"]) for step, r in runs.items()}
        print()
        for step, r in results.items():
            print(
                f"{step:10s} {r['seconds']:8.2f} s {r['features'] / r['seconds']:12,.0f} features/s"
                f"   peak {r['peak_mb']:7,.0f} MB (after imports {r['rss_before_mb']:5,.0f} MB)"
            )
        raw, imp = results["raw"], results["import"]
        print(
            f"\n{gpkg.name}: {imp['features']:,} pipes, {imp['added']:,} added, "
            f"{imp['rejected']:,} rejected; re-import: {results['reimport']['unchanged']:,} unchanged"
        )
        print(
            f"import / raw pyogrio.read_dataframe: {imp['seconds'] / raw['seconds']:.2f}x time, "
            f"{imp['peak_mb'] / raw['peak_mb']:.2f}x peak memory (aim: <= 3x time)"
        )
        print(
            f"re-import (nothing changed) / raw read: "
            f"{results['reimport']['seconds'] / raw['seconds']:.2f}x time"
        )
        pairs = sorted(
            i["seconds"] / r["seconds"] for i, r in zip(runs["import"], runs["raw"], strict=True)
        )
        print(
            "import / raw read, round by round: "
            + ", ".join(f"{p:.2f}x" for p in pairs)
            + f" (median {pairs[len(pairs) // 2]:.2f}x)"
        )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
