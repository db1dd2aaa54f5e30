"""Serve a twin store for the benchmark: `twin serve` (`twin.server.serve`, the product's own
path, one or several workers) with the access log off, as the kit runs tipg.

    .venv/bin/python bench/serve_twin.py --store /tmp/bench/data/twin_100k --port 8090 --workers 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from layers.settings import StoreSettings
from twin.server import serve
from twin.settings import ServerSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    print(f"serving {a.store} on port {a.port}, {a.workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    serve(
        ServerSettings(_env_file=None, host="127.0.0.1", port=a.port),
        StoreSettings(store=a.store),
        workers=a.workers,
        access_log=False,
        log_level="warning",
    )
    print(f"stopped after {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
