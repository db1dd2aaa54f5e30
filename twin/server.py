"""Running the HTTP app under uvicorn (`twin serve`), in one process or several.

The catalog (every layer in memory) and its tile arrays and spatial indexes are built once,
before the first request. With `workers > 1` they are built in a supervising process that
then forks the workers, so all of them share those arrays copy-on-write (a second worker
costs little memory and no start-up time). Each worker has its own listening socket in one
SO_REUSEPORT group, so the kernel spreads connections over the workers, and its own tile
cache, filled also by the tiles the other workers render (`twin.peers`).

With several workers the server serves a read-only snapshot of the store: a change made
through one worker (an edit, a reload) reaches only that worker's catalog, and the other
workers keep serving what was loaded at start. Use one worker (the default) where the twin
is edited live. `/metrics` counts per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import traceback
from typing import Any

import uvicorn

from layers.catalog import Catalog
from layers.settings import StoreSettings, open_store
from twin.app import create_app, warm
from twin.peers import TilePeers, mesh
from twin.settings import ServerSettings

BACKLOG = 2048


def load_catalog(store_settings: StoreSettings) -> Catalog:
    """The catalog of the store with every layer's tile arrays and spatial index built."""
    return warm(Catalog(open_store(store_settings, create=False)))


def _uvicorn_options(settings: ServerSettings, access_log: bool, log_level: str) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "access_log": access_log,
        "proxy_headers": True,
        "server_header": False,
        "timeout_graceful_shutdown": 10,
    }


def serve(
    settings: ServerSettings,
    store_settings: StoreSettings,
    *,
    workers: int = 1,
    access_log: bool = True,
    log_level: str = "info",
) -> None:
    """Serve the store until interrupted (SIGINT or SIGTERM), in `workers` processes."""
    catalog = load_catalog(store_settings)
    options = _uvicorn_options(settings, access_log, log_level)
    if workers <= 1:
        try:
            uvicorn.run(create_app(settings, store_settings, catalog=catalog), **options)
        finally:
            catalog.store.close()
        return
    _serve_workers(settings, store_settings, catalog, workers, options)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket in the SO_REUSEPORT group of `host:port`.

    Made with protocol IPPROTO_TCP so that asyncio sets TCP_NODELAY on the connections it
    accepts (uvicorn#3149: with protocol 0 it does not, and every keep-alive request waits
    for a delayed ACK); uvloop sets it regardless."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _port_is_free(host: str, port: int) -> None:
    """Raise OSError when something listens on `host:port`, even a SO_REUSEPORT group that
    our listeners would silently join (an earlier twin server still running)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _serve_workers(
    settings: ServerSettings,
    store_settings: StoreSettings,
    catalog: Catalog,
    n: int,
    options: dict[str, Any],
) -> None:
    sockets: list[socket.socket] = []
    try:
        if settings.port:
            _port_is_free(settings.host, settings.port)
        for _ in range(n):
            # Port 0: the first listener picks a free port and the others join it.
            port = sockets[0].getsockname()[1] if sockets else settings.port
            sockets.append(listener(settings.host, port))
    except OSError:
        for s in sockets:
            s.close()
        catalog.store.close()
        raise
    port = sockets[0].getsockname()[1]
    links = mesh(n)
    # No database connection may cross a fork: each worker opens its own.
    catalog.store.close()
    # Objects loaded so far stay out of the collector's way, so the pages holding them
    # stay shared with the workers instead of being copied when a collection walks them.
    gc.freeze()
    pids: list[int] = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for j in range(n):
                    if j != i:
                        sockets[j].close()
                        for s in links[j]:
                            s.close()
                _worker(settings, store_settings, catalog, sockets[i], links[i], options)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    for s in sockets:
        s.close()
    for ends in links:
        for s in ends:
            s.close()
    print(
        f"twin: serving http://{settings.host}:{port} with {n} workers "
        f"(pids {', '.join(map(str, pids))})",
        flush=True,
    )
    _supervise(pids)


def _worker(
    settings: ServerSettings,
    store_settings: StoreSettings,
    catalog: Catalog,
    sock: socket.socket,
    peer_sockets: list[socket.socket],
    options: dict[str, Any],
) -> None:
    catalog.store = open_store(store_settings, create=False)
    app = create_app(settings, store_settings, catalog=catalog)
    config = uvicorn.Config(app, **options)
    server = uvicorn.Server(config)
    peers = TilePeers(peer_sockets)
    app.state.tiles.peers = peers

    async def main() -> None:
        await peers.start(app.state.tiles.cache)
        try:
            await server.serve(sockets=[sock])
        finally:
            await peers.close()
            print(
                f"twin: worker {os.getpid()} served {server.server_state.total_requests} "
                f"requests; tiles: {peers.sent} sent to, {peers.received} taken from "
                "the other workers",
                file=sys.stderr,
                flush=True,
            )

    # uvicorn re-raises the signal that stopped it once it has shut down: let that land
    # here, so the worker goes on to report and close its store.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(main())
    finally:
        catalog.store.close()


def _supervise(pids: list[int]) -> None:
    """Wait for the workers; on SIGINT/SIGTERM stop them all, and if one dies, the rest."""
    alive = set(pids)
    stopping = False

    def stop(signum: int = signal.SIGTERM, frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed = False
    while alive:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        alive.discard(pid)
        if not stopping:
            failed = True
            code = os.waitstatus_to_exitcode(status)
            print(f"twin: worker {pid} exited ({code}); stopping the others", file=sys.stderr)
            stop()
    if failed:
        raise SystemExit(1)
