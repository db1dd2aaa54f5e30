"""The live twin: readings (`POST /twin/observations`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from twin import observations
from twin.access import Scope
from twin.dependencies import CatalogDep, SettingsDep, read_body
from twin.errors import InvalidParameter
from twin.routes.responses import responses

router = APIRouter(tags=["Live twin"])

READING_BYTES = 1024
"""Body bytes allowed per reading of a batch."""

READING = {
    "type": "object",
    "required": list(observations.KEYS),
    "additionalProperties": False,
    "properties": {
        "collection": {"type": "string", "description": "Collection id, e.g. lights."},
        "id": {"type": "string", "description": "Feature id."},
        "time": {
            "type": "string",
            "format": "date-time",
            "description": "When it was observed (ISO 8601 with its UTC offset).",
        },
        "property": {"type": "string", "description": "A property of the layer, e.g. status."},
        "value": {
            "description": "Of the property's type (null: unknown).",
            "anyOf": [
                {"type": "string"},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
            ],
        },
    },
}
ANSWER = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer"},
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"index": {"type": "integer"}, "reason": {"type": "string"}},
            },
        },
        "changed": {"type": "integer"},
        "revision": {"type": "integer"},
    },
}


async def readings_body(request: Request, settings: SettingsDep) -> list[Any]:
    """The batch: read up to its size limit, parsed, at most `max_readings` readings."""
    raw = await read_body(request, settings.max_readings * READING_BYTES)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidParameter("the body is not JSON: send an array of readings") from None
    return observations.readings_of(body, settings.max_readings)


@router.post(
    "/twin/observations",
    summary="Readings: live state and its history",
    responses=responses(
        413, what="How many readings landed, and why the others did not", schema=ANSWER
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"type": "array", "items": READING},
                            {
                                "type": "object",
                                "required": ["observations"],
                                "additionalProperties": False,
                                "properties": {"observations": {"type": "array", "items": READING}},
                            },
                        ]
                    }
                }
            },
        }
    },
)
async def post_observations(
    request: Request,
    catalog: CatalogDep,
    scope: Scope,
    items: Annotated[list[Any], Depends(readings_body)],
) -> JSONResponse:
    """A batch of readings `{collection, id, time, property, value}` (a lamp's `status`, a
    pipe's `pressure_kpa`): each is checked against the layer and its schema and lands whole
    or is listed in `rejected` with its index and reason. Every reading is kept as history;
    the newest of each feature's property, by `time` (not by arrival), becomes the feature's
    state, so a late reading never undoes a newer one. Every server process serves the new
    state within a second."""
    now = dt.datetime.now(dt.UTC)
    batch = observations.check(catalog, scope, items, now)
    store = catalog.store
    changed = await run_in_threadpool(store.observe, batch.accepted, user="api")
    request.app.state.follower.wake()
    return JSONResponse(
        {
            "accepted": len(batch.accepted),
            "rejected": batch.rejected,
            "changed": changed,
            "revision": store.revision(),
        }
    )
