"""Tiles shared between worker processes: each tile one worker renders is handed to the
others, so every worker's cache holds it and no tile is rendered twice.

The workers are forked from one process (`twin.server`) and joined pairwise by Unix socket
pairs (`link`). A message is one pickled `(key, generation, etag, raw, gzip)` behind its
length, or None (`news`: the store's change log has moved), or an int (`applied`: the
entry of the log a worker serves up to), or a list (`written`: the runs of readings a worker
has just written, for the others' event streams); pickle is safe here because both
ends are this same program. A worker takes a tile only while its cache's generation for the tile's collections equals the sender's
(`TileCache.insert`), i.e. while both serve the same data.

The set of workers changes: a worker that dies closes its ends, and the others drop those
links (end of file); a worker started in its place gets new links to every live worker, whose
other ends reach those workers through their control sockets (`control_pair`, `send_link`).
A worker that gains a link sends the new peer the tiles it holds, so a restarted worker
starts with a warm cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import struct
from collections.abc import Callable

from layers.models import StateRun
from tiles.cache import CachedTile, TileCache, TileKey

log = logging.getLogger("twin.peers")

_LENGTH = struct.Struct("!Q")
MAX_BACKLOG = 64 * 1024 * 1024
"""Bytes queued for one peer beyond which new tiles are not sent to it (a stuck peer must
not make this worker hold every tile it renders); also the most a worker sends a new peer
from its cache."""


_NEWS_BODY = pickle.dumps(None)
_NEWS = _LENGTH.pack(len(_NEWS_BODY)) + _NEWS_BODY
"""The message saying the store's change log has moved."""


def link() -> tuple[socket.socket, socket.socket]:
    """A socket pair joining two workers, one end for each."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def mesh(n: int) -> list[list[socket.socket]]:
    """Socket pairs joining `n` workers pairwise: entry i holds worker i's ends (n - 1)."""
    ends: list[list[socket.socket]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = link()
            ends[i].append(a)
            ends[j].append(b)
    return ends


def control_pair() -> tuple[socket.socket, socket.socket]:
    """The channel from the supervising process to one worker: (worker's end, supervisor's
    end). Message-oriented, so each link handed over is one message."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_link(control: socket.socket, end: socket.socket) -> bool:
    """Hand `end` (of a `link`) to the worker at the other side of `control` (SCM_RIGHTS);
    whether it went (not when that worker is gone or not reading)."""
    try:
        socket.send_fds(control, [b"L"], [end.fileno()])
    except OSError:
        return False
    return True


def _frame(key: TileKey, generation: tuple[int, ...], tile: CachedTile) -> bytes:
    gz = tile.data if tile.compressed else None
    body = pickle.dumps((key, generation, tile.etag, tile.raw(), gz), pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


def _held_keys(cache: TileCache) -> list[TileKey]:
    """The keys `cache` holds, most recently used first."""
    # TileCache offers no view of its keys yet; read its LRU order under its lock.
    with cache._lock:
        return list(reversed(cache._tiles))


class TilePeers:
    """This worker's links to the other workers: `publish` what it renders, take theirs, and
    take new links from the supervisor's `control` socket (`on_control_closed` is called when
    the supervisor is gone)."""

    def __init__(
        self,
        sockets: list[socket.socket],
        control: socket.socket | None = None,
        on_control_closed: Callable[[], None] | None = None,
    ) -> None:
        self._sockets = sockets
        self._control = control
        self._on_control_closed = on_control_closed
        self._cache: TileCache | None = None
        self._links: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._joining: set[asyncio.Task[None]] = set()
        self.received = 0
        """Tiles taken from other workers."""
        self.sent = 0
        """Messages sent to the other workers (a rendered tile, or its gzip bytes later)."""
        self.warmed = 0
        """Tiles from this worker's cache sent to workers that joined later."""
        self.on_news: Callable[[], None] | None = None
        """Called when another worker says the store's change log has moved (`news`)."""
        self.seqs: dict[asyncio.StreamWriter, int] = {}
        """The change-log entry each other worker said it serves up to (`applied`)."""
        self.on_written: Callable[[list[StateRun]], None] | None = None
        """Called with the runs of readings another worker has just written (`written`)."""

    @property
    def links(self) -> int:
        """Live links to other workers."""
        return len(self._links)

    async def start(self, cache: TileCache) -> None:
        """Open the links on the running event loop and take tiles into `cache` from now on."""
        self._cache = cache
        for sock in self._sockets:
            await self._join(sock, warm=False)
        if self._control is not None:
            self._control.setblocking(False)
            asyncio.get_running_loop().add_reader(self._control.fileno(), self._take_links)

    async def _join(self, sock: socket.socket, *, warm: bool) -> None:
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._links[writer] = asyncio.create_task(self._listen(reader, writer))
        if warm:
            await self._warm(writer)

    def _take_links(self) -> None:
        """Take the link ends waiting on the control socket (called when it is readable)."""
        assert self._control is not None
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(self._control, 16, 4)
            except BlockingIOError:
                return
            except OSError:
                msg, fds = b"", []
            if not msg and not fds:
                asyncio.get_running_loop().remove_reader(self._control.fileno())
                self._control.close()
                self._control = None
                if self._on_control_closed is not None:
                    self._on_control_closed()
                return
            for fd in fds:
                task = asyncio.create_task(self._join(socket.socket(fileno=fd), warm=True))
                self._joining.add(task)
                task.add_done_callback(self._joining.discard)

    async def _warm(self, writer: asyncio.StreamWriter) -> None:
        """Send a new peer the tiles this worker holds, most recently used first, up to
        `MAX_BACKLOG` bytes, paced by how fast the peer reads."""
        cache = self._cache
        assert cache is not None
        queued = 0
        with contextlib.suppress(ConnectionError):
            for key in _held_keys(cache):
                # Generation before tile: an invalidation in between drops the tile (or makes
                # the receiver refuse it), never sends stale bytes under a fresh generation.
                generation = cache.generation(key.collections)
                tile = cache.peek(key)
                if tile is None:
                    continue
                if writer.is_closing() or queued >= MAX_BACKLOG:
                    return
                frame = _frame(key, generation, tile)
                writer.write(frame)
                queued += len(frame)
                self.warmed += 1
                await writer.drain()

    def publish(self, key: TileKey, tile: CachedTile, generation: tuple[int, ...]) -> None:
        """Hand a tile rendered from data at `generation` to every other worker, or its gzip
        bytes once made (call on the event loop; writes are buffered, never awaited)."""
        if not self._links:
            return
        frame = _frame(key, generation, tile)
        for writer in self._links:
            if not writer.is_closing() and writer.transport.get_write_buffer_size() < MAX_BACKLOG:
                writer.write(frame)
        self.sent += 1

    def applied(self, seq: int) -> None:
        """Tell every other worker that this one serves the store's log up to entry `seq`
        (call on the event loop)."""
        body = pickle.dumps(seq)
        frame = _LENGTH.pack(len(body)) + body
        for writer in self._links:
            if not writer.is_closing():
                writer.write(frame)

    def news(self) -> None:
        """Tell every other worker that this one has just written to the store, so they
        apply it now rather than when they next look (call on the event loop)."""
        for writer in self._links:
            if not writer.is_closing():
                writer.write(_NEWS)

    def written(self, runs: list[StateRun]) -> None:
        """Tell every other worker the runs of readings this one has just written (which
        also says the log has moved, as `news`; call on the event loop)."""
        body = pickle.dumps(runs, pickle.HIGHEST_PROTOCOL)
        frame = _LENGTH.pack(len(body)) + body
        for writer in self._links:
            if not writer.is_closing():
                writer.write(frame)

    async def _listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cache = self._cache
        assert cache is not None
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                    message = pickle.loads(await reader.readexactly(size))
                    if message is None:  # `news`
                        if self.on_news is not None:
                            self.on_news()
                        continue
                    if isinstance(message, int):  # `applied`
                        self.seqs[writer] = message
                        continue
                    if isinstance(message, list):  # `written`
                        if self.on_written is not None:
                            self.on_written(message)
                        elif self.on_news is not None:
                            self.on_news()
                        continue
                    key, generation, etag, raw, gz = message
                    held = cache.peek(key)
                    if held is None:
                        # Drawn just now: fresh here when drawn from the same data, else
                        # (with a refresh time) a newer stale tile.
                        tile = CachedTile(raw, etag, cache.level, gz, drawn_here=False)
                        self.received += cache.insert(key, tile, generation=generation)
                    elif gz is not None and not held.compressed and held.etag == etag:
                        cache.gzip(key, held, gz)  # compressed once, for every worker
        finally:
            # The peer is gone (or this worker is closing): drop the link.
            self._links.pop(writer, None)
            self.seqs.pop(writer, None)
            writer.close()

    async def close(self) -> None:
        """Stop taking tiles and links, and close the links."""
        if self._control is not None:
            asyncio.get_running_loop().remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        for task in [*self._joining, *self._links.values()]:
            task.cancel()
        for writer in list(self._links):
            writer.close()
        self._links, self._joining = {}, set()
