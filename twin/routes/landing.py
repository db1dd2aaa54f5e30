"""The landing page and the conformance declaration."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from twin.dependencies import HtmlOrJson
from twin.routes.html import VARY, html_url, negotiate
from twin.routes.links import (
    HTML,
    JSON,
    OPENAPI,
    REL_CONFORMANCE,
    REL_DATA,
    REL_TILESETS_VECTOR,
    REL_TILING_SCHEMES,
    link,
    url,
)
from twin.routes.responses import responses

router = APIRouter(tags=["Capabilities"])

FEATURES = "http://www.opengis.net/spec/ogcapi-features"
CONFORMANCE: tuple[str, ...] = (
    f"{FEATURES}-1/1.0/conf/core",
    f"{FEATURES}-1/1.0/conf/geojson",
    f"{FEATURES}-1/1.0/conf/html",
    f"{FEATURES}-2/1.0/conf/crs",
    f"{FEATURES}-3/1.0/conf/queryables",
    f"{FEATURES}-3/1.0/conf/queryables-query-parameters",
    f"{FEATURES}-3/1.0/conf/filter",
    f"{FEATURES}-3/1.0/conf/features-filter",
    f"{FEATURES}-4/1.0/conf/create-replace-delete",
    f"{FEATURES}-4/1.0/conf/update",
    f"{FEATURES}-4/1.0/conf/optimistic-locking-etags",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/dataset-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/collections-selection",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/png",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
)
"""Conformance classes of what this server implements (and nothing more)."""


@router.get(
    "/", summary="Landing page", response_model=None, responses=responses(307, media=(JSON, HTML))
)
def landing_page(request: Request, html: HtmlOrJson) -> Response:
    """Links to the API description, the conformance classes, the collections and the tiles."""
    links = [
        link(url(request, "/"), "self", JSON, "This document"),
        link(url(request, "/api"), "service-desc", OPENAPI, "The API definition (OpenAPI)"),
        link(url(request, "/api.html"), "service-doc", HTML, "The API documentation"),
        link(url(request, "/conformance"), "conformance", JSON, "Conformance classes"),
        link(url(request, "/conformance"), REL_CONFORMANCE, JSON, "Conformance classes"),
        link(url(request, "/collections"), "data", JSON, "The collections"),
        link(url(request, "/collections"), REL_DATA, JSON, "The collections"),
        link(url(request, "/tileMatrixSets"), REL_TILING_SCHEMES, JSON, "Tile matrix sets"),
        link(url(request, "/tiles"), REL_TILESETS_VECTOR, JSON, "Vector tiles of all layers"),
        link(url(request, "/style.json"), "stylesheet", JSON, "MapLibre style"),
    ]
    doc = {
        "title": "twin",
        "description": "Digital twin of the city's municipal assets.",
        "links": links,
    }
    if html and "f" not in request.query_params and getattr(request.app.state, "web_map", False):
        return RedirectResponse("web/", status_code=307, headers=VARY)
    pages = [
        ("The collections", html_url(request, "/collections")),
        ("The web map", url(request, "/web/")),
        ("The API documentation", url(request, "/api.html")),
        ("Conformance classes", html_url(request, "/conformance")),
        ("Vector tiles of all layers", html_url(request, "/tiles")),
    ]
    if not getattr(request.app.state, "web_map", False):
        del pages[1]
    return negotiate(request, html, doc, "twin", pages=pages)


@router.get(
    "/conformance",
    summary="Conformance classes",
    responses=responses(media=(JSON, HTML), schema={"type": "object"}),
)
def conformance(request: Request, html: HtmlOrJson) -> Response:
    """The OGC conformance classes this server implements."""
    doc = {
        "links": [link(url(request, "/conformance"), "self", JSON, "This document")],
        "conformsTo": list(CONFORMANCE),
    }
    return negotiate(request, html, doc, "Conformance classes")
