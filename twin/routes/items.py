"""Features of a collection: items with paging, bbox, time, CRS, property equality and CQL2."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import shapely
from fastapi import APIRouter, Request
from fastapi.responses import Response

from layers.catalog import Catalog, Lens, sift
from layers.errors import Uncompiled
from layers.layer import Head, Layer
from layers.models import Access, Bounds
from twin.access import Scope
from twin.dependencies import (
    AsOf,
    BBox,
    CatalogAt,
    CatalogDep,
    CollectionId,
    CqlFilter,
    CrsSetDep,
    Datetime,
    FeatureId,
    HtmlOrGeoJson,
    Limit,
    Offset,
    OutputCrs,
)
from twin.errors import InvalidParameter
from twin.geojson import feature, feature_collection, features_json
from twin.routes.html import VARY, alternate, html_answer, item_page, items_page
from twin.routes.links import GEOJSON, HTML, JSON, link, request_url, url
from twin.routes.responses import responses
from twin.routes.schemas import FEATURE, FEATURE_COLLECTION
from twin.select import Selection, select, where_of

router = APIRouter(tags=["Features"])

# Query parameters items understands besides the layer's property names.
KNOWN_PARAMS = frozenset(
    {
        "bbox",
        "bbox-crs",
        "limit",
        "offset",
        "datetime",
        "crs",
        "filter",
        "filter-lang",
        "filter-crs",
        "f",
        "asof",
    }
)


def _check_params(request: Request, layer: Head) -> dict[str, str]:
    """Property-equality parameters of the request; `InvalidParameter` for an unknown one."""
    equals: dict[str, str] = {}
    fields = set(layer.schema.field_names)
    for key, value in request.query_params.multi_items():
        if key in KNOWN_PARAMS:
            continue
        if key not in fields:
            raise InvalidParameter(
                f"unknown query parameter {key!r}; use bbox, bbox-crs, limit, offset, datetime, "
                f"crs, filter, filter-lang, filter-crs, or a property of {layer.name!r}: "
                f"{', '.join(sorted(fields))}"
            )
        if key in equals:
            raise InvalidParameter(f"{key!r} is given twice")
        equals[key] = value
    return equals


def _selected(
    catalog: Catalog,
    head: Head,
    scope: Lens,
    sel: Selection,
    limit: int,
    offset: int,
) -> tuple[Layer, np.ndarray, int]:
    """A layer, the rows of it on the page asked for, and how many features meet `sel`
    (the layer as recorded at `asof`, when given). A catalog not holding the layer reads a
    page of it when nothing narrows it, else has the store select the page (`Catalog.select`)
    or, when it cannot, reads the features in the box, or the whole layer a chunk at a time."""
    name = head.name
    if sel == Selection():
        paged = catalog.page(name, scope, limit, offset)
        if paged is not None:
            got, matched = paged
            return got, np.arange(len(got)), matched
    if not catalog.holds:
        queried = _queried(catalog, head, scope, sel, limit, offset)
        if queried is not None:
            return queried
        if sel.bbox is None:
            return _scanned(catalog, name, scope, sel, limit, offset)
    window = None if sel.bbox is None else Bounds(*shapely.bounds(shapely.box(*sel.bbox)).tolist())
    layer = catalog.around(name, scope, window)
    rows = select(layer, sel)
    return layer, rows[offset : offset + limit], len(rows)


def _queried(
    catalog: Catalog, head: Head, scope: Lens, sel: Selection, limit: int, offset: int
) -> tuple[Layer, np.ndarray, int] | None:
    """`_selected` by the store in one query; None when the selection cannot be said
    exactly there (`Uncompiled`) or the caller's view hides rows."""
    try:
        where = where_of(sel, head.schema)
    except Uncompiled:
        return None
    got = catalog.select(head.name, scope, where, limit, offset)
    if got is None:
        return None
    layer, matched = got
    return layer, np.arange(len(layer)), matched


def _scanned(
    catalog: Catalog, name: str, scope: Lens, sel: Selection, limit: int, offset: int
) -> tuple[Layer, np.ndarray, int]:
    """`_selected` over a layer not held, without a box: the layer read a chunk at a time,
    each chunk's matches counted and the page's kept."""
    matched = 0
    parts = []
    for chunk in catalog.chunks(name, scope):
        rows = select(chunk, sel)
        keep = rows[max(offset - matched, 0) : max(offset + limit - matched, 0)]
        if len(keep):
            parts.append(chunk.take(keep))
        matched += len(rows)
    layer = Layer.concat(parts) if parts else Layer.empty(catalog.head(name, scope).schema)
    return layer, np.arange(len(layer)), matched


@router.get(
    "/collections/{collectionId}/items",
    summary="Features",
    response_class=Response,
    responses=responses(
        404, what="A GeoJSON FeatureCollection", media=(GEOJSON, HTML), schema=FEATURE_COLLECTION
    ),
)
def get_items(
    request: Request,
    collectionId: CollectionId,
    catalog: CatalogAt,
    scope: Scope,
    crs_set: CrsSetDep,
    bbox: BBox,
    limit: Limit,
    offset: Offset,
    interval: Datetime,
    crs: OutputCrs,
    cql: CqlFilter,
    html: HtmlOrGeoJson,
) -> Response:
    """Features of the collection meeting every condition, one page at a time, as the twin
    holds them now or as it recorded them at `asof`.

    Any property of the layer can also be given as `name=value` for equality.
    """
    head = catalog.head(collectionId, scope)
    equals = _check_params(request, head)
    layer, page, matched = _selected(
        catalog, head, scope, Selection(bbox, equals, interval, cql), limit, offset
    )
    geoms = crs_set.to_crs(layer.geometry[page], crs)
    features = features_json(layer, page, geoms)
    links = [
        link(request_url(request, drop=("f",)), "self", GEOJSON, "This page"),
        alternate(request, html, GEOJSON),
        link(url(request, f"/collections/{collectionId}"), "collection", JSON, "The collection"),
    ]
    # The next and previous pages: HTML pages from an HTML page, GeoJSON from GeoJSON.
    kind = HTML if html else GEOJSON

    def page_at(start: int) -> str:
        if html:
            return request_url(request, offset=start, f="html")
        return request_url(request, offset=start)

    if offset + len(page) < matched:
        links.append(link(page_at(offset + limit), "next", kind, "Next"))
    if offset > 0:
        links.append(link(page_at(max(0, offset - limit)), "prev", kind, "Previous"))
    body = feature_collection(
        features,
        {
            "timeStamp": dt.datetime.now(dt.UTC)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            "numberMatched": matched,
            "numberReturned": len(features),
            "links": links,
        },
    )
    if html:
        title = layer.schema.title
        doc = json.loads(body)
        return html_answer(
            items_page(request, collectionId, title, doc, layer.geometry[page], offset)
        )
    return Response(body, media_type=GEOJSON, headers={"Content-Crs": crs.header, **VARY})


@router.get(
    "/collections/{collectionId}/items/{featureId}",
    summary="One feature",
    response_class=Response,
    responses=responses(404, what="A GeoJSON Feature", media=(GEOJSON, HTML), schema=FEATURE),
)
def get_item(
    request: Request,
    collectionId: CollectionId,
    featureId: FeatureId,
    catalog: CatalogDep,
    scope: Scope,
    crs_set: CrsSetDep,
    crs: OutputCrs,
    html: HtmlOrGeoJson,
    asof: AsOf,
) -> Response:
    """One feature by id (as recorded at `asof`: 404 if it did not exist then)."""
    layer = catalog.picked(collectionId, scope, [featureId])
    if asof is not None:
        layer, _ = sift(
            scope, catalog.store.as_of(collectionId, asof, Access.RESTRICTED, [featureId])
        )
    row = layer.row(featureId)
    rows = [row]
    geoms_lonlat = layer.geometry[rows]
    (text,) = features_json(layer, rows, crs_set.to_crs(geoms_lonlat, crs))
    body = feature(
        text,
        {
            "links": [
                link(request_url(request, drop=("f",)), "self", GEOJSON, "This feature"),
                alternate(request, html, GEOJSON),
                link(url(request, f"/collections/{collectionId}"), "collection", JSON),
                link(url(request, f"/collections/{collectionId}/items"), "items", GEOJSON),
            ]
        },
    )
    if html:
        doc = json.loads(body)
        return html_answer(item_page(request, collectionId, layer.schema.title, doc, geoms_lonlat))
    headers = {"Content-Crs": crs.header, "ETag": layer.etag(row), **VARY}
    return Response(body, media_type=GEOJSON, headers=headers)
