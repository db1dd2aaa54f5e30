"""Serve a twin store for the benchmark: like `twin serve`, with the engine arrays prepared
before the first request and the access log off (as tipg runs in the kit)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import uvicorn

from layers.catalog import Catalog
from layers.models import Access
from layers.settings import StoreSettings, open_store
from tiles.prepared import prepare
from twin.app import create_app
from twin.settings import ServerSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--port", type=int, default=8090)
    a = ap.parse_args()
    t0 = time.perf_counter()
    store_settings = StoreSettings(store=a.store)
    catalog = Catalog(open_store(store_settings, create=False))
    for layer in catalog.layers(Access.RESTRICTED).values():
        prepare(layer)
        _ = layer.tree
    print(f"catalog loaded and prepared in {time.perf_counter() - t0:.1f} s", flush=True)
    app = create_app(ServerSettings(port=a.port), store_settings, catalog=catalog)
    uvicorn.run(app, host="127.0.0.1", port=a.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
