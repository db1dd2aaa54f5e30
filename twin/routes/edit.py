"""Edits of features (OGC API Features Part 4): create, replace, update and delete, each
answered with the feature's new ETag; `If-Match` makes a change conditional (a stale ETag
gets 412 and nothing changes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from layers.catalog import Catalog, Lens, hidden_fields, sift
from layers.errors import PreconditionFailed, UnknownFeature
from layers.layer import Head, Layer
from layers.models import Access
from twin import edits
from twin.access import CallerDep, Scope
from twin.dependencies import CatalogDep, CollectionId, FeatureId, SettingsDep, read_json
from twin.errors import Forbidden, InvalidParameter
from twin.geojson import features_json
from twin.routes.links import GEOJSON
from twin.routes.responses import responses
from twin.routes.schemas import FEATURE

router = APIRouter(tags=["Edits"])

RETRIES = 3
"""How often an unconditional PATCH is tried again when another change lands in between."""
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="Change only if the feature still has this ETag (412 otherwise).",
    ),
]
FEATURE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/geo+json": {"schema": FEATURE},
            "application/json": {"schema": FEATURE},
        },
    }
}
PATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


async def json_body(request: Request, settings: SettingsDep) -> Any:
    """The request's JSON body (up to `TWIN_MAX_FEATURE_BYTES`)."""
    return await read_json(request, settings.max_feature_bytes, "a GeoJSON Feature")


Body = Annotated[Any, Depends(json_body)]


def _stored(catalog: Catalog, name: str, fid: str) -> Layer:
    """The feature as stored now (404 when there is none)."""
    found = catalog.store.features(name, [fid], Access.RESTRICTED)
    if not len(found):
        raise UnknownFeature(name, fid)
    return found


def _text(feature: Layer) -> str:
    (text,) = features_json(feature, np.array([0]), feature.geometry)
    return text


def _answer(
    request: Request, catalog: Catalog, scope: Lens, name: str, fid: str, status: int
) -> Response:
    """The feature as stored now, as the caller may see it, with its ETag (the change already
    applied here: this worker serves it from now on)."""
    request.app.state.follower.step()
    stored, _ = sift(scope, _stored(catalog, name, fid))
    headers = {"ETag": stored.etag(0)}
    if status == 201:
        headers["Location"] = str(request.url_for("get_item", collectionId=name, featureId=fid))
    return Response(_text(stored), status_code=status, media_type=GEOJSON, headers=headers)


def _write(
    catalog: Catalog, scope: Lens, user: str, feature: Layer, expect: dict[str, str | None]
) -> None:
    """Store an edited feature, if the caller may see it as edited (an engineer may not move
    a feature out of its area, or make it one of those it may not see)."""
    if not sift(scope, feature)[1].all():
        raise Forbidden("the feature as edited would be outside what this key may change")
    catalog.store.write(feature, source=edits.SOURCE_API, user=user, expect=expect)


def _writable(catalog: Catalog, scope: Lens, name: str, body: Any) -> Head:
    """The layer an edit is checked against: its whole schema (hidden fields are kept as they
    are), after checking the body names no field hidden from the caller (answered as if the
    field did not exist)."""
    full = catalog.head(name, Access.RESTRICTED)
    hidden = hidden_fields(scope, full.schema)
    props = body.get("properties") if isinstance(body, dict) else None
    if hidden and isinstance(props, dict):
        for key in props:
            if key in hidden:
                raise InvalidParameter(f"{name} has no field {key!r}")
    return full


def _shown(catalog: Catalog, scope: Lens, name: str, fid: str) -> None:
    """404 unless the caller may see feature `fid` (a hidden one answers as a missing one)."""
    if fid not in catalog.picked(name, scope, [fid]).row_of:
        raise UnknownFeature(name, fid)


def _conditionally(
    catalog: Catalog,
    name: str,
    fid: str,
    if_match: str | None,
    change: Callable[[Layer, dict[str, str | None]], None],
) -> None:
    """`change(stored, expect)` of the feature as stored, landing only while it is in the
    state `If-Match` names (412 otherwise) or, without one, in the state it was read in (read
    and tried again when another change landed in between)."""
    for attempt in range(RETRIES):
        stored = _stored(catalog, name, fid)
        try:
            change(stored, {fid: if_match or stored.etag(0)})
            return
        except PreconditionFailed:
            if if_match is not None or attempt == RETRIES - 1:
                raise


@router.post(
    "/collections/{collectionId}/items",
    summary="Create a feature",
    status_code=201,
    response_class=Response,
    responses=responses(404, 412, 413, what="The feature created", media=GEOJSON, schema=FEATURE),
    openapi_extra=FEATURE_BODY,
)
async def create_item(
    request: Request,
    collectionId: CollectionId,
    catalog: CatalogDep,
    scope: Scope,
    who: CallerDep,
    settings: SettingsDep,
    body: Body,
) -> Response:
    """A new feature from a GeoJSON Feature checked against the layer's schema; its `id` is
    the body's or a new one (412 if that id is taken). Answered 201 with `Location` and
    `ETag`. Needs an engineer or admin key (and the feature in its area)."""
    catalog.head(collectionId, scope)
    who.may_write()
    layer = _writable(catalog, scope, collectionId, body)
    feature = await run_in_threadpool(
        partial(edits.feature_of, max_vertices=settings.max_feature_vertices), layer, body, None
    )
    fid = str(feature.ids[0])
    await run_in_threadpool(_write, catalog, scope, who.name, feature, {fid: None})
    return await run_in_threadpool(_answer, request, catalog, scope, collectionId, fid, 201)


@dataclass(frozen=True)
class ItemEdit:
    """A replace or update of one feature: where, what, and on what condition."""

    request: Request
    name: str
    fid: str
    catalog: Catalog
    scope: Lens
    user: str
    layer: Head
    max_vertices: int
    body: Any
    if_match: str | None


async def item_edit(
    request: Request,
    collectionId: CollectionId,
    featureId: FeatureId,
    catalog: CatalogDep,
    scope: Scope,
    who: CallerDep,
    settings: SettingsDep,
    body: Body,
    if_match: IfMatch = None,
) -> ItemEdit:
    """The edit a PUT or PATCH asks for (404 for a collection or feature the caller may not
    see; 403 for a caller that may not change data)."""
    _shown(catalog, scope, collectionId, featureId)
    who.may_write()
    layer = _writable(catalog, scope, collectionId, body)
    return ItemEdit(
        request,
        collectionId,
        featureId,
        catalog,
        scope,
        who.name,
        layer,
        settings.max_feature_vertices,
        body,
        if_match,
    )


Edit = Annotated[ItemEdit, Depends(item_edit)]


def _item_route(method: str, summary: str, what: str, body: dict[str, Any]) -> Any:
    return getattr(router, method)(
        "/collections/{collectionId}/items/{featureId}",
        summary=summary,
        response_class=Response,
        responses=responses(404, 412, 413, what=what, media=GEOJSON, schema=FEATURE),
        openapi_extra=body,
    )


@_item_route("put", "Replace a feature", "The feature as replaced", FEATURE_BODY)
async def replace_item(edit: Edit) -> Response:
    """The feature replaced whole (geometry and properties) by a GeoJSON Feature (the fields
    hidden from the caller kept as they are)."""
    hidden = hidden_fields(edit.scope, edit.layer.schema)

    def replace(stored: Layer, expect: dict[str, str | None]) -> None:
        body = edit.body
        if hidden and isinstance(body, dict):
            kept = json.loads(_text(stored))["properties"]
            props = dict(body.get("properties") or {})
            props.update({k: kept.get(k) for k in hidden})
            body = {**body, "properties": props}
        feature = edits.feature_of(edit.layer, body, edit.fid, max_vertices=edit.max_vertices)
        _write(edit.catalog, edit.scope, edit.user, feature, expect)

    if not hidden:  # checked before the store is read
        await run_in_threadpool(
            partial(edits.feature_of, max_vertices=edit.max_vertices),
            edit.layer,
            edit.body,
            edit.fid,
        )
    await run_in_threadpool(
        _conditionally, edit.catalog, edit.name, edit.fid, edit.if_match, replace
    )
    return await run_in_threadpool(
        _answer, edit.request, edit.catalog, edit.scope, edit.name, edit.fid, 200
    )


@_item_route("patch", "Update a feature", "The feature as updated", PATCH_BODY)
async def update_item(edit: Edit) -> Response:
    """The properties (and geometry) a JSON merge patch names changed, the rest kept: e.g.
    `{"properties": {"status": "closed"}}`."""

    def patch(stored: Layer, expect: dict[str, str | None]) -> None:
        current = json.loads(_text(stored))
        source = str(current["properties"].get("source") or edits.SOURCE_API)
        doc = edits.merged(current, edit.body)
        feature = edits.feature_of(
            edit.layer, doc, edit.fid, max_vertices=edit.max_vertices, source=source
        )
        _write(edit.catalog, edit.scope, edit.user, feature, expect)

    await run_in_threadpool(_conditionally, edit.catalog, edit.name, edit.fid, edit.if_match, patch)
    return await run_in_threadpool(
        _answer, edit.request, edit.catalog, edit.scope, edit.name, edit.fid, 200
    )


@router.delete(
    "/collections/{collectionId}/items/{featureId}",
    summary="Delete a feature",
    status_code=204,
    response_class=Response,
    responses={**responses(404, 412), 204: {"description": "Deleted"}},
)
async def delete_item(
    request: Request,
    collectionId: CollectionId,
    featureId: FeatureId,
    catalog: CatalogDep,
    scope: Scope,
    who: CallerDep,
    if_match: IfMatch = None,
) -> Response:
    """The feature removed (its history stays: `.../history`). Needs an engineer or admin
    key (and the feature in its area)."""
    _shown(catalog, scope, collectionId, featureId)
    who.may_write()

    def delete(_: Layer, expect: dict[str, str | None]) -> None:
        catalog.store.delete_features(
            collectionId, [featureId], user=who.name, source="api", expect=expect
        )

    await run_in_threadpool(_conditionally, catalog, collectionId, featureId, if_match, delete)
    await run_in_threadpool(request.app.state.follower.step)
    return Response(status_code=204)
