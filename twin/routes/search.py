"""`GET /search`: features whose id, name or text attributes match a query, across layers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from twin import search
from twin.access import Scope
from twin.dependencies import AT_LEAST_ONE, CatalogAt, Collections
from twin.errors import InvalidParameter
from twin.routes.responses import responses

router = APIRouter(tags=["Search"])

DEFAULT_HITS = 10
MAX_HITS = 100
"""`limit` of `/search`: default and most (larger ones are clamped, as items' are)."""


@router.get(
    "/search",
    summary="Find features by id, name, street or address-like text",
    responses=responses(404, what="The hits, best first, as GeoJSON Features without geometry"),
)
def get_search(
    catalog: CatalogAt,
    scope: Scope,
    collections: Collections,
    q: Annotated[
        str,
        Query(
            description="What to look for: an id (`W0000001`), a name or street (`丰收路`), "
            "the start of one (prefix), or several words that must all start a word of the "
            f"feature's texts. 1 to {search.MAX_QUERY_CHARS} characters, case and full-width "
            "forms ignored.",
            json_schema_extra={
                "minLength": 1,
                "maxLength": search.MAX_QUERY_CHARS,
                "pattern": r"\S",
            },
        ),
    ],
    limit: Annotated[
        int,
        Query(
            description=f"Most hits (default {DEFAULT_HITS}; more than {MAX_HITS} is clamped).",
            json_schema_extra=AT_LEAST_ONE,
        ),
    ] = DEFAULT_HITS,
) -> JSONResponse:
    """Features of every layer the caller may see (or of `collections`) whose id, name, code
    or other naming text starts with `q`, or has a word starting with it (Chinese names: any
    part of them), best first: exact before prefix, whole names before words, shorter first.
    The segments of one street are one hit (`properties.features` counts them). Each hit
    carries `collection`, `id`, `label` and `bbox` (lon/lat), for a map to zoom to."""
    if limit < 1:
        raise InvalidParameter(f"limit must be at least 1 (got {limit})")
    hits = search.search_catalog(catalog, scope, q, min(limit, MAX_HITS), collections)
    return JSONResponse(
        {
            "type": "FeatureCollection",
            "q": q,
            "features": [h.to_json() for h in hits],
            "numberReturned": len(hits),
        }
    )
