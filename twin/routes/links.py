"""Absolute URLs and OGC link objects for answers."""

from __future__ import annotations

from typing import Any

from fastapi import Request

JSON = "application/json"
GEOJSON = "application/geo+json"
SCHEMA = "application/schema+json"
HTML = "text/html"
OPENAPI = "application/vnd.oai.openapi+json;version=3.1"
MVT = "application/vnd.mapbox-vector-tile"
PNG = "image/png"
REL_TILESETS_VECTOR = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector"
REL_TILESETS_MAP = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-map"
REL_TILING_SCHEMES = "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes"
REL_QUERYABLES = "http://www.opengis.net/def/rel/ogc/1.0/queryables"
REL_CONFORMANCE = "http://www.opengis.net/def/rel/ogc/1.0/conformance"
REL_DATA = "http://www.opengis.net/def/rel/ogc/1.0/data"


def base_url(request: Request) -> str:
    """The server's base URL without a trailing slash (`public_url` when configured)."""
    public = request.app.state.settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def url(request: Request, path: str) -> str:
    """Absolute URL of a server path such as `/collections`."""
    return base_url(request) + path


def request_url(request: Request, *, drop: tuple[str, ...] = (), **replace: Any) -> str:
    """This request's own URL (on the public base), with some query parameters replaced and
    those named in `drop` left out."""
    u = request.url.remove_query_params(drop) if drop else request.url
    u = u.include_query_params(**replace) if replace else u
    path = u.path + (f"?{u.query}" if u.query else "")
    root = request.scope.get("root_path", "")
    return base_url(request) + path.removeprefix(root)


def link(href: str, rel: str, type: str = JSON, title: str | None = None, **extra: Any) -> dict:
    """One OGC link object."""
    out = {"href": href, "rel": rel, "type": type}
    if title:
        out["title"] = title
    out.update(extra)
    return out
