"""What each route can answer, declared once for the OpenAPI document (`/api`).

Every error is the JSON `ErrorBody`; `responses` builds a route's `responses=` from the
statuses it answers; `answer_validation_errors_400` takes FastAPI's default 422 out of the
document (validation errors are answered 400, like every other bad parameter).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from twin.routes.links import HTML, JSON


class ErrorBody(BaseModel):
    """The body of every error answer."""

    code: str = Field(
        description="What went wrong, as a name: InvalidParameter, LimitExceeded, "
        "TimeLimitExceeded, UnknownCollection, UnknownFeature, TileOutOfMatrix, BodyTooLarge, "
        "Overloaded, ...",
        examples=["InvalidParameter"],
    )
    description: str = Field(description="What was wrong, in words, naming the parameter.")


STATUSES: dict[int, str] = {
    204: "Empty: nothing to draw in this tile",
    304: "Unchanged since the ETag given in If-None-Match",
    307: "A browser asking for HTML is sent to the web map (/web/)",
    400: "A parameter or body that cannot be used, or a request over a configured limit "
    "(LimitExceeded, naming the setting) or past its time budget (TimeLimitExceeded, "
    "TWIN_REQUEST_TIMEOUT_S)",
    401: "The Authorization header is not a valid key (unknown, revoked or expired): code "
    "InvalidKey",
    403: "The key may not do this (a viewer changing data, an engineer outside its area, a "
    "key other than an admin's asking for keys or the audit log): code Forbidden",
    404: "No such collection, feature, tile matrix set or tile (outside the tile matrix), or "
    "none the caller may see",
    412: "The feature is not in the state If-Match names any more (or, creating, its id is "
    "taken): code PreconditionFailed; nothing was changed",
    413: "The request body is over the configured size (TWIN_QUERY_MAX_BODY_BYTES, "
    "TWIN_MAX_FEATURE_BYTES, TWIN_MAX_READINGS)",
    503: "The worker is working on as many requests as it may (TWIN_MAX_IN_FLIGHT): code "
    "Overloaded; retry after Retry-After seconds",
}
"""What each status other than 200 means, for every route that answers it."""

_ERROR_MIN = 400
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (TWIN_RETRY_AFTER_S).",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}


def responses(
    *statuses: int,
    what: str = "The answer",
    media: str | tuple[str, ...] = JSON,
    schema: dict[str, Any] | None = None,
    guarded: bool = True,
) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route answering 200 (`what`, in `media`, with body `schema` when
    given: the JSON types' schema, not the HTML page's) and each of `statuses`. A guarded route
    (every route but /healthz and /metrics, see `twin.guard`) also answers 400 once past its
    time budget and 503 when the worker is full."""
    content = {m: {} if schema is None or m == HTML else {"schema": schema} for m in _tuple(media)}
    out: dict[int | str, dict[str, Any]] = {200: {"description": what, "content": content}}
    for status in sorted({*statuses, *((400, 503) if guarded else ())}):
        answer: dict[str, Any] = {"description": STATUSES[status]}
        if status >= _ERROR_MIN:
            answer["model"] = ErrorBody
        if status == 503:
            answer["headers"] = _RETRY_AFTER
        out[status] = answer
    return out


def _tuple(media: str | tuple[str, ...]) -> tuple[str, ...]:
    return (media,) if isinstance(media, str) else media


def answer_validation_errors_400(app: FastAPI) -> None:
    """Make `app`'s document (`/api`) leave out FastAPI's default 422 answers and their schemas:
    the app answers validation errors 400, which `responses` declares."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        doc = build()
        for path in doc["paths"].values():
            for operation in path.values():
                operation["responses"].pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
