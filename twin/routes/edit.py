"""Edits of features (OGC API Features Part 4): create, replace, update and delete, each
answered with the feature's new ETag; `If-Match` makes a change conditional (a stale ETag
gets 412 and nothing changes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from layers.catalog import Catalog
from layers.errors import PreconditionFailed, UnknownFeature
from layers.layer import UPDATED, VERSION, Layer
from layers.models import Access, feature_etag, utc_stamp
from twin import edits
from twin.access import Scope
from twin.dependencies import CatalogDep, CollectionId, FeatureId, SettingsDep, read_body
from twin.errors import InvalidParameter
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
    raw = await read_body(request, settings.max_feature_bytes)
    try:
        # Off the event loop: megabytes of JSON take it for a tenth of a second.
        return await run_in_threadpool(json.loads, raw)
    except (ValueError, RecursionError):
        raise InvalidParameter("the body is not JSON: send a GeoJSON Feature") from None


Body = Annotated[Any, Depends(json_body)]


def _etag(layer: Layer, row: int) -> str:
    updated = layer.attrs[UPDATED].iloc[row]
    return feature_etag(int(layer.attrs[VERSION].iloc[row]), utc_stamp(updated))


def _stored(catalog: Any, name: str, fid: str) -> Layer:
    found = catalog.store.features(name, [fid], Access.RESTRICTED)
    if not len(found):
        raise UnknownFeature(name, fid)
    return found


def _answer(request: Request, catalog: Any, name: str, fid: str, status: int) -> Response:
    """The feature as stored now, with its ETag (the change already applied here: this
    worker serves it from now on)."""
    request.app.state.follower.step()
    layer = _stored(catalog, name, fid)
    (text,) = features_json(layer, np.array([0]), layer.geometry[[0]])
    headers = {"ETag": _etag(layer, 0)}
    if status == 201:
        headers["Location"] = str(request.url_for("get_item", collectionId=name, featureId=fid))
    return Response(text, status_code=status, media_type=GEOJSON, headers=headers)


def _write(catalog: Any, feature: Layer, expect: dict[str, str | None], user: str) -> None:
    catalog.store.write(feature, source=edits.SOURCE_API, user=user, expect=expect)


def _current(catalog: Any, name: str, fid: str) -> tuple[dict[str, Any], str]:
    layer = _stored(catalog, name, fid)
    (text,) = features_json(layer, np.array([0]), layer.geometry[[0]])
    return json.loads(text), _etag(layer, 0)


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
    settings: SettingsDep,
    body: Body,
) -> Response:
    """A new feature from a GeoJSON Feature checked against the layer's schema; its `id` is
    the body's or a new one (412 if that id is taken). Answered 201 with `Location` and
    `ETag`."""
    layer = catalog.layer(collectionId, scope)
    feature = await run_in_threadpool(
        partial(edits.feature_of, max_vertices=settings.max_feature_vertices), layer, body, None
    )
    fid = str(feature.ids[0])
    await run_in_threadpool(_write, catalog, feature, {fid: None}, "api")
    return await run_in_threadpool(_answer, request, catalog, collectionId, fid, 201)


@dataclass(frozen=True)
class ItemEdit:
    """A replace or update of one feature: where, what, and on what condition."""

    request: Request
    name: str
    fid: str
    catalog: Catalog
    layer: Layer
    max_vertices: int
    body: Any
    if_match: str | None


async def item_edit(
    request: Request,
    collectionId: CollectionId,
    featureId: FeatureId,
    catalog: CatalogDep,
    scope: Scope,
    settings: SettingsDep,
    body: Body,
    if_match: IfMatch = None,
) -> ItemEdit:
    """The edit a PUT or PATCH asks for (404 for a collection the caller may not see)."""
    layer = catalog.layer(collectionId, scope)
    return ItemEdit(
        request,
        collectionId,
        featureId,
        catalog,
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
    """The feature replaced whole (geometry and properties) by a GeoJSON Feature."""
    feature = await run_in_threadpool(
        partial(edits.feature_of, max_vertices=edit.max_vertices), edit.layer, edit.body, edit.fid
    )
    _, etag = await run_in_threadpool(_current, edit.catalog, edit.name, edit.fid)
    expect: dict[str, str | None] = {edit.fid: edit.if_match or etag}
    await run_in_threadpool(_write, edit.catalog, feature, expect, "api")
    return await run_in_threadpool(_answer, edit.request, edit.catalog, edit.name, edit.fid, 200)


@_item_route("patch", "Update a feature", "The feature as updated", PATCH_BODY)
async def update_item(edit: Edit) -> Response:
    """The properties (and geometry) a JSON merge patch names changed, the rest kept: e.g.
    `{"properties": {"status": "closed"}}`."""

    def patch() -> None:
        for attempt in range(RETRIES):
            current, etag = _current(edit.catalog, edit.name, edit.fid)
            if edit.if_match is not None and edit.if_match != etag:
                raise PreconditionFailed(
                    f"feature {edit.fid!r} of {edit.name} is not in the state {edit.if_match} "
                    f"any more (it is now {etag}): fetch it again and retry"
                )
            doc = edits.merged(current, edit.body)
            source = str(current["properties"].get("source") or edits.SOURCE_API)
            feature = edits.feature_of(
                edit.layer, doc, edit.fid, max_vertices=edit.max_vertices, source=source
            )
            try:
                _write(edit.catalog, feature, {edit.fid: etag}, "api")
                return
            except PreconditionFailed:
                if edit.if_match is not None or attempt == RETRIES - 1:
                    raise

    await run_in_threadpool(patch)
    return await run_in_threadpool(_answer, edit.request, edit.catalog, edit.name, edit.fid, 200)


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
    if_match: IfMatch = None,
) -> Response:
    """The feature removed (its history stays: `.../history`)."""
    catalog.layer(collectionId, scope)

    def delete() -> None:
        _, etag = _current(catalog, collectionId, featureId)
        catalog.store.delete_features(
            collectionId,
            [featureId],
            user="api",
            source="api",
            expect={featureId: if_match or etag},
        )

    await run_in_threadpool(delete)
    await run_in_threadpool(request.app.state.follower.step)
    return Response(status_code=204)
