"""Serving tiles over HTTP: the cache lookup, rendering off the event loop, 204/304, gzip,
and a lean path that answers vector tile requests without FastAPI's routing.

A tile is rendered once and then served from memory: its raw bytes to identity clients and
its gzip bytes (made once, on the first request that accepts gzip) to the others. With
several worker processes (`twin.server`), each tile a worker renders is handed to the other
workers (`TilePeers`), so every worker's cache holds it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from layers.catalog import Catalog, Lens, lens_key
from layers.layer import Head, Layer
from layers.models import Bounds
from layers.store import RasterInfo
from tiles import grid
from tiles.cache import CachedTile, TileCache, TileKey, etag
from tiles.generalise import thinning
from tiles.render import draw_tile, render_tile
from tiles.settings import TileSettings
from twin.access import caller_view
from twin.cql2 import Filter
from twin.leanpath import LeanPath
from twin.metrics import Metrics

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from twin.guard import Admission
    from twin.peers import TilePeers

MVT = "application/vnd.mapbox-vector-tile"
PNG = "image/png"
RASTER_CACHE_BYTES = 64 * 1024 * 1024
TMS_ID = "WebMercatorQuad"
COLLECTION_TILE_PATH = "/collections/{collectionId}/tiles/{tileMatrixSetId}/{z}/{y}/{x}"
DATASET_TILE_PATH = "/tiles/{tileMatrixSetId}/{z}/{y}/{x}"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (weak or strong, or `*`)."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an `Accept-Encoding` header allows gzip."""
    if not accept_encoding:
        return False
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return True
    return False


class TileServer:
    """Tile settings, the vector and raster tile caches, and the answers built from them."""

    def __init__(
        self, settings: TileSettings, metrics: Metrics, admission: Admission | None = None
    ) -> None:
        self.settings = settings
        self.admission = admission
        """Places for work among the worker's requests: a tile to render takes one (a cached
        tile is answered whatever the load)."""
        self.cache = TileCache(settings.cache_bytes, settings.gzip_level, settings.refresh_s)
        self._refreshing: set[TileKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._redraw_thread = ThreadPoolExecutor(1, thread_name_prefix="twin-redraw")
        """Stale tiles being drawn anew in the background."""
        self.raster_cache = TileCache(RASTER_CACHE_BYTES, 1)
        self.metrics = metrics
        self.peers: TilePeers | None = None
        """Other worker processes to hand rendered tiles to (set by `twin.server`)."""
        self._hit = metrics.tile_cache.labels("hit")
        self._miss = metrics.tile_cache.labels("miss")
        self._stale = metrics.tile_cache.labels("stale")
        """Served while its data changed lately (it is drawn anew in the background)."""
        self._redrawn = metrics.tile_cache.labels("redrawn")
        """Stale tiles drawn anew in the background."""

    def window(self, tile: grid.Tile) -> Bounds:
        """The lon/lat box the features of `tile` are read from (`Catalog.around`)."""
        s = self.settings
        return grid.window(tile, s.buffer, s.extent, padded=tile.z >= s.detail_zoom)

    def around(
        self, catalog: Catalog, name: str, scope: Lens, tile: grid.Tile, whole: bool = False
    ) -> Layer:
        """What of layer `name` `tile` is drawn from (`Catalog.around` of its window, thinned
        below the detail zoom unless `whole`: a filter picks among every feature). Made when
        the tile is drawn, never for a cached one."""
        thin = None if whole else thinning(name, tile, self.settings)
        return catalog.around(name, scope, self.window(tile), thin)

    def _admitted(self) -> AbstractContextManager[None]:
        """A place for rendering one tile (`Overloaded` when the worker is full)."""
        return nullcontext() if self.admission is None else self.admission.admit()

    def invalidate(
        self, collection: str, boxes: np.ndarray | None, revision: int | None = None
    ) -> None:
        """Drop the cached tiles a change of `collection` inside `boxes` (`(k, 4)` lon/lat;
        None: everywhere) touches; `revision` is the store's sequence the collection is now at
        (the caches' generation)."""
        self.cache.invalidate_boxes(collection, boxes, revision)
        if boxes is None:
            self.raster_cache.invalidate(collection, None, revision)

    async def _response(
        self,
        cache: TileCache,
        key: TileKey,
        got: CachedTile,
        media_type: str,
        if_none_match: str | None,
        gzip_ok: bool,
    ) -> Response:
        headers = {"ETag": got.etag, "Cache-Control": self.settings.cache_control}
        if media_type == MVT:
            headers["Vary"] = "Accept-Encoding"
        if etag_matches(if_none_match, got.etag):
            return Response(status_code=304, headers=headers)
        if got.empty:
            return Response(status_code=204, headers=headers)
        if gzip_ok:
            headers["Content-Encoding"] = "gzip"
            if got.compressed:
                body = got.data
            else:
                # A millisecond of CPU: off the event loop, once per tile for every worker.
                body = await run_in_threadpool(cache.gzip, key, got)
                if self.peers is not None and cache is self.cache and cache.peek(key) is got:
                    self.peers.publish(key, got, cache.generation(key.collections))
            return Response(body, media_type=media_type, headers=headers)
        return Response(got.raw(), media_type=media_type, headers=headers)

    async def respond(
        self,
        layers: Mapping[str, Head],
        tile: grid.Tile,
        scope: Lens,
        flt: Filter | None,
        requests: Callable[[], Sequence[tuple[Layer, Any]]],
        if_none_match: str | None,
        accept_encoding: str | None,
        asof: str | None = None,
    ) -> Response:
        """The vector tile of `layers` (rows from `requests()`, called only on a cache miss);
        `asof`: the layers are the store as recorded then (cached apart)."""
        variant = None if flt is None else flt.key
        if asof is not None:
            variant = f"asof={asof};{variant or ''}"
        key = TileKey.of(tile, layers, scope=lens_key(scope), filter=variant)
        gzip_ok = accepts_gzip(accept_encoding)
        got = self.cache.get(key)
        if got is None:
            got = self.cache.stale(key, any_age=key in self._refreshing)
            if got is not None:  # its data changed lately: served, drawn anew in a while
                self._stale.inc()
                self._refresh_later(key, got, tile, requests, gzip_ok)
                return await self._response(self.cache, key, got, MVT, if_none_match, gzip_ok)
        if got is None:
            self._miss.inc()
            # A tile stale too long is drawn now, from what its last drawing kept (half the
            # work of drawing it from scratch when only properties changed).
            held = self.cache.stale(key, any_age=True, counted=False)
            with self._admitted():
                got = await self._render(key, tile, requests, gzip_ok, stale=held)
        else:
            self._hit.inc()
        return await self._response(self.cache, key, got, MVT, if_none_match, gzip_ok)

    async def _render(
        self,
        key: TileKey,
        tile: grid.Tile,
        requests: Callable[[], Sequence[tuple[Layer, Any]]],
        gzip_ok: bool,
        background: bool = False,
        stale: CachedTile | None = None,
    ) -> CachedTile:
        """Draw the tile of `key` from the layers `requests()` gives now, and cache it (in the
        `background`: on the one thread kept for redrawing stale tiles, so that redrawing
        never takes the threads requests wait for; from the `stale` tile held, see `draw`)."""
        generation = self.cache.generation(key.collections)

        def render() -> CachedTile:
            return self.draw(tile, requests, gzip_ok, stale)

        if background:
            got = await asyncio.wrap_future(self._redraw_thread.submit(render))
        else:
            got = await run_in_threadpool(render)
        self.cache.insert(key, got, generation=generation)
        if self.peers is not None:  # fresh there too, or newer than their stale one
            self.peers.publish(key, got, generation)
        return got

    def draw(
        self,
        tile: grid.Tile,
        requests: Callable[[], Sequence[tuple[Layer, Any]]],
        gzip_ok: bool,
        stale: CachedTile | None = None,
    ) -> CachedTile:
        """The tile drawn from the layers `requests()` gives now, with its ETag (and its gzip
        bytes when `gzip_ok`: made in the calling thread, not on the event loop). A `stale`
        tile drawn anew (its data changed) passes on what its drawing kept (`draw_tile`):
        a tile under a stream of readings is drawn again from it every `refresh_s`, its
        features' geometry encoded once."""
        started = time.monotonic()
        layers = requests()
        if stale is None:
            raw, draft = render_tile(layers, tile, self.settings), None
        else:
            raw, draft = draw_tile(layers, tile, self.settings, stale.draft)
        made = CachedTile(raw, etag(raw), self.cache.level, made=started, draft=draft)
        if gzip_ok:
            _ = made.data
        return made

    def _refresh_later(
        self,
        key: TileKey,
        held: CachedTile,
        tile: grid.Tile,
        requests: Callable[[], Sequence[tuple[Layer, Any]]],
        gzip_ok: bool,
    ) -> None:
        """Draw a stale tile anew once it is `refresh_s` old (once, whoever asks meanwhile);
        `requests` must read the layers served then, not those of the request that asked."""
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        loop = asyncio.get_running_loop()

        async def refresh(seen: CachedTile) -> None:
            again = None
            try:
                if self.cache.peek(key) is not None:
                    return  # drawn meanwhile (a request after the data settled)
                newer = self.cache.stale(key, any_age=True)
                if newer is not None and newer.made > seen.made:
                    again = newer  # another worker drew it lately: wait on that one
                    return
                held = newer if newer is not None else seen
                await self._render(key, tile, requests, gzip_ok, background=True, stale=held)
                self._redrawn.inc()
            except Exception:  # overloaded, or the layer is gone: the next request decides
                log.debug("refreshing tile %s failed", key, exc_info=True)
            finally:
                if again is not None:
                    schedule(again)
                else:
                    self._refreshing.discard(key)

        def schedule(seen: CachedTile) -> None:
            def start() -> None:
                task = loop.create_task(refresh(seen))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

            # A tile another worker drew is left to that worker a while longer: the worker
            # that drew a tile last draws it again, not both.
            wait = self.settings.refresh_s * (1.0 if seen.drawn_here else 1.5)
            loop.call_later(max(0.0, seen.made + wait - time.monotonic()), start)

        schedule(held)

    async def respond_raster(
        self, info: RasterInfo, tile: grid.Tile, style: str, if_none_match: str | None
    ) -> Response:
        """The PNG map tile of a raster collection in `style`; 204 outside the raster."""
        from tiles.raster import render_raster_tile

        key = TileKey.of(tile, [info.name], filter=f"png:{style}")
        got = self.raster_cache.get(key)
        if got is None:
            generation = self.raster_cache.generation(key.collections)
            with self._admitted():
                png = await run_in_threadpool(
                    render_raster_tile, info.location, tile, style, info.version or None
                )
            got = self.raster_cache.put(key, png or b"", generation=generation)
        return await self._response(self.raster_cache, key, got, PNG, if_none_match, False)


# -- the lean path ---------------------------------------------------------------------------

_TILE_URL = re.compile(
    rf"^(?:/collections/(?P<collection>[^/]+))?/tiles/{TMS_ID}/(?P<z>\d{{1,2}})/(?P<y>\d{{1,9}})/(?P<x>\d{{1,9}})$"
)


class TileFastPath(LeanPath):
    """The lean path (`twin.leanpath`) of plain vector tile requests (no query string),
    answered through the very same `TileServer.respond` as the declared routes
    (`twin.routes.tiles`); an unknown or hidden collection, a tile outside the matrix or a
    filter goes on to the full app."""

    paths = (COLLECTION_TILE_PATH, DATASET_TILE_PATH)

    async def answer(self, scope: dict) -> tuple[str, Response] | None:
        match = _TILE_URL.match(scope["path"])
        if match is None or scope["query_string"]:
            return None
        collection = match["collection"]
        tile = grid.tile(int(match["z"]), int(match["x"]), int(match["y"]))
        request = Request(scope)
        access = await caller_view(request)
        catalog = scope["app"].state.catalog
        if collection is None:
            layers = catalog.heads(access)
        else:
            layers = {collection: catalog.head(collection, access)}
        tiles: TileServer = scope["app"].state.tiles
        headers = request.headers
        names = list(layers)
        response = await tiles.respond(
            layers,
            tile,
            access,
            None,
            # The layers served when drawn (a stale tile is drawn anew later).
            lambda: [(tiles.around(catalog, n, access, tile), None) for n in names],
            headers.get("if-none-match"),
            headers.get("accept-encoding"),
        )
        return (DATASET_TILE_PATH if collection is None else COLLECTION_TILE_PATH), response
