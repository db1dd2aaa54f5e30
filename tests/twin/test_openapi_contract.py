"""The OpenAPI document (`/api`) tells the truth: a short, deterministic schemathesis run over
every route and method of the document, against a live server over real Cambridge layers.

Every answer must be a declared status (never a 5xx), in a declared media type, with a body
that fits the declared schema; and a request the document allows must not be refused (a 4xx
other than 404 for an id that does not exist). Where a rule cannot be written in OpenAPI the
run says so explicitly, in two places:

- `GRAMMARS`: parameters whose values follow a grammar the document names but cannot check
  (CQL2, RFC 3339 intervals, a valid shape): generated requests the document allows get a
  value of that grammar, so the parameter is exercised on the way to a 200;
- `BEYOND_OPENAPI`: refusals of an allowed request that depend on the data, the settings or
  on two parameters together; each is matched by its error code and words, so any other
  refusal still fails the run.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import shapely
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from layers.models import Access
from tests.twin.query_fixtures import (
    cambridge_store_fixture,  # noqa: F401  (fixture)
    query_app,
)
from tests.twin.serve_fixtures import LiveServer
from tiles import grid

EXAMPLES = 30
"""Generated requests per operation and phase (the coverage phase adds its boundary values)."""
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240601,
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "no-shrink": True},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", "404"]}},
    }
)
DOCUMENT: dict[str, Any] = query_app(Path("never-opened")).openapi()
"""The document under test: building it does not open the store (the lifespan does)."""
# The event stream never ends by design (its statuses are tested in tests/twin/test_events.py),
# and feature edits would change the session's shared store under the other tests (tested in
# tests/twin/test_edits.py).
schema = (
    schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
    .exclude(path="/events")
    .exclude(tag="Edits")
)

BEYOND_OPENAPI: tuple[tuple[str, str, str], ...] = (
    ("LimitExceeded", "", "over a configured limit: settings, not schema bounds"),
    ("TimeLimitExceeded", "", "past the configured time budget"),
    ("InvalidParameter", r"^bbox .*(each minimum must not exceed|outside longitude)", "bbox order"),
    ("InvalidParameter", r"^bbox-crs is given without a bbox", "needs another parameter"),
    ("InvalidParameter", r"^give both lon and lat", "two parameters together"),
    ("InvalidParameter", r"^the break at .* m from pipe", "a break far from its pipe"),
    ("InvalidParameter", r"lies? outside the area where", "a CRS's area of use"),
    ("InvalidParameter", r"is a raster collection", "which collections are rasters"),
    ("InvalidParameter", r"^statistics are per grid cell", "which collections are grids"),
    ("InvalidParameter", r"^no sewer or storm pipe lies within", "no pipe near that point"),
    ("InvalidParameter", r"traces follow gravity networks|not part of the live network", "data"),
    ("GravityNetwork", r"flows by gravity: no valves isolate it", "a sewer or storm pipe"),
)
"""(code, description pattern, why): refusals of an allowed request that the document cannot
rule out, because they depend on the data, the settings or two parameters together."""

TEXT_FILTERS = ("id <> 'none'", "id LIKE '%1%' OR id IS NULL", "NOT (id IN ('a', 'b'))")
JSON_FILTERS = ('{"op": "<>", "args": [{"property": "id"}, "none"]}',)
DATETIMES = ("2024-01-01T00:00:00Z", "2020-01-01/..", "../2030-12-31", "2023-06-01/2024-06-01")
GEOMETRIES: tuple[dict[str, Any], ...] = (
    {"type": "Point", "coordinates": [-71.1056, 42.3736]},
    {"type": "LineString", "coordinates": [[-71.11, 42.37], [-71.10, 42.38]]},
    {
        "type": "Polygon",
        "coordinates": [[[-71.11, 42.37], [-71.10, 42.37], [-71.10, 42.38], [-71.11, 42.37]]],
    },
)


def _pick(options: tuple[Any, ...], generated: object) -> Any:
    """One of `options`, chosen by the generated value it replaces (so runs repeat)."""
    return options[zlib.crc32(repr(generated).encode()) % len(options)]


def _filter(query: dict[str, Any]) -> str:
    texts = JSON_FILTERS if query.get("filter-lang") == "cql2-json" else TEXT_FILTERS
    return _pick(texts, query["filter"])


GRAMMARS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "filter": _filter,
    "datetime": lambda query: _pick(DATETIMES, query["datetime"]),
}
"""Query parameters whose grammar the document names but cannot check, and a value of it."""


def _grammatical(case: Any) -> None:
    """Give an allowed request values of the grammars OpenAPI cannot check (`GRAMMARS`)."""
    for name, value in GRAMMARS.items():
        if case.query and name in case.query:
            case.query[name] = value(case.query)
    if isinstance(case.body, dict) and isinstance(case.body.get("geometry"), dict):
        case.body["geometry"] = _pick(GEOMETRIES, case.body["geometry"])


@dataclass(frozen=True)
class Holdings:
    """What the served store holds, for requests that name existing things."""

    features: dict[str, tuple[str, ...]]
    """Some feature ids of each vector collection."""
    rasters: tuple[str, ...]
    place: tuple[float, float]
    """A point (lon, lat) on a storm pipe, among the other layers."""


def _now_and_then(generated: object) -> bool:
    """True for three generated values of four (deterministically)."""
    return zlib.crc32(repr(generated).encode()) % 4 != 0


def _on_the_data(case: Any, held: Holdings) -> None:
    """Name existing collections, features, places and tiles in three requests of four (the
    generated ones stay in the fourth, for the 404s): otherwise the run would hardly see an
    answer other than 404 and an empty tile."""
    path, query = case.path_parameters or {}, case.query or {}
    vectors = tuple(held.features)
    if "collectionId" in path and _now_and_then(path["collectionId"]):
        names = held.rasters if "/map/" in case.operation.path else vectors
        path["collectionId"] = _pick(names, path["collectionId"])
    if "featureId" in path and _now_and_then(path["featureId"]):
        fids = held.features.get(path.get("collectionId", "pipes")) or ("none",)
        path["featureId"] = _pick(fids, path["featureId"])
    for key in ("collection", "collections"):
        if isinstance(query.get(key), str) and _now_and_then(query[key]):
            query[key] = _pick(vectors, query[key])
    if isinstance(query.get("id"), str) and _now_and_then(query["id"]):
        query["id"] = _pick(held.features.get(query.get("collection", ""), ("none",)), query["id"])
    if {"lon", "lat"} <= query.keys() and _now_and_then((query["lon"], query["lat"])):
        query["lon"], query["lat"] = held.place
    z = path.get("z")
    if isinstance(z, int) and 0 <= z <= grid.MAXZOOM and _now_and_then((z, path["x"])):
        tile = grid.TMS.tile(*held.place, z)
        path["x"], path["y"] = tile.x, tile.y


def _beyond_openapi(response: Any) -> bool:
    """Whether `response` is one of the refusals `BEYOND_OPENAPI` lists."""
    try:
        body = response.json()
    except ValueError:
        return False
    return any(
        body.get("code") == code and re.search(words, body.get("description", ""))
        for code, words, _ in BEYOND_OPENAPI
    )


def allowed_requests_are_answered(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's `positive_data_acceptance`, but for the refusals in `BEYOND_OPENAPI`."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except Failure:
        if response.status_code == 400 and _beyond_openapi(response):
            return None
        raise


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    allowed_requests_are_answered,
]


@pytest.fixture(scope="module")
def app(cambridge_store: Path) -> FastAPI:
    """The app over real Cambridge layers, a DEM and a restricted layer."""
    return query_app(cambridge_store)


@pytest.fixture(scope="module")
def server(app: FastAPI) -> Iterator[LiveServer]:
    """The app served by a real uvicorn server."""
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def held(app: FastAPI, server: LiveServer) -> Holdings:
    """What the served store holds (restricted collections too: they must answer 404)."""
    catalog = app.state.catalog
    layers = catalog.layers(Access.RESTRICTED)
    pipe = shapely.get_point(layers["pipes"].geometry[0], 0)
    return Holdings(
        {name: tuple(str(i) for i in layer.ids[:20]) for name, layer in layers.items()},
        tuple(catalog.rasters(Access.RESTRICTED)),
        (pipe.x, pipe.y),
    )


def test_the_document_tested_is_the_one_served(server: LiveServer) -> None:
    served = httpx.get(f"{server.url}/api").json()
    assert served == DOCUMENT
    answers = [r for p in served["paths"].values() for o in p.values() for r in o["responses"]]
    assert "422" not in answers


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_to_the_document(
    case: Any, server: LiveServer, held: Holdings
) -> None:
    _on_the_data(case, held)
    if case.meta is not None and case.meta.generation.mode.is_positive:
        _grammatical(case)
    case.call_and_validate(base_url=server.url, checks=CHECKS)
