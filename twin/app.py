"""The HTTP app: OGC API Features and Tiles, TileJSON, style, query API, ops.

`create_app` builds nothing at import time: the catalog (every layer in memory), the tile cache
and the settings are made once in the lifespan and held on `app.state`. Every package's
errors are answered here, from one table, as JSON `{"code", "description"}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from layers.catalog import Applied, Catalog, Snapshots
from layers.keys import Ring
from layers.models import Access
from layers.settings import StoreSettings, is_database_url, open_catalog
from tiles.settings import TileSettings
from twin import queries as queries_mod
from twin.access import (
    Auditor,
    CallerMiddleware,
    KeyRefusal,
    PolicyFile,
    Views,
    open_key_ring,
)
from twin.cql2 import Limits
from twin.crs import CrsSet
from twin.events import ChangeFeed
from twin.follow import Follower
from twin.guard import Admission, Guard
from twin.headers import CORS_EXPOSED, CORS_HEADERS, CORS_METHODS, SecurityHeaders
from twin.limits import RateLimits
from twin.metrics import Metrics, MetricsMiddleware
from twin.problems import ERRORS, error_response, problem
from twin.routes import (
    admin,
    collections,
    edit,
    items,
    landing,
    live,
    ops,
    queries,
    search,
    styles,
    tiles,
)
from twin.routes.responses import answer_validation_errors_400
from twin.settings import GuardSettings, LimitSettings, QuerySettings, ServerSettings
from twin.tileserve import TileFastPath, TileServer
from twin.trace_window import TraceWindows
from twin.warmup import warm, warm_layer, warm_queries
from twin.webmap import MAP_SUFFIXES, MAPLIBRE_DIST

log = logging.getLogger("twin.app")


def _install_errors(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        answer = problem(exc, request.app.state.guard.retry_after_s)
        assert answer is not None
        return answer

    for exc_type, _ in ERRORS:
        app.add_exception_handler(exc_type, handle)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for err in exc.errors():
            where = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
            value = err.get("input")
            shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
            parts.append(f"{'.'.join(where) or 'request'}: {err.get('msg', 'invalid')}{shown}")
        return error_response(400, "InvalidParameter", "; ".join(parts))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "NotFound", 405: "MethodNotAllowed", 406: "NotAcceptable"}
        return JSONResponse(
            {"code": codes.get(exc.status_code, "HTTPError"), "description": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "ServerError", "the server failed to answer; see its log")

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def web_map_ready(settings: ServerSettings) -> bool:
    """Whether the web map's files and its MapLibre package are installed."""
    return (settings.web_dir / "index.html").is_file() and (
        settings.web_dir / MAPLIBRE_DIST / "maplibre-gl.js"
    ).is_file()


def _mount_web_map(app: FastAPI, settings: ServerSettings) -> None:
    """Serve the web map under /web/, MapLibre from the project's own npm install."""
    app.state.web_map = web_map_ready(settings)
    if not app.state.web_map:
        log.warning("web map not installed (run `npm ci` in %s)", settings.web_dir)
        return
    app.mount(
        "/web/vendor/maplibre-gl",
        StaticFiles(directory=settings.web_dir / MAPLIBRE_DIST),
        name="maplibre",
    )
    app.mount("/web", MapFiles(directory=settings.web_dir, html=True), name="web")


class MapFiles(StaticFiles):
    """The web map's own files only: those directly in its folder with a suffix of
    `MAP_SUFFIXES` (and its index at `/web/`); anything else under /web/ is a 404."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file at `path`, when it is one of the map's files."""
        name = path.strip("/")
        if name not in ("", ".") and ("/" in name or Path(name).suffix not in MAP_SUFFIXES):
            raise StarletteHTTPException(404, f"{path} is not a file of the web map")
        return await super().get_response(path, scope)


class HeadAsGet:
    """Answers HEAD as GET without the body (status, ETag, Content-Length and all), for every
    route: link checkers, `curl -I` and load balancers' health checks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def _key_ring(settings: ServerSettings, store: StoreSettings, catalog: Catalog) -> Ring:
    """The key ring of this deployment (`twin.access.open_key_ring`)."""
    root = getattr(catalog.store, "root", None)
    database = store.store if is_database_url(store.store) else None
    return open_key_ring(
        settings.keys_file,
        root if isinstance(root, Path) else None,
        None if database is None else str(database),
    )


def create_app(
    settings: ServerSettings | None = None,
    store_settings: StoreSettings | None = None,
    *,
    catalog: Catalog | None = None,
    tile_settings: TileSettings | None = None,
    query_settings: QuerySettings | None = None,
    guard_settings: GuardSettings | None = None,
    limit_settings: LimitSettings | None = None,
) -> FastAPI:
    """The server over the store the settings name (or over a catalog already built)."""
    settings = settings or ServerSettings()
    store_settings = store_settings or StoreSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = catalog is None
        cat = catalog if catalog is not None else open_catalog(store_settings)
        app.state.catalog = cat
        ring = app.state.keys = _key_ring(settings, store_settings, cat)
        auditor = app.state.auditor = Auditor(ring)
        # The thread pool of this event loop: as many threads as `work_threads`, no more.
        anyio.to_thread.current_default_thread_limiter().total_tokens = guard.work_threads

        def invalidate(name: str, boxes: np.ndarray | None) -> None:
            app.state.tiles.invalidate(name, boxes, cat.revision(name))

        cat.subscribe(invalidate)
        warm(cat, app.state.query_settings, app.state.rasters)
        cat.prepare = warm_layer
        app.state.snapshots = Snapshots(cat)
        feed = app.state.feed = ChangeFeed(cat)
        feed.bind(asyncio.get_running_loop())

        loop = asyncio.get_running_loop()

        def applied(changes: Applied) -> None:
            feed.publish(changes, cat.seq)
            peers = app.state.tiles.peers
            if peers is not None and not loop.is_closed():
                loop.call_soon_threadsafe(peers.applied, cat.seq)
            warm_queries(cat, app.state.query_settings, app.state.rasters, changes.collections())

        follower = app.state.follower = Follower(
            cat, settings.follow_interval_s, app.state.metrics, applied
        )
        follower.hurry_at = max(1, settings.max_lag // 2)
        follower.start()
        try:
            yield
        finally:
            follower.stop()
            cat.unsubscribe(invalidate)
            if auditor is not None:
                auditor.close()
            if own:
                cat.store.close()

    app = FastAPI(
        title="twin",
        description="Digital twin of a city's municipal assets: OGC API Features and Tiles.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/api",
        docs_url="/api.html",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.anonymous_access = Access.parse(settings.anonymous_access)
    app.state.policy = PolicyFile(settings.policy, settings.policy_check_s)
    app.state.views = Views()
    app.state.keys = None
    app.state.auditor = None
    app.state.crs = CrsSet(settings.extra_crs)
    app.state.metrics = Metrics()
    guard = app.state.guard = guard_settings or GuardSettings()
    app.state.filter_limits = Limits(
        guard.filter_max_depth, guard.filter_max_nodes, guard.filter_max_wildcards
    )
    admission = Admission(guard, app.state.metrics)
    app.state.tiles = TileServer(tile_settings or TileSettings(), app.state.metrics, admission)
    app.state.query_settings = query_settings or QuerySettings()
    app.state.traces = TraceWindows()
    app.state.rasters = queries_mod.RasterReader()
    _install_errors(app)
    answer_validation_errors_400(app)
    routers = (landing, collections, items, edit, tiles, styles, queries, search, live, ops, admin)
    for module in routers:
        app.include_router(module.router)
    _mount_web_map(app, settings)
    # Added first, so they run inside the CORS and metrics middlewares added next (and near
    # and at inside gzip): plain tile, near and at requests skip FastAPI's routing.
    app.add_middleware(queries.QueryFastPath, routes=queries.router.routes)
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=settings.gzip_level)
    # Outside gzip: tiles are compressed once by the tile cache, and the middleware's look at
    # every answer costs a cached tile a fifth of its time.
    app.add_middleware(TileFastPath, routes=tiles.router.routes)
    # Outside the lean paths, so their requests are admitted and get a deadline too.
    app.add_middleware(Guard, settings=guard, admission=admission, metrics=app.state.metrics)
    # Credentials that are not a valid key: 401, after the rate limit counted them.
    app.add_middleware(KeyRefusal)
    # Outside the guard (a caller over its rate takes no place among those admitted) and
    # inside the caller's resolution, whose result it reads.
    app.add_middleware(
        RateLimits, settings=limit_settings or LimitSettings(), metrics=app.state.metrics
    )
    # Outside everything that answers: every path reads the caller resolved here.
    app.add_middleware(CallerMiddleware)
    # Never with credentials (cookies): a key is sent as `Authorization`, which a page must
    # set itself, so `*` lets no other site act as a browser's user.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_HEADERS,
        expose_headers=CORS_EXPOSED,
    )
    # Outside CORS, so that every answer (errors and preflights included) carries them.
    app.add_middleware(SecurityHeaders, public_url=settings.public_url)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(HeadAsGet)
    return app
