"""The spatial query API: near, at, intersects (dig check), buffer, stats, network traces;
and a lean path answering plain near and at requests without FastAPI's routing."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

import shapely
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

from layers.catalog import Catalog, Lens
from layers.errors import UnknownFeature
from layers.models import Access
from layers.schemas import GRID_LEVELS
from twin import network, queries, stats
from twin.access import Scope, caller_view
from twin.dependencies import (
    AT_LEAST_ONE,
    LATITUDE,
    LONGITUDE,
    NOT_NEGATIVE,
    CatalogAt,
    Collections,
    CqlFilter,
    collections_list,
    read_body,
    serving,
)
from twin.errors import InvalidParameter
from twin.leanpath import LeanPath
from twin.routes.links import GEOJSON
from twin.routes.responses import responses
from twin.routes.schemas import FEATURE_COLLECTION, GEOMETRY
from twin.settings import QuerySettings
from twin.trace_window import TraceWindows

router = APIRouter(tags=["Spatial queries"])


def _fc(*statuses: int) -> dict[str, Any]:
    """Decorator arguments of a route answering a GeoJSON FeatureCollection or `statuses`."""
    return {
        "response_class": Response,
        "responses": responses(
            *statuses, what="A GeoJSON FeatureCollection", media=GEOJSON, schema=FEATURE_COLLECTION
        ),
    }


async def get_query_settings(request: Request) -> QuerySettings:
    """The query limits the app was built with."""
    return request.app.state.query_settings


QuerySettingsDep = Annotated[QuerySettings, Depends(get_query_settings)]


async def get_trace_windows(request: Request) -> TraceWindows:
    """The networks of windows a server not holding its layers traces on."""
    return request.app.state.traces


TraceWindowsDep = Annotated[TraceWindows, Depends(get_trace_windows)]


def caps(settings: QuerySettings) -> queries.Caps:
    """How much one query may examine, from the settings."""
    return queries.Caps(settings.max_candidates, settings.max_work)


# -- typed request parts ------------------------------------------------------------------------


async def query_point(
    lon: Annotated[
        float,
        Query(description="Longitude, degrees east (-180..180).", json_schema_extra=LONGITUDE),
    ],
    lat: Annotated[
        float, Query(description="Latitude, degrees north (-90..90).", json_schema_extra=LATITUDE)
    ],
) -> Any:
    """The query point (lon/lat)."""
    return queries.check_point(lon, lat)


Point = Annotated[Any, Depends(query_point)]


async def result_limit(
    settings: QuerySettingsDep,
    limit: Annotated[
        int | None,
        Query(
            description="Most features to return, nearest first (default 100).",
            json_schema_extra=AT_LEAST_ONE,
        ),
    ] = None,
) -> int:
    """How many features to return."""
    return queries.check_limit(limit, settings.default_results, settings.max_results)


ResultLimit = Annotated[int, Depends(result_limit)]


async def limited_body(request: Request, settings: QuerySettingsDep) -> bytes:
    """The request body, refused with 413 as soon as it grows past the configured size."""
    return await read_body(request, settings.max_body_bytes)


MAX_DIG_DEPTH_M = 200.0
"""The deepest dig `POST /query/intersects` checks (as `post_intersects` does)."""


class IntersectsBody(BaseModel):
    """A drawn shape to check: what does it meet, or pass within `buffer_m` metres of?"""

    model_config = ConfigDict(extra="forbid")

    geometry: dict[str, Any] = Field(
        description="GeoJSON geometry (lon/lat): Point, LineString, Polygon or their Multi forms.",
        json_schema_extra=GEOMETRY,
    )
    buffer_m: float = Field(
        0.0,
        description="Also report what lies within this many metres.",
        json_schema_extra=NOT_NEGATIVE,
    )
    collections: list[str] | None = Field(
        None,
        description="Collections to check (default: all you may see).",
        json_schema_extra={"minItems": 1},
    )
    limit: int | None = Field(
        None,
        description="Most features to return, nearest first.",
        json_schema_extra=AT_LEAST_ONE,
    )
    dig_depth_m: float | None = Field(
        None,
        description="Dig depth, metres: buried assets say whether the dig reaches them (the "
        "answer's `dig_depth_m`; `depth_m` is each buried asset's own depth).",
        json_schema_extra={"minimum": 0, "maximum": MAX_DIG_DEPTH_M},
    )

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "depth_m" in data:
            raise ValueError("the dig depth is `dig_depth_m` (`depth_m` is an asset's own depth)")
        return data


def _json(content: Any) -> JSONResponse:
    return JSONResponse(content)


def _geojson(body: bytes) -> Response:
    return Response(body, media_type=GEOJSON)


# -- the answers (shared by the routes and the lean path) ---------------------------------------

# Defaults of the parameters the lean path reads too.
NEAR_RADIUS_M = 100.0
AT_TOLERANCE_M = 1.0
AT_SAMPLING: Literal["bilinear", "nearest"] = "bilinear"


def near_answer(
    catalog: Catalog,
    scope: Lens,
    settings: QuerySettings,
    point: shapely.Point,
    radius: float,
    collections: list[str] | None,
    limit: int,
) -> Response:
    """The `/query/near` answer."""
    radius = queries.check_distance(radius, "radius", settings.max_radius_m)
    groups = queries.near(catalog, scope, point, radius, collections, caps(settings))
    members = {"radius": radius, "summary": [g.summary() for g in groups]}
    return _geojson(queries.feature_collection_bytes(groups, limit, members))


def at_answer(
    catalog: Catalog,
    scope: Lens,
    settings: QuerySettings,
    rasters: queries.RasterReader,
    point: shapely.Point,
    tolerance: float,
    sampling: Literal["bilinear", "nearest"],
    limit: int,
) -> Response:
    """The `/query/at` answer."""
    tolerance = queries.check_distance(tolerance, "tolerance", settings.max_radius_m)
    result = queries.at(
        catalog,
        scope,
        point,
        tolerance,
        dem=settings.dem_collection,
        method=sampling,
        raster_memory_bytes=settings.raster_memory_bytes,
        caps=caps(settings),
        rasters=rasters,
    )
    return Response(result.to_bytes(limit), media_type="application/json")


# -- routes -------------------------------------------------------------------------------------


@router.get("/query/near", summary="What lies within a radius of a point", **_fc(404))
def get_near(
    catalog: CatalogAt,
    scope: Scope,
    settings: QuerySettingsDep,
    point: Point,
    collections: Collections,
    limit: ResultLimit,
    radius: Annotated[
        float, Query(description="Radius, metres on the ground.", json_schema_extra=NOT_NEGATIVE)
    ] = NEAR_RADIUS_M,
) -> Response:
    """Features of every visible layer (or of `collections`) within `radius` metres of the
    point, nearest first, each with `collection` and `distance_m`."""
    return near_answer(catalog, scope, settings, point, radius, collections, limit)


@router.get(
    "/query/at",
    summary="What sits at or under a location",
    response_class=Response,
    responses=responses(what="What is there"),
)
def get_at(
    request: Request,
    catalog: CatalogAt,
    scope: Scope,
    settings: QuerySettingsDep,
    point: Point,
    limit: ResultLimit,
    tolerance: Annotated[
        float,
        Query(
            description="Also features passing within this many metres.",
            json_schema_extra=NOT_NEGATIVE,
        ),
    ] = AT_TOLERANCE_M,
    sampling: Annotated[
        Literal["bilinear", "nearest"],
        Query(description="How raster values are read: bilinear or the cell holding the point."),
    ] = AT_SAMPLING,
) -> Response:
    """Every feature of every visible layer at the point (grouped by layer; buried assets with
    ground elevation and cover depth), the grid cells it falls in, and raster values there."""
    rasters = request.app.state.rasters
    return at_answer(catalog, scope, settings, rasters, point, tolerance, sampling, limit)


@router.post(
    "/query/intersects",
    summary="What a drawn shape meets (dig check)",
    **_fc(404, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": IntersectsBody.model_json_schema()}},
        }
    },
)
def post_intersects(
    catalog: CatalogAt,
    scope: Scope,
    settings: QuerySettingsDep,
    raw: Annotated[bytes, Depends(limited_body)],
) -> Response:
    """Features meeting the shape or within `buffer_m` metres of it, nearest first, with a
    `summary` by layer (count, nearest distance, shallowest pipe), the area searched and the
    management cells it touches; with `dig_depth_m`, buried assets say whether it reaches them."""
    if not raw.strip():
        raise InvalidParameter('the body is empty: send {"geometry": <GeoJSON>, ...}')
    try:
        body = IntersectsBody.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidParameter(
            f"the body is not a valid intersects request: {_errors(exc)}"
        ) from None
    geometry = queries.parse_geometry(body.geometry, max_vertices=settings.max_vertices)
    buffer_m = queries.check_distance(body.buffer_m, "buffer_m", settings.max_radius_m)
    limit = queries.check_limit(body.limit, settings.default_results, settings.max_results)
    if body.dig_depth_m is not None:
        queries.check_distance(body.dig_depth_m, "dig_depth_m", MAX_DIG_DEPTH_M)
    check = queries.intersects(
        catalog,
        scope,
        geometry,
        buffer_m,
        body.collections,
        dig_depth_m=body.dig_depth_m,
        caps=caps(settings),
    )
    return _geojson(check.to_bytes(limit))


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


@router.get("/query/buffer", summary="The buffer of one asset and what lies in it", **_fc(404))
def get_buffer(
    catalog: CatalogAt,
    scope: Scope,
    settings: QuerySettingsDep,
    collections: Collections,
    limit: ResultLimit,
    collection: Annotated[str, Query(description="Collection of the asset, e.g. `pipes`.")],
    id: Annotated[str, Query(description="Feature id of the asset.")],
    distance: Annotated[
        float,
        Query(description="Buffer distance, metres on the ground.", json_schema_extra=NOT_NEGATIVE),
    ],
) -> Response:
    """The buffer polygon `distance` metres around the asset, and everything of the other
    layers (or of `collections`) in it, with each line's length inside."""
    distance = queries.check_distance(distance, "distance", settings.max_radius_m)
    result = queries.asset_buffer(
        catalog, scope, collection, id, distance, collections, caps(settings)
    )
    return _geojson(result.to_bytes(limit))


@router.get(
    "/query/stats",
    summary="Statistics per management grid cell",
    responses=responses(404, what="A FeatureCollection of the cells", schema=FEATURE_COLLECTION),
)
def get_stats(
    catalog: CatalogAt,
    scope: Scope,
    collections: Collections,
    cql: CqlFilter,
    level: Annotated[
        str,
        Query(
            description="Grid level: district, street, community or cell.",
            json_schema_extra={"enum": list(GRID_LEVELS)},
        ),
    ] = "cell",
) -> JSONResponse:
    """Per grid cell at `level`: counts of points, lengths of lines (metres) and areas of
    polygons (square metres) of the layers named (default: all you may see), counting only the
    features the CQL2 `filter` selects (e.g. `status = 'fault'`, `install_year < 1980`). The
    cells add up to what lies inside them: lengths and areas are split between the cells, each
    feature is counted in one cell (a point in the first it falls in, a line or polygon in the
    one holding most of it), and an edge two cells share is the earlier cell's."""
    return _json(stats.cell_stats(catalog, scope, level, collections, cql).to_json())


# -- network traces -----------------------------------------------------------------------------

PipeId = Annotated[str, Path(description="Feature id of a pipe.")]


R = TypeVar("R")


def _traced(
    catalog: Catalog,
    scope: Lens,
    settings: QuerySettings,
    windows: TraceWindows,
    fid: str,
    how: Callable[[network.Network], R],
) -> R:
    """`how` on the network of every pipe and valve (a trace without the valves a caller may
    not see would be wrong: `network.shown` leaves them out of the answer instead): the whole
    layers' network on a catalog holding them, else a window's holding the answer
    (`twin.trace_window`); 404 when the caller may not see the pipes, or pipe `fid`."""
    seen = catalog.picked("pipes", scope, [fid])
    if fid not in seen.row_of:
        raise UnknownFeature("pipes", fid)
    if not catalog.holds:
        snap_m, attach_m = settings.network_snap_m, settings.network_attach_m
        return windows.answer(catalog, fid, how, snap_m=snap_m, attach_m=attach_m)
    return how(_whole_network(catalog, settings))


def _whole_network(catalog: Catalog, settings: QuerySettings) -> network.Network:
    """The network of every pipe and valve of a catalog holding them (made once per pair)."""
    pipes = catalog.layer("pipes", Access.RESTRICTED)
    has_valves = "valves" in catalog.heads(Access.RESTRICTED)
    valves = catalog.layer("valves", Access.RESTRICTED) if has_valves else None
    return network.network_for(
        pipes, valves, snap_m=settings.network_snap_m, attach_m=settings.network_attach_m
    )


@router.get(
    "/collections/pipes/items/{featureId}/isolation",
    summary="Valves to close to isolate a broken pipe",
    tags=["Network traces"],
    responses=responses(404),
)
def get_isolation(
    catalog: CatalogAt,
    scope: Scope,
    settings: QuerySettingsDep,
    windows: TraceWindowsDep,
    featureId: PipeId,
    lon: Annotated[
        float | None,
        Query(
            description="Longitude of the break (default: middle of the pipe); give lat too.",
            json_schema_extra=LONGITUDE,
        ),
    ] = None,
    lat: Annotated[
        float | None,
        Query(description="Latitude of the break; give lon too.", json_schema_extra=LATITUDE),
    ] = None,
) -> JSONResponse:
    """The operable valves to close (inoperable ones are skipped for the next ones out), the
    pipes and length cut off (isolated, or left without supply), and the affected assets: the
    hydrants, meters and pumps the cut-off part of that network serves. A sewer or storm pipe
    (gravity, no valves) is answered 400 `GravityNetwork`, pointing at its upstream and
    downstream traces."""
    if (lon is None) != (lat is None):
        raise InvalidParameter("give both lon and lat of the break, or neither")
    at = None if lon is None or lat is None else queries.check_point(lon, lat)
    result = _traced(
        catalog,
        scope,
        settings,
        windows,
        featureId,
        lambda net: network.isolate(net, featureId, at=at, max_m=settings.trace_snap_m),
    )
    return _json(network.shown(result, scope).to_json())


_TRACES: dict[str, str] = {
    "downstream": "The sewer or storm pipes a pipe drains into, following the digitised "
    "direction down to the outlets, with their length and the trace's ends.",
    "upstream": "The sewer or storm pipes draining into a pipe, against the digitised direction "
    "up to the heads of the network, with their length and the trace's ends.",
}


def _pipe_trace(direction: Literal["upstream", "downstream"]) -> Any:
    def route(
        catalog: CatalogAt,
        scope: Scope,
        settings: QuerySettingsDep,
        windows: TraceWindowsDep,
        featureId: PipeId,
    ) -> JSONResponse:
        return _gravity(catalog, scope, settings, windows, featureId, direction)

    route.__doc__ = _TRACES[direction]
    return route


# One literal path per direction, so other item sub-resources (history, ...) stay reachable.
for _direction in ("downstream", "upstream"):
    router.add_api_route(
        f"/collections/pipes/items/{{featureId}}/{_direction}",
        _pipe_trace(_direction),
        methods=["GET"],
        summary=f"Gravity trace {_direction} of a pipe",
        tags=["Network traces"],
        name=f"pipe_{_direction}",
        responses=responses(404),
    )


@router.get(
    "/query/trace",
    summary="Gravity trace from a point",
    tags=["Network traces"],
    responses=responses(404),
)
def get_point_trace(
    catalog: CatalogAt,
    scope: Scope,
    settings: QuerySettingsDep,
    windows: TraceWindowsDep,
    point: Point,
    direction: Annotated[
        Literal["upstream", "downstream"], Query(description="upstream or downstream")
    ] = "downstream",
) -> JSONResponse:
    """The trace from the nearest sewer or storm pipe to the point (within the configured
    snap distance): where a spill there flows (downstream), or what drains to it (upstream)."""
    d = settings.trace_snap_m
    seen = queries.layers_for(catalog, scope, ["pipes"], around=(point, d))[0]
    fid = network.nearest_gravity_pipe(seen, point, d)
    return _gravity(catalog, scope, settings, windows, fid, direction)


def _gravity(
    catalog: Catalog,
    scope: Lens,
    settings: QuerySettings,
    windows: TraceWindows,
    fid: str,
    direction: Literal["upstream", "downstream"],
) -> JSONResponse:
    result = _traced(
        catalog, scope, settings, windows, fid, lambda net: network.trace(net, fid, direction)
    )
    return _json(network.shown(result, scope).to_json())


# -- the lean path ------------------------------------------------------------------------------

NEAR_PATH, AT_PATH = "/query/near", "/query/at"
# Plainly written numbers only: anything else is left to FastAPI's own parsing and errors.
_NUMBER = re.compile(r"-?\d{1,17}(\.\d{1,17})?([eE][-+]?\d{1,3})?")
_COUNT = re.compile(r"[1-9]\d{0,8}")


def _number(value: str) -> float | None:
    return float(value) if _NUMBER.fullmatch(value) else None


def _count(value: str) -> int | None:
    return int(value) if _COUNT.fullmatch(value) else None


def _sampling(value: str) -> str | None:
    return value if value in ("bilinear", "nearest") else None


def _text(value: str) -> str:
    return value


# Each route's parameters and how a plain value of each is read (None: not plain).
_PARAMS: dict[str, dict[str, Callable[[str], Any]]] = {
    NEAR_PATH: {
        "lon": _number,
        "lat": _number,
        "radius": _number,
        "limit": _count,
        "collections": _text,
    },
    AT_PATH: {
        "lon": _number,
        "lat": _number,
        "tolerance": _number,
        "limit": _count,
        "sampling": _sampling,
    },
}


class QueryFastPath(LeanPath):
    """The lean path (`twin.leanpath`) of plain `GET /query/near` and `GET /query/at`
    requests, answered through the same `near_answer` / `at_answer` as the declared routes,
    in the thread pool as they run, after the same checks. An unknown, repeated or not plainly
    written parameter goes on to the full app."""

    paths = (NEAR_PATH, AT_PATH)

    async def answer(self, scope: dict) -> tuple[str, Response] | None:
        path = scope["path"]
        readers = _PARAMS.get(path)
        if readers is None:
            return None
        params: dict[str, Any] = {}
        for key, raw in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
            read = readers.get(key)
            if read is None or key in params:
                return None
            value = read(raw)
            if value is None:
                return None
            params[key] = value
        if "lon" not in params or "lat" not in params:
            return None
        app = scope["app"]
        access = await caller_view(Request(scope))
        settings: QuerySettings = app.state.query_settings
        catalog = await serving(app.state)
        point = queries.check_point(params["lon"], params["lat"])
        limit = queries.check_limit(
            params.get("limit"), settings.default_results, settings.max_results
        )
        if path == NEAR_PATH:
            named = await collections_list(params.get("collections"))
            near = await run_in_threadpool(
                near_answer,
                catalog,
                access,
                settings,
                point,
                params.get("radius", NEAR_RADIUS_M),
                named,
                limit,
            )
            return path, near
        at = await run_in_threadpool(
            at_answer,
            catalog,
            access,
            settings,
            app.state.rasters,
            point,
            params.get("tolerance", AT_TOLERANCE_M),
            params.get("sampling", AT_SAMPLING),
            limit,
        )
        return path, at
