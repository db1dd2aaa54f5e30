"""The collections: their list, one collection's metadata, and its queryables."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from layers.errors import UnknownCollection
from layers.layer import Head
from layers.models import FieldType, GeometryFamily
from layers.store import RasterInfo
from twin.access import Scope
from twin.cql2 import GEOMETRY_NAMES
from twin.crs import CRS84
from twin.dependencies import CatalogDep, CollectionId, CrsSetDep, HtmlOrJson
from twin.routes.html import (
    VARY,
    alternate,
    collection_crumbs,
    collections_page,
    html_answer,
    html_url,
    negotiate,
)
from twin.routes.links import (
    GEOJSON,
    HTML,
    JSON,
    REL_QUERYABLES,
    REL_TILESETS_MAP,
    REL_TILESETS_VECTOR,
    SCHEMA,
    link,
    url,
)
from twin.routes.responses import responses

router = APIRouter(tags=["Collections"])

GREGORIAN = "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"


def vector_collection(
    request: Request,
    layer: Head,
    crs_uris: list[str],
    temporal: list[str | None] | None,
) -> dict[str, Any]:
    """The OGC collection document of a vector layer (`temporal`: its temporal extent, for a
    layer not held)."""
    name = layer.name
    base = f"/collections/{name}"
    doc: dict[str, Any] = {
        "id": name,
        "title": layer.schema.title,
        "description": layer.schema.description,
        "itemType": "feature",
        "geometryType": layer.schema.geometry.value,
        "classification": layer.schema.classification.label,
        "numberOfFeatures": len(layer),
    }
    extent: dict[str, Any] = {}
    if layer.bounds is not None:
        extent["spatial"] = {"bbox": [list(layer.bounds)], "crs": CRS84}
    if temporal is not None:
        extent["temporal"] = {"interval": [temporal], "trs": GREGORIAN}
    if extent:
        doc["extent"] = extent
    doc["crs"] = crs_uris
    doc["storageCrs"] = CRS84
    attribution = layer.meta.get("attribution")
    if attribution:
        doc["attribution"] = attribution
    doc["links"] = [
        link(url(request, base), "self", JSON, layer.schema.title),
        link(url(request, f"{base}/items"), "items", GEOJSON, "Features"),
        link(url(request, f"{base}/queryables"), REL_QUERYABLES, SCHEMA, "Queryables"),
        link(url(request, f"{base}/tiles"), REL_TILESETS_VECTOR, JSON, "Vector tilesets"),
        link(
            url(request, f"{base}/tiles/WebMercatorQuad/tilejson.json"),
            "describedby",
            JSON,
            "TileJSON",
        ),
    ]
    return doc


def raster_collection(request: Request, info: RasterInfo) -> dict[str, Any]:
    """The OGC collection document of a raster (map tiles only)."""
    base = f"/collections/{info.name}"
    doc: dict[str, Any] = {
        "id": info.name,
        "title": info.title,
        "description": str(info.meta.get("description", "")),
        "itemType": "coverage",
        "dataType": "map",
        # Read by GDAL's OGC API Features client, which otherwise takes every collection for
        # features and asks for this one's items.
        "layerDataType": "Coverage",
        "classification": info.classification.label,
    }
    bounds = info.bounds  # lon/lat, as the store recorded them
    if bounds is not None:
        doc["extent"] = {"spatial": {"bbox": [list(bounds)], "crs": CRS84}}
    if info.meta.get("attribution"):
        doc["attribution"] = info.meta["attribution"]
    doc["links"] = [
        link(url(request, base), "self", JSON, info.title),
        link(url(request, f"{base}/map/tiles"), REL_TILESETS_MAP, JSON, "Map tilesets"),
    ]
    return doc


@router.get("/collections", summary="The collections", responses=responses(media=(JSON, HTML)))
def list_collections(
    request: Request, catalog: CatalogDep, scope: Scope, crs_set: CrsSetDep, html: HtmlOrJson
) -> Response:
    """Every layer and raster the caller may see."""
    docs = [
        vector_collection(request, h, crs_set.uris, catalog.temporal(h.name, scope))
        for h in catalog.heads(scope).values()
    ]
    docs += [raster_collection(request, r) for r in catalog.rasters(scope).values()]
    doc = {
        "links": [
            link(url(request, "/collections"), "self", JSON, "The collections"),
            alternate(request, html),
        ],
        "crs": crs_set.uris,
        "collections": docs,
    }
    if html:
        return html_answer(collections_page(request, doc))
    return JSONResponse(doc, headers=VARY)


@router.get(
    "/collections/{collectionId}",
    summary="One collection",
    responses=responses(404, media=(JSON, HTML)),
)
def get_collection(
    request: Request,
    collectionId: CollectionId,
    catalog: CatalogDep,
    scope: Scope,
    crs_set: CrsSetDep,
    html: HtmlOrJson,
) -> Response:
    """Metadata of one collection: extent, CRSs, links to items, queryables and tiles."""
    if collectionId in catalog.rasters(scope):
        doc = raster_collection(request, catalog.raster(collectionId, scope))
        pages = [("Map tilesets", html_url(request, f"{_path(collectionId)}/map/tiles"))]
    else:
        head = catalog.head(collectionId, scope)
        doc = vector_collection(request, head, crs_set.uris, catalog.temporal(head.name, scope))
        pages = [
            ("The features", html_url(request, f"{_path(collectionId)}/items")),
            ("Queryables", html_url(request, f"{_path(collectionId)}/queryables")),
            ("Vector tilesets", html_url(request, f"{_path(collectionId)}/tiles")),
        ]
    crumbs = [("Collections", html_url(request, "/collections"))]
    return negotiate(request, html, doc, doc["title"] or collectionId, crumbs, pages)


def _path(collection: str) -> str:
    return f"/collections/{quote(collection, safe='')}"


_JSON_TYPES: dict[FieldType, dict[str, str]] = {
    FieldType.STRING: {"type": "string"},
    FieldType.INTEGER: {"type": "integer"},
    FieldType.FLOAT: {"type": "number"},
    FieldType.BOOLEAN: {"type": "boolean"},
    FieldType.DATE: {"type": "string", "format": "date"},
    FieldType.DATETIME: {"type": "string", "format": "date-time"},
}
_GEOMETRY_FORMATS = {
    GeometryFamily.POINT: "geometry-point-or-multipoint",
    GeometryFamily.LINE: "geometry-linestring-or-multilinestring",
    GeometryFamily.POLYGON: "geometry-polygon-or-multipolygon",
    GeometryFamily.ANY: "geometry-any",
}


@router.get(
    "/collections/{collectionId}/queryables",
    summary="Queryables",
    response_class=JSONResponse,
    responses=responses(404, what="A JSON Schema of the queryables", media=(SCHEMA, HTML)),
)
def queryables(
    request: Request,
    collectionId: CollectionId,
    catalog: CatalogDep,
    scope: Scope,
    html: HtmlOrJson,
) -> Any:
    """The properties a filter may use, as a JSON Schema."""
    if collectionId in catalog.rasters(scope):
        raise UnknownCollection(collectionId)
    schema = catalog.head(collectionId, scope).schema
    props: dict[str, Any] = {
        GEOMETRY_NAMES[0]: {
            "title": "Geometry",
            "format": _GEOMETRY_FORMATS[schema.geometry],
            "x-ogc-role": "primary-geometry",
        },
        "id": {"title": "Feature id", "type": "string", "x-ogc-role": "id"},
    }
    for f in schema.fields:
        p: dict[str, Any] = {"title": f.name, **_JSON_TYPES[f.type]}
        if f.description:
            p["description"] = f.description
        if f.choices is not None:
            p["enum"] = list(f.choices)
        if f.minimum is not None:
            p["minimum"] = f.minimum
        if f.maximum is not None:
            p["maximum"] = f.maximum
        props[f.name] = p
    props["source"] = {"title": "source", "type": "string", "description": "Dataset of origin"}
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": url(request, f"/collections/{collectionId}/queryables"),
        "type": "object",
        "title": schema.title,
        "properties": props,
        "additionalProperties": False,
        "links": [
            link(url(request, f"/collections/{collectionId}/queryables"), "self", SCHEMA),
        ],
    }
    crumbs = collection_crumbs(request, collectionId, schema.title)
    return negotiate(request, html, doc, f"{schema.title}: queryables", crumbs, media_type=SCHEMA)
