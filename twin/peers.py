"""Tiles shared between worker processes: each tile one worker renders is handed to the
others, so every worker's cache holds it and no tile is rendered twice.

The workers are forked from one process (`twin.server`) and joined pairwise by Unix socket
pairs made before the fork. A message is one pickled `(key, generation, etag, raw, gzip)`
behind its length; pickle is safe here because both ends are this same program. A worker
takes a tile only while its cache's generation for the tile's collections equals the
sender's (`TileCache.insert`), i.e. while both serve the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import struct

from tiles.cache import CachedTile, TileCache, TileKey

log = logging.getLogger("twin.peers")

_LENGTH = struct.Struct("!Q")
MAX_BACKLOG = 64 * 1024 * 1024
"""Bytes queued for one peer beyond which new tiles are not sent to it (a stuck peer must
not make this worker hold every tile it renders)."""


def mesh(n: int) -> list[list[socket.socket]]:
    """Socket pairs joining `n` workers pairwise: entry i holds worker i's ends (n - 1)."""
    ends: list[list[socket.socket]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ends[i].append(a)
            ends[j].append(b)
    return ends


class TilePeers:
    """This worker's links to the other workers: `publish` what it renders, take theirs."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.received = 0
        """Tiles taken from other workers."""
        self.sent = 0
        """Messages sent to the other workers (a rendered tile, or its gzip bytes later)."""

    async def start(self, cache: TileCache) -> None:
        """Open the links on the running event loop and take tiles into `cache` from now on."""
        for sock in self._sockets:
            sock.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            self._writers.append(writer)
            self._tasks.append(asyncio.create_task(self._listen(reader, cache)))

    def publish(self, key: TileKey, tile: CachedTile, generation: tuple[int, ...]) -> None:
        """Hand a tile rendered from data at `generation` to every other worker, or its gzip
        bytes once made (call on the event loop; writes are buffered, never awaited)."""
        if not self._writers:
            return
        gz = tile.data if tile.compressed else None
        body = pickle.dumps((key, generation, tile.etag, tile.raw(), gz), pickle.HIGHEST_PROTOCOL)
        frame = _LENGTH.pack(len(body)) + body
        for writer in self._writers:
            if not writer.is_closing() and writer.transport.get_write_buffer_size() < MAX_BACKLOG:
                writer.write(frame)
        self.sent += 1

    async def _listen(self, reader: asyncio.StreamReader, cache: TileCache) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                key, generation, etag, raw, gz = pickle.loads(await reader.readexactly(size))
                held = cache.peek(key)
                if held is None:
                    tile = CachedTile(raw, etag, cache.level, gz)
                    self.received += cache.insert(key, tile, generation=generation)
                elif gz is not None and not held.compressed and held.etag == etag:
                    cache.gzip(key, held, gz)  # compressed once, for every worker

    async def close(self) -> None:
        """Stop taking tiles and close the links."""
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        self._tasks, self._writers = [], []
