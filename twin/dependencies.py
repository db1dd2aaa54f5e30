"""Request parsing: small typed dependencies that return domain values.

Each documents its parameters in the OpenAPI description and raises `InvalidParameter`
(answered 400, naming the parameter) for a value it cannot use. The values a parameter may take
(bounds, patterns, choices) are declared in its schema (`json_schema_extra`) and checked by the
code that names the parameter in its error, so the document and the answers agree and the lean
paths answer as the routes do.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Annotated, Any, get_args

from fastapi import Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from layers.catalog import Catalog
from layers.models import Bounds, parse_utc, utc_stamp
from twin.cql2 import Filter, FilterLang, parse
from twin.crs import CORE_EPSG, CRS84, EPSG_URI, CrsRef, CrsSet
from twin.errors import BodyTooLarge, InvalidParameter
from twin.select import Interval, parse_datetime
from twin.settings import ServerSettings


async def get_catalog(request: Request) -> Catalog:
    """The catalog built at start-up, once it serves every change this process's event
    streams were told of (`serving`)."""
    return await serving(request.app.state)


async def serving(state: Any) -> Catalog:
    """The catalog on an app's `state`, once it serves every change the app's event streams
    were told of (they hear of readings before they are applied, `twin.events`): a client
    that fetches a feature on an event gets the new state."""
    catalog: Catalog = state.catalog
    feed = getattr(state, "feed", None)
    follower = getattr(state, "follower", None)
    if feed is not None and follower is not None and feed.released > catalog.seq:
        await follower.reach(feed.released)
    return catalog


async def get_held_catalog(request: Request) -> Catalog:
    """The catalog built at start-up, as it is now (what takes readings and streams events
    need not wait for the changes told to be applied)."""
    return request.app.state.catalog


async def get_settings(request: Request) -> ServerSettings:
    """The server's settings."""
    return request.app.state.settings


async def get_crs_set(request: Request) -> CrsSet:
    """The CRSs the server offers, with their cached transformers."""
    return request.app.state.crs


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
HeldCatalogDep = Annotated[Catalog, Depends(get_held_catalog)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it grows past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body of {int(declared)} bytes is over {limit} bytes")
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int, what: str) -> Any:
    """The request body (up to `limit` bytes) parsed as JSON, off the event loop (megabytes of
    JSON hold it for a tenth of a second); `InvalidParameter` asking for `what` if it is not
    JSON."""
    raw = await read_body(request, limit)
    return await run_in_threadpool(parse_json, raw, what)


def parse_json(raw: bytes, what: str) -> Any:
    """A request body parsed as JSON; `InvalidParameter` asking for `what` if it is not."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidParameter(f"the body is not JSON: send {what}") from None


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
CrsSetDep = Annotated[CrsSet, Depends(get_crs_set)]

# Schemas of the values parameters may take (see the module docstring).
LONGITUDE: dict[str, Any] = {"minimum": -180, "maximum": 180}
LATITUDE: dict[str, Any] = {"minimum": -90, "maximum": 90}
AT_LEAST_ONE: dict[str, Any] = {"minimum": 1}
NOT_NEGATIVE: dict[str, Any] = {"minimum": 0}
CRS_VALUE: dict[str, Any] = {
    "pattern": rf"^({re.escape(CRS84)}|({re.escape(EPSG_URI.format(''))}|EPSG:)"
    rf"({'|'.join(str(c) for c in CORE_EPSG)}))$"
}
"""CRS84 or an EPSG code every server offers (`TWIN_EXTRA_CRS` adds more: see a collection's
`crs`), as a URI or EPSG:n."""
_NUMBER = r" *-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,2})? *"
BBOX_VALUE: dict[str, Any] = {"pattern": rf"^{_NUMBER}(,{_NUMBER}){{3}}(,{_NUMBER},{_NUMBER})?$"}
"""4 or 6 comma-separated numbers (each minimum not above its maximum: checked, not declared)."""
NAMES_VALUE: dict[str, Any] = {"pattern": r"[^,\s\x1c-\x1f\x85]"}
"""Comma-separated names, at least one of them not blank (whitespace as Python strips it)."""
NOT_BLANK: dict[str, Any] = {"pattern": r"[^\s\x1c-\x1f\x85]"}
"""Text holding more than whitespace."""


CollectionId = Annotated[
    str, Path(description="Collection id, e.g. `lights`.", examples=["lights", "pipes"])
]
FeatureId = Annotated[str, Path(description="Feature id.")]


async def output_crs(
    crs_set: CrsSetDep,
    crs: Annotated[
        str | None,
        Query(
            description="CRS of the answer's coordinates, as a URI "
            "(http://www.opengis.net/def/crs/EPSG/0/4547) or EPSG:n; axis order is the CRS's own "
            "(EPSG:4326 latitude first). Default: CRS84 (longitude, latitude).",
            json_schema_extra=CRS_VALUE,
        ),
    ] = None,
) -> CrsRef:
    """The CRS the answer's coordinates are given in."""
    return crs_set.parse(crs, "crs")


async def bbox_filter(
    crs_set: CrsSetDep,
    bbox: Annotated[
        str | None,
        Query(
            description="minx,miny,maxx,maxy (or 6 numbers with heights), in bbox-crs axis order; "
            "features that intersect it are returned.",
            examples=["-71.12,42.36,-71.10,42.38"],
            json_schema_extra=BBOX_VALUE,
        ),
    ] = None,
    bbox_crs: Annotated[
        str | None,
        Query(
            alias="bbox-crs",
            description="CRS of bbox (default CRS84, longitude first); only with a bbox.",
            json_schema_extra=CRS_VALUE,
        ),
    ] = None,
) -> Bounds | None:
    """The bbox condition, as lon/lat bounds, or None."""
    ref = crs_set.parse(bbox_crs, "bbox-crs")
    if bbox is None:
        if bbox_crs is not None:
            raise InvalidParameter("bbox-crs is given without a bbox")
        return None
    parts = [p.strip() for p in bbox.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InvalidParameter(f"bbox {bbox!r} must be 4 or 6 comma-separated numbers") from None
    if len(values) == 6:
        values = [values[0], values[1], values[3], values[4]]
    if len(values) != 4:
        raise InvalidParameter(f"bbox {bbox!r} must be 4 or 6 comma-separated numbers")
    if not all(math.isfinite(v) for v in values):
        raise InvalidParameter(f"bbox {bbox!r} holds a number that is not finite")
    if values[0] > values[2] or values[1] > values[3]:
        raise InvalidParameter(
            f"bbox {bbox!r}: each minimum must not exceed its maximum (minx,miny,maxx,maxy)"
        )
    if ref.is_crs84 and (values[0] < -180 or values[2] > 180 or values[1] < -90 or values[3] > 90):
        raise InvalidParameter(f"bbox {bbox!r} is outside longitude -180..180, latitude -90..90")
    return crs_set.bbox_to_crs84(values, ref)


async def page_limit(
    settings: SettingsDep,
    limit: Annotated[
        int | None,
        Query(
            description="Features per page (1 or more); values above the maximum are clamped.",
            json_schema_extra=AT_LEAST_ONE,
        ),
    ] = None,
) -> int:
    """Page size: the default when absent, clamped to the configured maximum."""
    if limit is None:
        return settings.items_default_limit
    if limit < 1:
        raise InvalidParameter(f"limit={limit}: give 1 or more")
    return min(limit, settings.items_max_limit)


async def page_offset(
    offset: Annotated[
        int, Query(description="Features to skip (for paging).", json_schema_extra=NOT_NEGATIVE)
    ] = 0,
) -> int:
    """Features to skip."""
    if offset < 0:
        raise InvalidParameter(f"offset={offset}: give 0 or more")
    return offset


async def datetime_filter(
    datetime: Annotated[
        str | None,
        Query(
            description="Instant or interval (RFC 3339, `start/end`, `../end`, `start/..`), "
            "matched against each feature's life: an asset's installation (install_year) to "
            "its removal, a site's start and end dates, or else the feature's last change.",
            examples=["2024-01-01T00:00:00Z/.."],
        ),
    ] = None,
) -> Interval | None:
    """The time condition, or None."""
    return None if datetime is None else parse_datetime(datetime)


def cql2_filter(
    request: Request,
    crs_set: CrsSetDep,
    filter: Annotated[
        str | None,
        Query(
            description="CQL2 filter, e.g. `status = 'fault' AND S_DWITHIN(geometry, "
            "POINT(-71.1 42.37), 50)` (distances in metres).",
            json_schema_extra=NOT_BLANK,
        ),
    ] = None,
    filter_lang: Annotated[
        str | None,
        Query(
            alias="filter-lang",
            description="cql2-text (default) or cql2-json.",
            json_schema_extra={"enum": list(get_args(FilterLang))},
        ),
    ] = None,
    filter_crs: Annotated[
        str | None,
        Query(
            alias="filter-crs",
            description="CRS of the filter's geometries (default CRS84).",
            json_schema_extra=CRS_VALUE,
        ),
    ] = None,
) -> Filter | None:
    """The CQL2 condition, with geometry literals in lon/lat, or None (parsed in the thread
    pool: a long filter costs milliseconds that the event loop must not wait for)."""
    ref = crs_set.parse(filter_crs, "filter-crs")
    if filter is None:
        if filter_lang is not None and filter_lang not in ("cql2-text", "cql2-json"):
            raise InvalidParameter(f"filter-lang {filter_lang!r}: use cql2-text or cql2-json")
        return None
    convert = None if ref.is_crs84 else (lambda g: crs_set.from_crs(g, ref))
    return parse(
        filter,
        filter_lang or "cql2-text",
        geometry_to_lonlat=convert,
        limits=request.app.state.filter_limits,
    )


def wants_html(f: str | None, accept: str | None, offered: tuple[str, ...]) -> bool:
    """Whether the caller asks for the HTML page: `f=html`, or (without `f`) an Accept header
    naming text/html and no JSON type, as browsers send; any other `f` than `offered` is
    `InvalidParameter`."""
    if f is not None:
        if f.lower() not in offered:
            raise InvalidParameter(f"f={f!r}: use {' or '.join(offered)}")
        return f.lower() == "html"
    if not accept:
        return False
    types = {t.split(";")[0].strip().lower() for t in accept.split(",")}
    return "text/html" in types and not any(t.endswith("json") for t in types)


JSON_FORMATS = ("json", "html")
GEOJSON_FORMATS = ("json", "geojson", "html")


async def json_or_html(
    request: Request,
    f: Annotated[
        str | None,
        Query(
            description="json (the default) or html (a page for browsers; also chosen by an "
            "Accept header naming text/html and no JSON type).",
            json_schema_extra={"enum": list(JSON_FORMATS)},
        ),
    ] = None,
) -> bool:
    """Whether to answer the HTML page rather than the JSON document."""
    return wants_html(f, request.headers.get("accept"), JSON_FORMATS)


async def geojson_or_html(
    request: Request,
    f: Annotated[
        str | None,
        Query(
            description="json or geojson (GeoJSON, the default) or html (a page for browsers; "
            "also chosen by an Accept header naming text/html and no JSON type).",
            json_schema_extra={"enum": list(GEOJSON_FORMATS)},
        ),
    ] = None,
) -> bool:
    """Whether to answer the HTML page rather than GeoJSON."""
    return wants_html(f, request.headers.get("accept"), GEOJSON_FORMATS)


async def as_of(
    asof: Annotated[
        str | None,
        Query(
            description="Answer with what the twin recorded at this instant (ISO 8601 with "
            "its UTC offset), e.g. the network before a crew's change; `datetime` is the "
            "assets' own life.",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
) -> str | None:
    """The `asof` instant as the store writes times (UTC, milliseconds), or None."""
    if asof is None:
        return None
    try:
        return utc_stamp(parse_utc(asof))
    except ValueError as exc:
        raise InvalidParameter(f"asof {exc}") from None


OutputCrs = Annotated[CrsRef, Depends(output_crs)]
AsOf = Annotated[str | None, Depends(as_of)]


async def catalog_at(request: Request, catalog: CatalogDep, asof: AsOf) -> Catalog:
    """The catalog the request reads: the live one, or with `asof` (an instant already past)
    the store as recorded then (kept for the next requests at the same instant)."""
    if asof is None or asof >= utc_stamp(dt.datetime.now(dt.UTC)):
        return catalog
    snapshots = request.app.state.snapshots
    made: Catalog = await run_in_threadpool(snapshots.at, asof)
    return made


CatalogAt = Annotated[Catalog, Depends(catalog_at)]
BBox = Annotated[Bounds | None, Depends(bbox_filter)]
Limit = Annotated[int, Depends(page_limit)]
Offset = Annotated[int, Depends(page_offset)]
Datetime = Annotated[Interval | None, Depends(datetime_filter)]
CqlFilter = Annotated[Filter | None, Depends(cql2_filter)]
HtmlOrJson = Annotated[bool, Depends(json_or_html)]
"""Whether to answer HTML (`f=html` or a browser's Accept) rather than JSON."""
HtmlOrGeoJson = Annotated[bool, Depends(geojson_or_html)]
"""Whether to answer HTML rather than GeoJSON."""


async def collections_list(
    collections: Annotated[
        str | None,
        Query(
            description="Comma-separated collection ids (default: all you may see).",
            json_schema_extra=NAMES_VALUE,
        ),
    ] = None,
) -> list[str] | None:
    """Collection ids named by the request, or None for all."""
    if collections is None:
        return None
    names = [c.strip() for c in collections.split(",") if c.strip()]
    if not names:
        raise InvalidParameter("collections is empty: name one or more collection ids")
    return list(dict.fromkeys(names))


Collections = Annotated[list[str] | None, Depends(collections_list)]
