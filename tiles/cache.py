"""An in-memory tile cache: tiles (raw and gzip) with ETags, and exact invalidation by box.

Subscribe `TileCache.invalidate` to `layers.catalog.Catalog.subscribe`: when a collection
changes inside a box, every cached tile holding that collection whose bounds meet the box
is dropped, at every zoom, and no other. A tile only ever depends on the features that meet
it (clipping, simplification, clustering and budgets are all per tile), so this is exact as
long as the box covers the old and the new geometry of what changed.
"""

from __future__ import annotations

import gzip
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from layers.models import Bounds
from tiles.grid import ORIGIN, Tile, tile_width, to_mercator

if TYPE_CHECKING:
    from tiles.render import TileDraft

_EDGE = 1e-6
"""Metres of slack on tile edges, so a box exactly on an edge (up to floating-point error in
the projection) counts as touching both tiles."""


_BROADCAST = 1 << 20
"""Most box-by-cell tests made at once (bytes of each boolean temporary)."""


def _cells_met(
    cells: list[tuple[int, int]],
    xmin: np.ndarray,
    xmax: np.ndarray,
    ymin: np.ndarray,
    ymax: np.ndarray,
) -> list[tuple[int, int]]:
    """The `cells` (x, y) inside any of the tile ranges `xmin..xmax`, `ymin..ymax`: every
    box against every cell, a slice of the boxes at a time."""
    xy = np.array(cells, dtype=np.int64).reshape(-1, 2)
    cx, cy = xy[:, 0], xy[:, 1]
    met = np.zeros(len(cells), dtype=bool)
    step = max(1, _BROADCAST // max(1, len(cells)))
    for s in range(0, len(xmin), step):
        x0, x1 = xmin[s : s + step, None], xmax[s : s + step, None]
        y0, y1 = ymin[s : s + step, None], ymax[s : s + step, None]
        met |= ((x0 <= cx) & (cx <= x1) & (y0 <= cy) & (cy <= y1)).any(axis=0)
    return [cells[i] for i in np.flatnonzero(met).tolist()]


class TileKey(NamedTuple):
    """What a cached tile depends on besides the data: who asks, which layers, which filter."""

    scope: str
    """The caller's view of the data (`layers.catalog.lens_key`): callers who see the same
    share tiles, and a tile of one view is never served to another."""
    collections: tuple[str, ...]
    filter: str | None
    z: int
    x: int
    y: int

    @classmethod
    def of(
        cls,
        tile: Tile,
        collections: Iterable[str],
        *,
        scope: str = "public",
        filter: str | None = None,
    ) -> TileKey:
        """The key of `tile` for these collections (order kept: it is the layer order)."""
        return cls(scope, tuple(collections), filter, tile.z, tile.x, tile.y)


class CachedTile:
    """A tile as served: its raw MVT (b"" for an empty tile), ETag, and gzip bytes.

    Both encodings are kept once made, so neither kind of client pays a (de)compression
    on a hit; the gzip bytes are made on first need (`TileCache.gzip`), as a tile that only
    identity clients ask for never needs them.
    """

    __slots__ = ("_gz", "_raw", "draft", "drawn_here", "etag", "level", "made")

    def __init__(
        self,
        raw: bytes,
        etag: str,
        level: int = 1,
        gz: bytes | None = None,
        made: float | None = None,
        drawn_here: bool = True,
        draft: TileDraft | None = None,
    ) -> None:
        self._raw = raw
        self.etag = etag
        self.level = level
        self._gz = gz if raw else b""
        self.made = time.monotonic() if made is None else made
        """When the data it was drawn from was read (`time.monotonic`)."""
        self.drawn_here = drawn_here
        """Drawn by this process (not taken from another worker)."""
        self.draft = draft
        """What its drawing kept for drawing it again when its data changes
        (`tiles.render.draw_tile`); counted in `nbytes`."""

    def __repr__(self) -> str:
        return f"CachedTile(size={self.size}, etag={self.etag})"

    @property
    def size(self) -> int:
        """Bytes of the uncompressed MVT."""
        return len(self._raw)

    @property
    def empty(self) -> bool:
        """Whether the tile has nothing to draw (answer 204)."""
        return not self._raw

    @property
    def compressed(self) -> bool:
        """Whether the gzip bytes are made already."""
        return self._gz is not None

    @property
    def nbytes(self) -> int:
        """Memory held: raw bytes plus gzip bytes once made (and the draft kept)."""
        kept = self.draft.nbytes if self.draft is not None else 0
        return len(self._raw) + len(self._gz or b"") + kept

    @property
    def data(self) -> bytes:
        """The gzip bytes (b"" for an empty tile), made on first use (without a timestamp,
        so the same tile always compresses to the same bytes)."""
        gz = self._gz
        if gz is None:
            gz = self._gz = gzip.compress(self._raw, compresslevel=self.level, mtime=0)
        return gz

    def raw(self) -> bytes:
        """The uncompressed MVT, for clients that do not accept gzip."""
        return self._raw


def etag(raw: bytes) -> str:
    """A strong ETag of uncompressed tile bytes: the same content always has the same tag."""
    return '"' + hashlib.blake2b(raw, digest_size=16).hexdigest() + '"'


def pack(raw: bytes, level: int = 6) -> CachedTile:
    """A `CachedTile` of uncompressed MVT bytes, compressed now."""
    tile = CachedTile(raw, etag(raw), level)
    _ = tile.data
    return tile


class TileCache:
    """A thread-safe LRU of `CachedTile`s bounded by the bytes they hold (raw and gzip).

    With `refresh_s` > 0, a tile whose data changed is kept aside as stale rather than dropped
    (`stale`): while it is younger than `refresh_s` the server may serve it and draw it anew
    in the background, so a tile under a stream of changes is drawn at most once per
    `refresh_s`, never on a request's time.
    """

    def __init__(
        self, max_bytes: int = 256 * 1024 * 1024, level: int = 6, refresh_s: float = 0.0
    ) -> None:
        self.max_bytes = max_bytes
        self.level = level
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._tiles: OrderedDict[TileKey, CachedTile] = OrderedDict()
        self._stale: OrderedDict[TileKey, CachedTile] = OrderedDict()
        self._bytes = 0
        # collection -> zoom -> (x, y) -> keys: finds the tiles a change touches.
        self._index: dict[str, dict[int, dict[tuple[int, int], set[TileKey]]]] = {}
        self._generation: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._tiles)

    def __contains__(self, key: object) -> bool:
        return key in self._tiles

    @property
    def nbytes(self) -> int:
        """Bytes held (raw tiles and their gzip bytes)."""
        return self._bytes

    def generation(self, collections: Iterable[str]) -> tuple[int, ...]:
        """A token that changes when any of `collections` is invalidated (see `put`); equal
        tokens in two caches forked from one process mean the same invalidations."""
        return tuple(self._generation.get(c, 0) for c in collections)

    def peek(self, key: TileKey) -> CachedTile | None:
        """The cached tile, or None, without counting a lookup or refreshing its place."""
        return self._tiles.get(key)

    def get(self, key: TileKey) -> CachedTile | None:
        """The cached tile, or None."""
        with self._lock:
            got = self._tiles.get(key)
            if got is None:
                self.misses += 1
                return None
            self._tiles.move_to_end(key)
            self.hits += 1
            return got

    def put(
        self, key: TileKey, raw: bytes, *, generation: tuple[int, ...] | None = None
    ) -> CachedTile:
        """Cache `raw` (uncompressed MVT, b"" for empty) and return it as a `CachedTile`.

        With `generation` (taken by `generation()` before rendering), a tile rendered from
        data that changed meanwhile is returned but not cached.
        """
        tile = CachedTile(raw, etag(raw), self.level)
        self.insert(key, tile, generation=generation)
        return tile

    def stale(
        self, key: TileKey, *, any_age: bool = False, counted: bool = True
    ) -> CachedTile | None:
        """The tile held for `key` before its data changed, while younger than `refresh_s`
        (or of any age; `counted`: as a hit, i.e. to be served)."""
        with self._lock:
            got = self._stale.get(key)
            if got is None or (not any_age and time.monotonic() - got.made >= self.refresh_s):
                return None
            self.hits += counted
            return got

    def insert(
        self, key: TileKey, tile: CachedTile, *, generation: tuple[int, ...] | None = None
    ) -> bool:
        """Cache a `CachedTile` made elsewhere (e.g. by another worker process) unless the
        data changed since `generation` (then, with `refresh_s`, it is kept as the stale tile
        when newer than the one held); whether it was cached."""
        with self._lock:
            if generation is not None and generation != self.generation(key.collections):
                if self.refresh_s > 0 and key not in self._tiles:
                    held = self._stale.get(key)
                    if held is None or held.made < tile.made:
                        self._stale_put(key, tile)
                return False
            self._drop(key)
            self._unstale(key)
            if tile.nbytes > self.max_bytes:
                return False
            self._tiles[key] = tile
            self._bytes += tile.nbytes
            for c in key.collections:
                zooms = self._index.setdefault(c, {})
                zooms.setdefault(key.z, {}).setdefault((key.x, key.y), set()).add(key)
            self._evict()
        return True

    def gzip(self, key: TileKey, tile: CachedTile, made: bytes | None = None) -> bytes:
        """The gzip bytes of `tile` (cached under `key`), made once (or taken from `made`,
        the same tile compressed elsewhere) and then kept with it."""
        if tile.compressed:
            return tile.data
        gz = made if made is not None else gzip.compress(tile.raw(), self.level, mtime=0)
        with self._lock:
            if not tile.compressed:
                held = self._tiles.get(key) is tile
                tile._gz = gz
                if held:
                    self._bytes += len(gz)
                    self._evict()
        return tile.data

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._stale:
            self._unstale(next(iter(self._stale)))
        while self._bytes > self.max_bytes and self._tiles:
            self._drop(next(iter(self._tiles)))

    def _stale_put(self, key: TileKey, tile: CachedTile) -> None:
        self._unstale(key)
        self._stale[key] = tile
        self._bytes += tile.nbytes
        self._evict()

    def _unstale(self, key: TileKey) -> None:
        tile = self._stale.pop(key, None)
        if tile is not None:
            self._bytes -= tile.nbytes

    def fetch(self, key: TileKey, render: Callable[[], bytes]) -> CachedTile:
        """The cached tile, or `render()` it, cache it and return it."""
        got = self.get(key)
        if got is not None:
            return got
        generation = self.generation(key.collections)
        return self.put(key, render(), generation=generation)

    def _drop(self, key: TileKey) -> None:
        tile = self._tiles.pop(key, None)
        if tile is None:
            return
        self._bytes -= tile.nbytes
        for c in key.collections:
            cells = self._index.get(c, {}).get(key.z)
            if cells is None:
                continue
            keys = cells.get((key.x, key.y))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del cells[(key.x, key.y)]

    def invalidate(
        self, collection: str, bounds: Bounds | None, revision: int | None = None
    ) -> int:
        """Drop the cached tiles holding `collection` whose bounds meet `bounds` (lon/lat; None:
        every tile of the collection). Returns how many were dropped.

        `revision` (the store's change-log sequence the collection is now at) becomes the
        collection's generation, so the caches of processes serving the same data agree (see
        `insert`); without one the token is random."""
        boxes = None if bounds is None else np.array([bounds], dtype=float)
        return self.invalidate_boxes(collection, boxes, revision)

    def _retire(self, doomed: list[TileKey]) -> None:
        """Tiles whose data changed: dropped, or kept aside as stale (see the class)."""
        for key in doomed:
            tile = self._tiles.get(key)
            self._drop(key)
            if tile is not None and self.refresh_s > 0:
                self._stale_put(key, tile)

    def invalidate_boxes(
        self, collection: str, boxes: np.ndarray | None, revision: int | None = None
    ) -> int:
        """`invalidate` for many boxes at once (`(k, 4)` lon/lat; None: the whole collection),
        worked out column-wise: a batch of readings touches a thousand lamps. A box exactly on
        a tile edge (up to `_EDGE`) touches the tiles on both sides."""
        if boxes is not None:
            x0s, y0s = to_mercator(boxes[:, 0], boxes[:, 1])
            x1s, y1s = to_mercator(boxes[:, 2], boxes[:, 3])
        with self._lock:
            # Random rather than counted (and drawn from the OS, not a generator state that
            # fork copies), so caches forked from one process that were invalidated
            # differently never hold the same token (see `insert`).
            self._generation[collection] = (
                revision if revision is not None else -(secrets.randbits(62) + 1)
            )
            doomed: list[TileKey] = []
            for z, cells in self._index.get(collection, {}).items():
                if boxes is None:
                    doomed.extend(k for keys in cells.values() for k in keys)
                    continue
                if not cells or not len(boxes):
                    continue
                w, top = tile_width(z), (1 << z) - 1
                xmin = np.clip(np.ceil((x0s - _EDGE + ORIGIN) / w) - 1, 0, top).astype(np.int64)
                xmax = np.clip(np.floor((x1s + _EDGE + ORIGIN) / w), 0, top).astype(np.int64)
                ymin = np.clip(np.ceil((ORIGIN - y1s - _EDGE) / w) - 1, 0, top).astype(np.int64)
                ymax = np.clip(np.floor((ORIGIN - y0s + _EDGE) / w), 0, top).astype(np.int64)
                wide, high = xmax - xmin + 1, ymax - ymin + 1
                count = np.where((wide > 0) & (high > 0), wide * high, 0)
                if count.sum() > 4 * len(cells):  # many or large boxes: test the cached cells
                    hit = _cells_met(list(cells), xmin, xmax, ymin, ymax)
                else:
                    box = np.repeat(np.arange(len(count)), count)
                    off = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
                    xs = xmin[box] + off % wide[box]
                    ys = ymin[box] + off // wide[box]
                    hit = [p for p in set(zip(xs.tolist(), ys.tolist(), strict=True)) if p in cells]
                for p in hit:
                    doomed.extend(cells.get(p, ()))
            self._retire(doomed)
            return len(doomed)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._tiles.clear()
            self._stale.clear()
            self._index.clear()
            self._bytes = 0
