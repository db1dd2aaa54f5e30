"""Serve a twin store for the benchmark: like `twin serve`, with the engine arrays prepared
before the first request and the access log off (as tipg runs in the kit).

`--workers N` forks N server processes after loading (they share the loaded data copy-on-write),
each listening on its own SO_REUSEPORT socket so the kernel spreads connections over them.
Each worker keeps its own tile cache.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

import uvicorn

from layers.catalog import Catalog
from layers.models import Access
from layers.settings import StoreSettings, open_store
from tiles.prepared import prepare
from twin.app import create_app
from twin.settings import ServerSettings


def _serve(
    catalog: Catalog, store_settings: StoreSettings, port: int, sock: socket.socket | None
) -> None:
    app = create_app(ServerSettings(port=port), store_settings, catalog=catalog)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    t0 = time.perf_counter()
    store_settings = StoreSettings(store=a.store)
    catalog = Catalog(open_store(store_settings, create=False))
    for layer in catalog.layers(Access.RESTRICTED).values():
        prepare(layer)
        _ = layer.tree
    print(f"catalog loaded and prepared in {time.perf_counter() - t0:.1f} s", flush=True)
    if a.workers <= 1:
        _serve(catalog, store_settings, a.port, None)
        return
    children = []
    for _ in range(a.workers):
        pid = os.fork()
        if pid == 0:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", a.port))
            sock.listen(2048)
            _serve(catalog, store_settings, a.port, sock)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        for pid in children:  # gone before the port can be reused by the next server
            os.waitpid(pid, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
