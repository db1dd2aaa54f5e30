"""The landing page and the conformance declaration."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from twin.routes.links import (
    GEOJSON,
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
    f"{FEATURES}-2/1.0/conf/crs",
    f"{FEATURES}-3/1.0/conf/queryables",
    f"{FEATURES}-3/1.0/conf/queryables-query-parameters",
    f"{FEATURES}-3/1.0/conf/filter",
    f"{FEATURES}-3/1.0/conf/features-filter",
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


def _wants_html(accept: str | None, f: str | None) -> bool:
    if f is not None:
        return f.lower() == "html"
    if not accept:
        return False
    types = [t.split(";")[0].strip().lower() for t in accept.split(",")]
    return "text/html" in types and "application/json" not in types


@router.get(
    "/", summary="Landing page", response_model=None, responses=responses(307, media=(JSON, HTML))
)
def landing_page(
    request: Request,
    accept: Annotated[str | None, Header()] = None,
    f: Annotated[
        str | None,
        Query(description="json (default) or html", json_schema_extra={"enum": ["json", "html"]}),
    ] = None,
) -> JSONResponse | HTMLResponse | RedirectResponse:
    """Links to the API description, the conformance classes, the collections and the tiles."""
    links = [
        link(url(request, "/"), "self", JSON, "This document"),
        link(url(request, "/?f=html"), "alternate", HTML, "This document as HTML"),
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
    if _wants_html(accept, f):
        if f is None and getattr(request.app.state, "web_map", False):
            return RedirectResponse("web/", status_code=307)
        return HTMLResponse(_landing_html(doc))
    return JSONResponse(doc)


def _landing_html(doc: dict) -> str:
    items = "".join(
        f'<li><a href="{html.escape(lk["href"])}">{html.escape(lk.get("title") or lk["rel"])}</a>'
        f" <small>({html.escape(lk['type'])})</small></li>"
        for lk in doc["links"]
        if lk["type"] in (JSON, HTML, GEOJSON, OPENAPI)
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>twin</title></head><body>"
        f"<h1>{html.escape(doc['title'])}</h1><p>{html.escape(doc['description'])}</p>"
        f"<ul>{items}</ul></body></html>"
    )


@router.get("/conformance", summary="Conformance classes", responses=responses())
def conformance() -> dict:
    """The OGC conformance classes this server implements."""
    return {"conformsTo": list(CONFORMANCE)}
