"""Administration over HTTP, for admin keys only: keys, the policy in force, the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from layers.keys import KeyRefused, Ring
from layers.policy import area_geometry
from twin.access import Admin, Auditor, PolicyFile
from twin.errors import InvalidParameter
from twin.routes.responses import responses

router = APIRouter(tags=["Administration"], prefix="/admin")


class NewKey(BaseModel):
    """A key to make."""

    name: str = Field(description="The key's name (who holds it), unique.")
    role: str = Field(description="viewer, engineer or admin.")
    department: str | None = None
    cells: list[str] = Field(default_factory=list, description="Grid cell codes it is limited to.")
    area: dict[str, Any] | None = Field(
        default=None, description="GeoJSON Polygon or MultiPolygon (lon/lat) it is limited to."
    )
    expires: str | None = Field(default=None, description="Last day (YYYY-MM-DD) or a time.")


def _ring(request: Request) -> Ring:
    ring: Ring | None = request.app.state.keys
    if ring is None:
        raise InvalidParameter("this server keeps no keys (its store is not a directory)")
    return ring


@router.get("/keys", summary="The API keys", responses=responses(403))
def list_keys(request: Request, who: Admin) -> JSONResponse:
    """Every key (never its secret): name, role, department, limits, expiry, revoked."""
    keys = _ring(request).keys()
    return JSONResponse({"keys": [k.as_json() for k in keys]})


@router.post("/keys", summary="Make an API key", status_code=201, responses=responses(403))
def add_key(request: Request, who: Admin, body: NewKey) -> JSONResponse:
    """A new key; its secret is in this answer only (`key`)."""
    try:
        area = None if body.area is None else area_geometry(body.area)
    except ValueError as exc:
        raise InvalidParameter(f"area: {exc}") from None
    try:
        key, secret = _ring(request).add(
            body.name,
            body.role,
            department=body.department,
            cells=body.cells,
            area=None if area is None else body.area,
            expires=body.expires,
        )
    except KeyRefused as exc:
        raise InvalidParameter(str(exc)) from None
    return JSONResponse({**key.as_json(), "key": secret}, status_code=201)


@router.delete(
    "/keys/{name}",
    summary="Revoke an API key",
    status_code=204,
    response_class=Response,
    responses={**responses(403, 404), 204: {"description": "Revoked"}},
)
def revoke_key(request: Request, who: Admin, name: str) -> Response:
    """Revoke a key: refused from the next request on, by every server process."""
    if not _ring(request).revoke(name):
        return JSONResponse(
            {"code": "NotFound", "description": f"no active key named {name!r}"}, 404
        )
    return Response(status_code=204)


@router.get("/audit", summary="The audit log", responses=responses(403))
def audit(
    request: Request,
    who: Admin,
    caller: Annotated[str | None, Query(description="Only this key's entries.")] = None,
    action: Annotated[
        str | None, Query(pattern="^(read|write)$", description="read or write.")
    ] = None,
    collection: Annotated[str | None, Query(description="Only entries naming it.")] = None,
    after: Annotated[int, Query(ge=0, description="Entries after this `seq`.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> JSONResponse:
    """Who read restricted data and who changed what: one entry per request, oldest first
    (`after` the last `seq` seen to page on)."""
    auditor: Auditor | None = request.app.state.auditor
    if auditor is not None:
        auditor.flush()
    entries = _ring(request).audit(
        who=caller, action=action, collection=collection, after=after, limit=limit
    )
    return JSONResponse({"entries": entries, "numberReturned": len(entries)})


@router.get("/policy", summary="The policy in force", responses=responses(403))
def policy(request: Request, who: Admin) -> JSONResponse:
    """The policy file in force: where it is, its generation, and the error of the last
    reload, if it was refused."""
    held: PolicyFile = request.app.state.policy
    current = held.current()
    return JSONResponse(
        {
            "path": None if held.path is None else str(held.path),
            "generation": current.generation,
            "layers": sorted(current.layers),
            "areas": [a.name for a in current.areas],
            "error": held.error,
        }
    )


@router.post("/policy/reload", summary="Reload the policy file", responses=responses(400, 403))
def reload_policy(request: Request, who: Admin) -> JSONResponse:
    """Read the policy file again now (servers also notice a change by themselves within
    `TWIN_POLICY_CHECK_S`); a bad file is refused with the line at fault, the policy before it
    stays."""
    held: PolicyFile = request.app.state.policy
    if not held.reload():
        raise InvalidParameter(held.error or "the policy file was refused")
    return JSONResponse({"generation": held.policy.generation})
