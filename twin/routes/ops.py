"""Operations: health and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from twin.access import Scope
from twin.dependencies import CatalogDep
from twin.metrics import CONTENT_TYPE
from twin.routes.responses import responses

router = APIRouter(tags=["Operations"])


# Answered whatever the load (`twin.guard`): never 503, never past a time budget.
@router.get("/healthz", summary="Health", responses=responses(guarded=False))
async def healthz(catalog: CatalogDep, scope: Scope) -> dict:
    """`ok` once the catalog is loaded, with the number of collections the caller may see
    (answered on the event loop, never queued behind the thread pool's work)."""
    return {"status": "ok", "collections": len(catalog.names(scope))}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=responses(what="Prometheus text", media=CONTENT_TYPE, guarded=False),
)
def metrics(request: Request) -> Response:
    """Request counts, latency and tile cache hits in Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
