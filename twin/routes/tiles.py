"""OGC API Tiles: tile matrix sets, tilesets, vector tiles (per collection and composite),
TileJSON, and raster map tiles of DEM collections."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from layers.catalog import Catalog, Lens
from layers.layer import Head, Layer
from layers.models import Bounds
from tiles import grid
from tiles.errors import TileOutOfMatrix
from twin.access import Scope
from twin.cql2 import Filter, queryable_names
from twin.dependencies import (
    NOT_NEGATIVE,
    AsOf,
    CatalogAt,
    CatalogDep,
    CollectionId,
    Collections,
    CqlFilter,
    HtmlOrJson,
)
from twin.routes.html import collection_crumbs, html_url, negotiate
from twin.routes.links import HTML, JSON, MVT, PNG, REL_TILING_SCHEMES, base_url, link, url
from twin.routes.responses import responses
from twin.routes.schemas import BINARY
from twin.select import Selection, select
from twin.tilejson import tilejson, tileset_document
from twin.tileserve import COLLECTION_TILE_PATH, DATASET_TILE_PATH, TMS_ID, TileServer

router = APIRouter(tags=["Tiles"])

TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"


async def get_tile_server(request: Request) -> TileServer:
    """The tile renderer and cache built at start-up."""
    return request.app.state.tiles


TilesDep = Annotated[TileServer, Depends(get_tile_server)]


TileMatrixSetId = Annotated[
    str,
    Path(
        description=f"Tile matrix set id: {TMS_ID} (any other is answered 404).",
        json_schema_extra={"enum": [TMS_ID]},
    ),
]


async def tile_of(
    z: Annotated[
        int,
        Path(
            description=f"Zoom level (tile matrix), 0..{grid.MAXZOOM}",
            json_schema_extra={"minimum": 0, "maximum": grid.MAXZOOM},
        ),
    ],
    y: Annotated[
        int,
        Path(
            description="Row, counted from the top (north): 0..2^z-1, beyond answered 404",
            json_schema_extra=NOT_NEGATIVE,
        ),
    ],
    x: Annotated[
        int,
        Path(
            description="Column, counted from the left (west): 0..2^z-1, beyond answered 404",
            json_schema_extra=NOT_NEGATIVE,
        ),
    ],
) -> grid.Tile:
    """The tile at zoom `z`, row `y`, column `x` (`TileOutOfMatrix`, answered 404, otherwise)."""
    return grid.tile(z, x, y)


class UnknownTileMatrixSet(TileOutOfMatrix):
    """A tile matrix set other than WebMercatorQuad (answered 404 like a tile outside it)."""

    def __init__(self, tms: str) -> None:
        Exception.__init__(self, f"unknown tile matrix set {tms!r}; use {TMS_ID}")


def _tms_check(tms: str) -> None:
    if tms != TMS_ID:
        raise UnknownTileMatrixSet(tms)


LISTING = responses(media=(JSON, HTML), schema={"type": "object"})
"""What a listing of tile matrix sets or tilesets answers: JSON, or its page for browsers."""
LISTING_404 = responses(404, media=(JSON, HTML), schema={"type": "object"})


# -- tile matrix sets -------------------------------------------------------------------------


@router.get("/tileMatrixSets", summary="Tile matrix sets", responses=LISTING)
def tile_matrix_sets(request: Request, html: HtmlOrJson) -> Response:
    """The tiling schemes offered (WebMercatorQuad)."""
    doc = {
        "links": [link(url(request, "/tileMatrixSets"), "self", JSON, "Tile matrix sets")],
        "tileMatrixSets": [
            {
                "id": TMS_ID,
                "title": "Google Maps Compatible for the World",
                "uri": TMS_URI,
                "links": [link(url(request, f"/tileMatrixSets/{TMS_ID}"), "self", JSON, TMS_ID)],
            }
        ],
    }
    return negotiate(request, html, doc, "Tile matrix sets")


@router.get(
    "/tileMatrixSets/{tileMatrixSetId}", summary="One tile matrix set", responses=responses(404)
)
def tile_matrix_set(tileMatrixSetId: TileMatrixSetId) -> JSONResponse:
    """The definition of WebMercatorQuad (OGC Two Dimensional Tile Matrix Set 2.0)."""
    _tms_check(tileMatrixSetId)
    return JSONResponse(grid.TMS.model_dump(mode="json", exclude_none=True, by_alias=True))


# -- vector tiles -----------------------------------------------------------------------------


def _tileset_links(request: Request, base: str) -> list[dict]:
    return [
        link(url(request, base), "self", JSON, "Tileset metadata"),
        link(url(request, f"{base}/tilejson.json"), "describedby", JSON, "TileJSON"),
        link(url(request, f"/tileMatrixSets/{TMS_ID}"), REL_TILING_SCHEMES, JSON),
        link(
            url(request, f"{base}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}"),
            "item",
            MVT,
            "Vector tiles",
            templated=True,
        ),
    ]


def _visible(catalog: Catalog, scope: Lens, names: list[str] | None) -> dict[str, Head]:
    """The requested vector layers (all visible ones by default), each checked against scope."""
    if names is None:
        return catalog.heads(scope)
    return {n: catalog.head(n, scope) for n in names}


def _rows(layer: Layer, flt: Filter | None, tile: grid.Tile) -> Any:
    """Rows a filtered tile may draw: the filter is evaluated only on the features whose box
    meets the tile (padded a little), not on the whole layer."""
    if flt is None:
        return None
    b = grid.lonlat_bounds(tile)
    pad = (b.maxx - b.minx) / 64
    box = Bounds(b.minx - pad, max(b.miny - pad, -90.0), b.maxx + pad, min(b.maxy + pad, 90.0))
    return select(layer, Selection(bbox=box, filter=flt))


def _tilesets(request: Request, path: str, base: str, title: str) -> dict:
    return {
        "links": [link(url(request, path), "self", JSON)],
        "tilesets": [
            {
                "title": f"{title} (vector tiles)",
                "dataType": "vector",
                "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
                "tileMatrixSetURI": TMS_URI,
                "links": _tileset_links(request, base),
            }
        ],
    }


@router.get(
    "/collections/{collectionId}/tiles",
    summary="Vector tilesets of a collection",
    responses=LISTING_404,
)
def collection_tilesets(
    request: Request,
    collectionId: CollectionId,
    catalog: CatalogDep,
    scope: Scope,
    html: HtmlOrJson,
) -> Response:
    """The tilesets of one collection (WebMercatorQuad vector tiles)."""
    title = catalog.head(collectionId, scope).schema.title
    base = f"/collections/{collectionId}/tiles/{TMS_ID}"
    doc = _tilesets(request, f"/collections/{collectionId}/tiles", base, title)
    crumbs = collection_crumbs(request, collectionId, title)
    return negotiate(request, html, doc, f"{title}: vector tilesets", crumbs)


@router.get(
    "/collections/{collectionId}/tiles/{tileMatrixSetId}",
    summary="Vector tileset of a collection",
    responses=LISTING_404,
)
def collection_tileset(
    request: Request,
    collectionId: CollectionId,
    tileMatrixSetId: TileMatrixSetId,
    catalog: CatalogDep,
    scope: Scope,
    tiles: TilesDep,
    html: HtmlOrJson,
) -> Response:
    """Tileset metadata (OGC API Tiles): tile URL template, zooms, bounds, layers."""
    _tms_check(tileMatrixSetId)
    layer = catalog.head(collectionId, scope)
    base = f"/collections/{collectionId}/tiles/{TMS_ID}"
    doc = tileset_document(
        base_url(request),
        {collectionId: layer},
        base,
        tiles.settings,
        title=layer.schema.title,
        links=_tileset_links(request, base),
    )
    crumbs = collection_crumbs(request, collectionId, layer.schema.title)
    return negotiate(request, html, doc, f"{layer.schema.title}: vector tileset", crumbs)


@router.get(
    "/collections/{collectionId}/tiles/{tileMatrixSetId}/tilejson.json",
    summary="TileJSON of a collection",
    responses=responses(404),
)
def collection_tilejson(
    request: Request,
    collectionId: CollectionId,
    tileMatrixSetId: TileMatrixSetId,
    catalog: CatalogDep,
    scope: Scope,
    tiles: TilesDep,
) -> dict:
    """TileJSON 3.0.0 of one collection's vector tiles."""
    _tms_check(tileMatrixSetId)
    layer = catalog.head(collectionId, scope)
    return tilejson(
        base_url(request),
        {collectionId: layer},
        f"/collections/{collectionId}/tiles/{TMS_ID}",
        tiles.settings,
        name=layer.schema.title,
    )


@router.get("/tiles", summary="Vector tilesets of all layers", responses=LISTING)
def dataset_tilesets(request: Request, html: HtmlOrJson) -> Response:
    """The composite tilesets (every layer the caller may see in one tile)."""
    doc = _tilesets(request, "/tiles", f"/tiles/{TMS_ID}", "All layers")
    return negotiate(request, html, doc, "Vector tilesets of all layers")


@router.get(
    "/tiles/{tileMatrixSetId}", summary="Vector tileset of all layers", responses=LISTING_404
)
def dataset_tileset(
    request: Request,
    tileMatrixSetId: TileMatrixSetId,
    catalog: CatalogDep,
    scope: Scope,
    tiles: TilesDep,
    collections: Collections,
    html: HtmlOrJson,
) -> Response:
    """Tileset metadata of the composite tiles."""
    _tms_check(tileMatrixSetId)
    layers = _visible(catalog, scope, collections)
    base = f"/tiles/{TMS_ID}"
    doc = tileset_document(
        base_url(request),
        layers,
        base,
        tiles.settings,
        title="twin",
        links=_tileset_links(request, base),
    )
    crumbs = [("Vector tilesets of all layers", html_url(request, "/tiles"))]
    return negotiate(request, html, doc, "Vector tileset of all layers", crumbs)


@router.get(
    "/tiles/{tileMatrixSetId}/tilejson.json",
    summary="TileJSON of all layers",
    responses=responses(404),
)
def dataset_tilejson(
    request: Request,
    tileMatrixSetId: TileMatrixSetId,
    catalog: CatalogDep,
    scope: Scope,
    tiles: TilesDep,
    collections: Collections,
) -> dict:
    """TileJSON 3.0.0 of the composite tiles (every layer the caller may see, or `collections`)."""
    _tms_check(tileMatrixSetId)
    layers = _visible(catalog, scope, collections)
    return tilejson(base_url(request), layers, f"/tiles/{TMS_ID}", tiles.settings, name="twin")


TILE_RESPONSES = responses(204, 304, 404, what="A Mapbox Vector Tile", media=MVT, schema=BINARY)


@router.get(
    COLLECTION_TILE_PATH,
    summary="A vector tile of a collection",
    response_class=Response,
    responses=TILE_RESPONSES,
)
async def collection_tile(
    collectionId: CollectionId,
    tileMatrixSetId: TileMatrixSetId,
    tile: Annotated[grid.Tile, Depends(tile_of)],
    catalog: CatalogAt,
    asof: AsOf,
    scope: Scope,
    tiles: TilesDep,
    cql: CqlFilter,
    if_none_match: Annotated[str | None, Header()] = None,
    accept_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    """The Mapbox Vector Tile at zoom `z`, row `y`, column `x`; 204 when empty (with `asof`,
    of the layer as the twin recorded it then)."""
    _tms_check(tileMatrixSetId)
    layer = catalog.head(collectionId, scope)
    if cql is not None:
        cql.check(layer.schema)

    def requests() -> list[tuple[Layer, Any]]:
        # Served when drawn (a stale tile: later).
        now = tiles.around(catalog, collectionId, scope, tile, whole=cql is not None)
        return [(now, _rows(now, cql, tile))]

    return await tiles.respond(
        {collectionId: layer},
        tile,
        scope,
        cql,
        requests,
        if_none_match,
        accept_encoding,
        asof,
    )


@router.get(
    DATASET_TILE_PATH,
    summary="A vector tile of several collections",
    response_class=Response,
    responses=TILE_RESPONSES,
)
async def dataset_tile(
    tileMatrixSetId: TileMatrixSetId,
    tile: Annotated[grid.Tile, Depends(tile_of)],
    catalog: CatalogAt,
    asof: AsOf,
    scope: Scope,
    tiles: TilesDep,
    collections: Collections,
    cql: CqlFilter,
    if_none_match: Annotated[str | None, Header()] = None,
    accept_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    """One tile holding a layer per collection (all the caller may see, or `collections`).

    A `filter` applies to the layers that have every property it names.
    """
    _tms_check(tileMatrixSetId)
    layers = _visible(catalog, scope, collections)

    def requests() -> list[tuple[Layer, Any]]:
        out = []
        for name, head in _visible(catalog, scope, collections).items():
            if cql is not None and not cql.properties <= _names(head):
                continue
            layer = tiles.around(catalog, name, scope, tile, whole=cql is not None)
            out.append((layer, _rows(layer, cql, tile)))
        return out

    return await tiles.respond(
        layers, tile, scope, cql, requests, if_none_match, accept_encoding, asof
    )


def _names(layer: Head) -> set[str]:
    return queryable_names(layer.schema)


# -- raster map tiles -------------------------------------------------------------------------


@router.get(
    "/collections/{collectionId}/map/tiles",
    summary="Map tilesets of a raster",
    responses=LISTING_404,
)
def map_tilesets(
    request: Request,
    collectionId: CollectionId,
    catalog: CatalogDep,
    scope: Scope,
    html: HtmlOrJson,
) -> Response:
    """The map tilesets of a raster collection (hillshade and colour relief PNG)."""
    info = catalog.raster(collectionId, scope)
    base = f"/collections/{collectionId}/map/tiles/{TMS_ID}"
    bounds = info.bounds  # lon/lat, as the store recorded them
    tileset: dict[str, Any] = {
        "title": f"{info.title} (map tiles)",
        "dataType": "map",
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "tileMatrixSetURI": TMS_URI,
        "styles": ["hillshade", "relief"],
        "links": [
            link(url(request, f"/tileMatrixSets/{TMS_ID}"), REL_TILING_SCHEMES, JSON),
            link(
                url(request, f"{base}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}"),
                "item",
                PNG,
                "Map tiles (?style=hillshade|relief)",
                templated=True,
            ),
        ],
    }
    if bounds is not None:
        tileset["boundingBox"] = {
            "lowerLeft": [bounds[0], bounds[1]],
            "upperRight": [bounds[2], bounds[3]],
            "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
        }
    doc = {
        "links": [link(url(request, f"/collections/{collectionId}/map/tiles"), "self", JSON)],
        "tilesets": [tileset],
    }
    crumbs = collection_crumbs(request, collectionId, info.title)
    return negotiate(request, html, doc, f"{info.title}: map tilesets", crumbs)


@router.get(
    "/collections/{collectionId}/map/tiles/{tileMatrixSetId}/{z}/{y}/{x}",
    summary="A map tile of a raster",
    response_class=Response,
    responses=responses(204, 304, 404, what="A PNG map tile", media=PNG, schema=BINARY),
)
async def map_tile(
    collectionId: CollectionId,
    tileMatrixSetId: TileMatrixSetId,
    tile: Annotated[grid.Tile, Depends(tile_of)],
    catalog: CatalogDep,
    scope: Scope,
    tiles: TilesDep,
    style: Annotated[
        Literal["hillshade", "relief"],
        Query(description="hillshade (grey shaded relief) or relief (colour by elevation)"),
    ] = "hillshade",
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A PNG of the raster at zoom `z`, row `y`, column `x`, drawn in the given style."""
    _tms_check(tileMatrixSetId)
    info = catalog.raster(collectionId, scope)
    return await tiles.respond_raster(info, tile, style, if_none_match)
