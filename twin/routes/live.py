"""The live twin: readings (`POST /twin/observations`) and the changes as Server-Sent Events
(`GET /events`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from layers.catalog import AppliedRun, Catalog, Lens, hidden_fields, sift
from layers.errors import UnknownCollection, UnknownFeature
from layers.layer import UPDATED, VERSION, Layer
from layers.models import Access, Change, ChangeKind, StateRun, utc_stamp
from twin import observations
from twin.access import Scope, Writer
from twin.dependencies import (
    BBox,
    CatalogDep,
    CollectionId,
    Collections,
    Datetime,
    FeatureId,
    HeldCatalogDep,
    Limit,
    Offset,
    SettingsDep,
    parse_json,
    read_body,
)
from twin.errors import InvalidParameter, Overloaded
from twin.events import ChangeFeed, event_data, matches, run_events, run_matches
from twin.geojson import features_json
from twin.routes.links import JSON, link, request_url
from twin.routes.responses import responses

router = APIRouter(tags=["Live twin"])

PEER_WAIT_S = 5.0
"""How long a batch of readings waits for the workers to catch up (see `_caught_up`)."""
READING_BYTES = 300
"""Body bytes allowed per reading of a batch (a reading is ~130 bytes of JSON)."""

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


async def readings_body(request: Request, settings: SettingsDep) -> bytes:
    """The batch as sent, read up to its size limit (parsed where it is checked, off the event
    loop: `readings`)."""
    return await read_body(request, settings.max_readings * READING_BYTES)


def readings(body: bytes, max_readings: int) -> list[Any]:
    """The readings of a batch: its body parsed, at most `max_readings` of them."""
    return observations.readings_of(parse_json(body, "an array of readings"), max_readings)


@router.post(
    "/twin/observations",
    summary="Readings: live state and its history",
    responses=responses(
        413, 503, what="How many readings landed, and why the others did not", schema=ANSWER
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
    catalog: HeldCatalogDep,
    scope: Scope,
    who: Writer,
    settings: SettingsDep,
    body: Annotated[bytes, Depends(readings_body)],
) -> JSONResponse:
    """A batch of readings `{collection, id, time, property, value}` (a lamp's `status`, a
    pipe's `pressure_kpa`): each is checked against the layer and its schema and lands whole
    or is listed in `rejected` with its index and reason. Every reading is kept as history;
    the newest of each feature's property, by `time` (not by arrival), becomes the feature's
    state, so a late reading never undoes a newer one. Every server process serves the new
    state within a second. Needs an engineer or admin key; a reading of a feature outside
    what the key may see is rejected as an unknown feature."""

    follower = request.app.state.follower
    timing: dict[str, float] = {}

    def land() -> tuple[dict[str, Any], list[StateRun]]:
        began = time.perf_counter()
        items = readings(body, settings.max_readings)  # parsed here: one trip off the loop
        batch = observations.check(catalog, scope, items, dt.datetime.now(dt.UTC))
        checked = time.perf_counter()
        done = catalog.store.observe(batch.accepted, user=who.name)
        timing.update(check=checked - began, write=time.perf_counter() - checked)
        if done.runs and follower.running:
            follower.heard(done.revision)
            _feed(request).written(done.runs)  # told now; applied at the follower's step
        answer = {
            "accepted": len(batch.accepted),
            "rejected": batch.rejected,
            "changed": done.changed,
            "revision": done.revision,
        }
        return answer, done.runs

    began = time.perf_counter()
    await _caught_up(request, catalog, settings.max_lag)
    timing["wait"] = time.perf_counter() - began
    answer, runs = await run_in_threadpool(land)
    if answer["changed"]:
        follower.wake()
        peers = request.app.state.tiles.peers
        if peers is not None:
            if runs:
                peers.written(runs)
            else:
                peers.news()
    # Where a batch's time went (ms): waiting for the workers, checking, writing.
    server_timing = ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in timing.items())
    return JSONResponse(answer, headers={"Server-Timing": server_timing})


async def _caught_up(request: Request, catalog: Catalog, lag: int) -> None:
    """Wait until this worker, and the other workers as far as they said (`TilePeers.seqs`),
    serve the store but for at most `lag` entries: readings are taken no faster than every
    worker applies them. After `PEER_WAIT_S` the batch is refused (503 with Retry-After)."""
    follower = request.app.state.follower
    if not follower.running:
        return  # a snapshot server (TWIN_FOLLOW_INTERVAL_S=0) applies nothing
    peers = request.app.state.tiles.peers
    give_up = time.monotonic() + PEER_WAIT_S
    while True:
        served = catalog.seq
        if peers is not None and peers.seqs:
            served = min(served, *peers.seqs.values())
        # The newest entry heard of (this worker's batches, the others'), not asked of the
        # store: no trip off the event loop per batch.
        behind = max(follower.newest, catalog.seq) - served
        if behind <= lag:
            return
        if time.monotonic() > give_up:
            raise Overloaded(
                f"the server's workers are {behind} changes behind the store "
                f"(TWIN_MAX_LAG {lag}): send this batch again in a moment"
            )
        follower.hurry()
        await asyncio.sleep(0.01)


def _feed(request: Request) -> ChangeFeed:
    feed: ChangeFeed = request.app.state.feed
    return feed


async def stream_start(
    request: Request,
    catalog: HeldCatalogDep,
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
    start = max(catalog.seq, _feed(request).released) if since is None else since
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
    catalog: HeldCatalogDep,
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
    feed.streams += 1
    try:
        async for changes in feed.changes(start, lambda: bool(server and server.should_exit)):
            # Every collection for the restricted scope: a dropped one's change too.
            everything = scope is Access.RESTRICTED or getattr(scope, "everything", False)
            visible = None if everything else set(catalog.names(scope))
            wanted = matches(visible, collections, bbox)
            wanted_in = run_matches(visible, collections, bbox)
            for part in changes:
                if isinstance(part, AppliedRun):
                    rows = wanted_in(part)
                    shown = _shown(catalog, scope, part.run.collection)
                    if shown is not None:
                        rows = rows[shown.ids(part.run.ids, rows)]
                    for seq, data in run_events(part, rows):
                        if shown is not None and not shown.strip(data):
                            continue
                        yield _event(data, seq)
                elif wanted(part):
                    data = event_data(part)
                    shown = _shown(catalog, scope, part.collection)
                    if shown is not None and (
                        part.id is None
                        or not (
                            shown.ids([part.id], np.arange(1)).any()
                            or (
                                part.kind is ChangeKind.REMOVED
                                and await asyncio.to_thread(_was_shown, catalog, scope, part)
                            )
                        )
                        or not shown.strip(data)
                    ):
                        continue
                    yield _event(data, part.seq)
    finally:
        feed.streams -= 1


def _event(data: dict[str, Any], seq: int) -> ServerSentEvent:
    """A change as an event, its JSON made here (FastAPI's encoder for `data` costs 4x as
    much, tens of thousands a second under a stream of readings)."""
    return ServerSentEvent(raw_data=json.dumps(data), event="change", id=str(seq))


class _Shown:
    """What a caller whose view hides some rows or fields of a collection is shown of its
    changes: the features it sees now (a feature removed, or one it may not see, is not
    shown), and the properties it may see."""

    def __init__(self, layer: Layer | None, hidden: frozenset[str]) -> None:
        self.layer, self.hidden = layer, hidden

    def ids(self, ids: list[str], rows: np.ndarray) -> np.ndarray:
        """Mask over `rows` (indexes into `ids`) of the features shown."""
        if not len(rows) or self.layer is None:
            return np.zeros(len(rows), dtype=bool)
        got = self.layer.row_of.get_indexer([ids[k] for k in rows.tolist()])
        return np.asarray(got >= 0)

    def strip(self, data: dict[str, Any]) -> bool:
        """Take the hidden properties out of an event; False when none is left of a change
        that named some (a reading of a hidden property is no event for this caller)."""
        props = data.get("properties")
        if props is None or not self.hidden:
            return True
        kept = [p for p in props if p not in self.hidden]
        data["properties"] = kept
        return bool(kept) or not props


def _was_shown(catalog: Catalog, scope: Lens, change: Change) -> bool:
    """Whether the caller at `scope` could see a feature the change removed (as it was last
    stored), so that its map learns it is gone."""
    assert change.id is not None
    try:
        earlier, _ = catalog.store.versions(change.collection, change.id, Access.RESTRICTED)
    except UnknownCollection:
        return False
    if not len(earlier):
        return False
    return bool(sift(scope, earlier.take([len(earlier) - 1]))[1].all())


def _shown(catalog: Catalog, scope: Lens, collection: str) -> _Shown | None:
    """How a stream at `scope` filters the changes of `collection` (None: it sees them all)."""
    if isinstance(scope, Access) or not scope.limits(collection):
        return None
    try:
        layer = catalog.layer(collection, scope)
        full = catalog.layer(collection, Access.RESTRICTED)
    except UnknownCollection:
        return _Shown(None, frozenset())
    return _Shown(layer, scope.hidden(full.schema))


def _stamp(t: Any) -> str | None:
    """A pandas UTC timestamp as the store writes times (None stays None)."""
    return None if t is None else utc_stamp(t)


def _versions_json(layer: Layer, ended: list[tuple]) -> list[dict[str, Any]]:
    """Each row of `layer` as a version; `ended`: when, by whom and why each ended (the
    current version has none)."""
    rows = np.arange(len(layer))
    texts = features_json(layer, rows, layer.geometry) if len(rows) else []
    numbers = layer.attrs[VERSION].tolist()
    began = [_stamp(t) for t in layer.attrs[UPDATED]]
    out = []
    for text, number, start, (until, by, why) in zip(
        texts, numbers, began, ended or [(None, None, None)] * len(texts), strict=True
    ):
        doc = json.loads(text)
        out.append(
            {
                "version": number,
                "recorded_from": start,
                "recorded_to": until,
                "ended_by": by,
                "ended_why": why,
                "properties": doc["properties"],
                "geometry": doc["geometry"],
            }
        )
    return out


@router.get(
    "/collections/{collectionId}/items/{featureId}/history",
    summary="A feature's versions and readings",
    responses=responses(404),
)
def get_history(
    request: Request,
    collectionId: CollectionId,
    featureId: FeatureId,
    catalog: CatalogDep,
    scope: Scope,
    interval: Datetime,
    limit: Limit,
    offset: Offset,
) -> JSONResponse:
    """Every version of the feature the twin recorded (`recorded_from` / `recorded_to`, who
    and why ended it: an import, a reading, an edit, a deletion), the current one last, and
    its readings oldest first, paged (`limit`, `offset`); `datetime` keeps the versions
    recorded and the readings observed within that interval."""
    layer = catalog.layer(collectionId, scope)
    store = catalog.store
    everything = catalog.layer(collectionId, Access.RESTRICTED)
    if featureId in everything.row_of and featureId not in layer.row_of:
        raise UnknownFeature(collectionId, featureId)  # hidden from this caller: as if missing
    earlier, ended = store.versions(collectionId, featureId, Access.RESTRICTED)
    earlier, kept = sift(scope, earlier)
    versions = _versions_json(earlier, [e for e, k in zip(ended, kept, strict=True) if k])
    try:
        row = layer.row(featureId)
    except UnknownFeature:
        if not versions:
            raise
    else:
        versions += _versions_json(layer.take([row]), [])
    start, end = (
        (None, None) if interval is None else (_stamp(interval.start), _stamp(interval.end))
    )
    if start is not None or end is not None:
        versions = [
            v
            for v in versions
            if (end is None or v["recorded_from"] <= end)
            and (start is None or v["recorded_to"] is None or v["recorded_to"] > start)
        ]
    page, matched = store.readings(
        collectionId,
        featureId,
        start=start,
        end=end,
        limit=limit,
        offset=offset,
        hidden=sorted(hidden_fields(scope, everything.schema)),
    )
    links = [link(request_url(request), "self", JSON, "This page")]
    if offset + len(page) < matched:
        links.append(link(request_url(request, offset=offset + limit), "next", JSON, "Next"))
    return JSONResponse(
        {
            "collection": collectionId,
            "id": featureId,
            "versions": versions,
            "readings": [
                {"property": p, "time": t, "value": v, "received": rc, "by": u}
                for p, t, v, rc, u in page
            ],
            "numberMatched": matched,
            "numberReturned": len(page),
            "links": links,
        }
    )
