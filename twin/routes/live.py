"""The live twin: readings (`POST /twin/observations`) and the changes as Server-Sent Events
(`GET /events`)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from layers.errors import UnknownCollection
from layers.models import Access
from twin import observations
from twin.access import Scope
from twin.dependencies import BBox, CatalogDep, Collections, SettingsDep, read_body
from twin.errors import InvalidParameter, Overloaded
from twin.events import ChangeFeed, event_data, matches
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


def _feed(request: Request) -> ChangeFeed:
    feed: ChangeFeed = request.app.state.feed
    return feed


async def stream_start(
    request: Request,
    catalog: CatalogDep,
    scope: Scope,
    settings: SettingsDep,
    collections: Collections,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event (its `seq`): sent by a reconnecting client.",
            pattern="^[0-9]*$",
        ),
    ] = None,
    since: Annotated[
        int | None,
        Query(ge=0, description="Start after this change-log sequence number (default: now)."),
    ] = None,
) -> int:
    """The sequence number a stream starts after; checks its collections and the stream cap."""
    for name in collections or ():
        if name not in catalog.names(scope):
            raise UnknownCollection(name)
    start = catalog.seq if since is None else since
    if last_event_id:  # an empty one is none (the SSE standard)
        if not last_event_id.strip().isdigit():
            raise InvalidParameter(f"Last-Event-ID {last_event_id!r} is not an event's seq")
        start = int(last_event_id)
    if _feed(request).streams >= settings.max_streams:
        raise Overloaded(
            f"this worker holds as many event streams as it may ({settings.max_streams}, "
            "TWIN_MAX_STREAMS)"
        )
    return start


@router.get(
    "/events",
    summary="Changes as Server-Sent Events",
    response_class=EventSourceResponse,
    responses=responses(
        400,
        404,
        503,
        what="An event stream, one `change` event per change",
        media="text/event-stream",
        guarded=False,
    ),
)
async def events(
    request: Request,
    catalog: CatalogDep,
    scope: Scope,
    collections: Collections,
    bbox: BBox,
    start: Annotated[int, Depends(stream_start)],
) -> AsyncIterable[ServerSentEvent]:
    """One `change` event per change this server applied (an import, a reading, an edit),
    with `collection`, `id`, `kind` (added, updated, removed; `layer`: the whole collection),
    the `properties` that changed and the `old_bbox` and `new_bbox`, so a map refreshes only
    what changed. Filtered by `collections` and `bbox`; the event id is the change log's
    sequence number, so a client reconnecting with `Last-Event-ID` (even after a restart)
    misses nothing."""
    feed = _feed(request)
    server = getattr(request.app.state, "server", None)  # the uvicorn server, when known
    wanted = matches(
        lambda name: name in catalog.names(scope) or scope is Access.RESTRICTED, collections, bbox
    )
    feed.streams += 1
    try:
        async for change in feed.changes(start, lambda: bool(server and server.should_exit)):
            if wanted(change):
                yield ServerSentEvent(data=event_data(change), event="change", id=str(change.seq))
    finally:
        feed.streams -= 1
