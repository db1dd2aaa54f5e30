"""Serving tiles over HTTP: the cache lookup, rendering off the event loop, 204/304, gzip.

A tile is rendered once, compressed once (by `tiles.cache`) and then served from memory:
as is to clients that accept gzip, decompressed for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from layers.layer import Layer
from layers.models import Access
from layers.store import RasterInfo
from tiles.cache import CachedTile, TileCache, TileKey
from tiles.grid import Tile
from tiles.render import render_tile
from tiles.settings import TileSettings
from twin.cql2 import Filter
from twin.metrics import Metrics

MVT = "application/vnd.mapbox-vector-tile"
PNG = "image/png"
RASTER_CACHE_BYTES = 64 * 1024 * 1024


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

    def __init__(self, settings: TileSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.cache = TileCache(settings.cache_bytes, settings.gzip_level)
        self.raster_cache = TileCache(RASTER_CACHE_BYTES, 1)
        self.metrics = metrics

    def invalidate(self, collection: str, bounds: Any) -> None:
        """Drop the cached tiles a change of `collection` inside `bounds` touches."""
        self.cache.invalidate(collection, bounds)
        self.raster_cache.invalidate(collection, None if bounds is None else bounds)

    def _response(
        self, got: CachedTile, media_type: str, if_none_match: str | None, gzip_ok: bool
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
            return Response(got.data, media_type=media_type, headers=headers)
        return Response(got.raw(), media_type=media_type, headers=headers)

    async def respond(
        self,
        layers: Mapping[str, Layer],
        tile: Tile,
        scope: Access,
        flt: Filter | None,
        requests: Callable[[], Sequence[tuple[Layer, Any]]],
        if_none_match: str | None,
        accept_encoding: str | None,
    ) -> Response:
        """The vector tile of `layers` (rows from `requests()`, called only on a cache miss)."""
        key = TileKey.of(tile, layers, scope=scope, filter=None if flt is None else flt.key)
        got = self.cache.get(key)
        if got is None:
            self.metrics.tile_cache.labels("miss").inc()
            generation = self.cache.generation(key.collections)

            def render() -> bytes:
                return render_tile(requests(), tile, self.settings)

            raw = await run_in_threadpool(render)
            got = self.cache.put(key, raw, generation=generation)
        else:
            self.metrics.tile_cache.labels("hit").inc()
        return self._response(got, MVT, if_none_match, accepts_gzip(accept_encoding))

    async def respond_raster(
        self, info: RasterInfo, tile: Tile, style: str, if_none_match: str | None
    ) -> Response:
        """The PNG map tile of a raster collection in `style`; 204 outside the raster."""
        from tiles.raster import render_raster_tile

        key = TileKey.of(tile, [info.name], filter=f"png:{style}")
        got = self.raster_cache.get(key)
        if got is None:
            generation = self.raster_cache.generation(key.collections)
            png = await run_in_threadpool(render_raster_tile, info.path, tile, style)
            got = self.raster_cache.put(key, png or b"", generation=generation)
        return self._response(got, PNG, if_none_match, gzip_ok=False)
