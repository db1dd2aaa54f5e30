"""`twin serve --workers N`: N real worker processes share the connections, hand each other
the tiles they render, stop together; sockets get TCP_NODELAY; peers refuse stale tiles."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import http.client
import socket
import time
from pathlib import Path

import httpx
import morecantile
import pytest
from typer.testing import CliRunner

from layers.gpkg import GeoPackageStore
from layers.models import Access, StateRun
from tests.twin.serve_fixtures import fill_store, sites_layer, wuhan_pipes
from tests.twin.worker_fixtures import children, get, lookups, serving, serving_pid
from tiles.cache import TileCache, TileKey, pack
from tiles.grid import Tile
from tiles.render import render_tile
from tiles.settings import TileSettings
from twin.cli import app
from twin.peers import TilePeers, mesh
from twin.server import listener

TMS = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    where = tmp_path_factory.mktemp("workers")
    store = fill_store(where / "store", [wuhan_pipes(), sites_layer()])
    with serving(store, 2, where / "serve.log") as served:
        yield served, store


def test_two_processes_share_the_connections_and_the_tiles(two_workers):
    served, store = two_workers
    proc, port = served.proc, served.port
    workers = children(proc.pid)
    assert len(workers) == 2 and proc.pid not in workers
    by_worker: dict[int, list[http.client.HTTPConnection]] = {w: [] for w in workers}
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(24)]
    for conn in conns:
        assert get(conn, "/healthz")[0] == 200  # accepted by now
        by_worker[serving_pid(conn, port, workers)].append(conn)
    # The kernel spreads connections over both (all 24 on one: p = 2^-23).
    assert all(by_worker[w] for w in workers), {w: len(c) for w, c in by_worker.items()}

    t = TMS.tile(114.3025, 30.5025, 15)
    path = f"/collections/pipes/tiles/WebMercatorQuad/15/{t.y}/{t.x}"
    first, second = (by_worker[w][0] for w in workers)
    before = lookups(second)
    status, body = get(first, path)  # rendered by the first worker ...
    assert status == 200
    time.sleep(1.0)  # ... and handed to the second one over its socket pair
    status, again = get(second, path)
    after = lookups(second)
    assert status == 200 and again == body
    assert after.get("miss", 0) == before.get("miss", 0)  # the second worker did not render
    assert after["hit"] == before.get("hit", 0) + 1
    s = GeoPackageStore(store, create=False)
    try:
        pipes = s.load("pipes", Access.RESTRICTED)
    finally:
        s.close()
    assert body == render_tile([(pipes, None)], Tile(t.x, t.y, 15), TileSettings())
    for conn in conns:
        conn.close()


def test_stopping_the_server_stops_every_worker(two_workers):
    served, _ = two_workers
    proc, port = served.proc, served.port
    workers = children(proc.pid)
    proc.terminate()
    proc.wait(timeout=60)
    text = served.output()
    assert proc.returncode == 0, text
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
    assert text.count(" requests; tiles: ") == 2, text  # each worker's closing line
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_port_in_use_is_refused_even_by_a_reuseport_group(tmp_path):
    """A server still running on the port must not silently share its connections."""
    store = fill_store(tmp_path / "store", [sites_layer()])
    held = listener("127.0.0.1", 0)  # as an earlier `twin serve --workers` would hold it
    port = held.getsockname()[1]
    try:
        args = ["serve", "--store", str(store), "--port", str(port), "--workers", "2"]
        r = CliRunner().invoke(app, args)
    finally:
        held.close()
    assert r.exit_code != 0
    assert f"cannot serve on 127.0.0.1:{port}" in r.output


def test_accepted_connections_get_tcp_nodelay_even_on_plain_asyncio():
    """uvicorn#3149: a listener made with protocol 0 leaves Nagle on under asyncio."""
    sock = listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    got: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            s = transport.get_extra_info("socket")
            got.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.read()
        writer.close()
        server.close()

    asyncio.run(main())
    assert got and got[0] != 0


def test_listeners_on_one_port_form_a_reuseport_group():
    first = listener("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        # The second joins while the first still listens: the group the workers form.
        second = listener("127.0.0.1", port)
        second.close()
        # A plain socket (no SO_REUSEPORT) cannot take the port meanwhile.
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    finally:
        first.close()


def test_peers_hand_over_fresh_tiles_and_refuse_stale_ones():
    # Other gzip levels on each side: the receiver's bytes can only be the sender's if they
    # were handed over (the level is in the gzip header).
    a_cache, b_cache = TileCache(level=9), TileCache(level=1)
    a_ends, b_ends = mesh(2)
    fresh = TileKey.of(Tile(3, 5, 4), ["pipes"])
    stale = TileKey.of(Tile(3, 6, 4), ["parks"])
    tile = pack(b"\x1a\x03abc" * 20, 9)

    async def main() -> None:
        a, b = TilePeers(a_ends), TilePeers(b_ends)
        await a.start(a_cache)
        await b.start(b_cache)
        b_cache.invalidate("parks", None)  # b now serves other parks data than a
        # Stale first: the stream is ordered, so once the fresh one is in, the stale one
        # has been read (and refused).
        a.publish(stale, tile, a_cache.generation(stale.collections))
        a.publish(fresh, tile, a_cache.generation(fresh.collections))
        for _ in range(3000):
            if b_cache.peek(fresh) is not None:
                break
            await asyncio.sleep(0.01)
        await a.close()
        await b.close()
        assert a.sent == 2 and b.received == 1

    asyncio.run(main())
    got = b_cache.get(fresh)
    assert got is not None and got.raw() == tile.raw() and got.etag == tile.etag
    assert got.compressed and got.data == tile.data  # the sender's gzip bytes came along
    assert got.data != pack(tile.raw(), 1).data
    assert b_cache.get(stale) is None


def test_gzip_bytes_made_by_one_worker_reach_the_others():
    a_cache, b_cache = TileCache(level=9), TileCache(level=1)  # see the test above
    a_ends, b_ends = mesh(2)
    key = TileKey.of(Tile(3, 5, 4), ["pipes"])
    raw = b"\x1a\x10" + b"pipes pipes pipes"

    async def main() -> None:
        a, b = TilePeers(a_ends), TilePeers(b_ends)
        await a.start(a_cache)
        await b.start(b_cache)
        made = a_cache.put(key, raw)  # rendered for an identity client: no gzip yet
        a.publish(key, made, a_cache.generation(key.collections))
        for _ in range(3000):
            if b.received:
                break
            await asyncio.sleep(0.01)
        assert not b_cache.peek(key).compressed
        a_cache.gzip(key, made)  # a gzip client asked the first worker
        a.publish(key, made, a_cache.generation(key.collections))
        for _ in range(3000):
            if b_cache.peek(key).compressed:
                break
            await asyncio.sleep(0.01)
        await a.close()
        await b.close()

    asyncio.run(main())
    held = b_cache.peek(key)
    assert held.compressed and held.data == a_cache.peek(key).data
    assert held.data != gzip.compress(raw, 1, mtime=0)  # taken, not made again
    assert gzip.decompress(held.data) == raw
    assert b_cache.nbytes == len(raw) + len(held.data)


def test_readings_written_by_one_worker_reach_the_others():
    """`TilePeers.written`: the runs of readings one worker wrote, as they were, at the
    others (for their event streams), and also as news that the log moved where nothing
    takes the runs."""
    a_ends, b_ends = mesh(2)
    t = dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC)
    runs = [StateRun(41, "lights", ["L1", "L2"], [{"status": "off"}, {"status": "fault"}], "gw", t)]
    got: list[list[StateRun]] = []
    news: list[None] = []

    async def main() -> None:
        a, b = TilePeers(a_ends), TilePeers(b_ends)
        await a.start(TileCache())
        await b.start(TileCache())
        b.on_written = got.append
        a.written(runs)
        for _ in range(3000):
            if got:
                break
            await asyncio.sleep(0.01)
        b.on_written = None
        b.on_news = lambda: news.append(None)
        a.written(runs)
        for _ in range(3000):
            if news:
                break
            await asyncio.sleep(0.01)
        await a.close()
        await b.close()

    asyncio.run(main())
    assert got == [runs] and news == [None]
