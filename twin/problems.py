"""The one error table: each package's exceptions, the status they are answered with, and the
JSON `{"code", "description"}` every error takes on the wire (with `Retry-After` on a 503 of a
full worker and on a 429 of a caller over its rate). Used by the app's handlers, the lean paths,
the request guard and the rate limits alike."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from importers import errors as importer_errors
from layers import errors as layer_errors
from tiles import errors as tile_errors
from twin import errors as twin_errors

ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (layer_errors.UnknownCollection, 404),
    (layer_errors.UnknownFeature, 404),
    (layer_errors.InvalidSchema, 400),
    (layer_errors.PreconditionFailed, 412),
    (layer_errors.StoreError, 503),
    (layer_errors.LayersError, 400),
    (twin_errors.InvalidParameter, 400),
    (twin_errors.BodyTooLarge, 413),
    (twin_errors.LimitExceeded, 400),
    (twin_errors.NotAcceptable, 406),
    (twin_errors.Overloaded, 503),
    (twin_errors.Forbidden, 403),
    (twin_errors.RateLimited, 429),
    (twin_errors.TwinError, 400),
    (tile_errors.TileOutOfMatrix, 404),
    (tile_errors.RasterError, 404),
    (tile_errors.InvalidTileRequest, 400),
    (tile_errors.TilesError, 400),
    (importer_errors.ImporterError, 400),
)
"""Each package's exceptions and the status they are answered with (most specific first)."""

RETRY_AFTER_S = 1
"""`Retry-After` of a 503 (the worker is full; `TWIN_RETRY_AFTER_S` overrides it per app)."""


def error_response(
    status: int, code: str, description: str, retry_after: int | None = None
) -> JSONResponse:
    """The one shape every error takes on the wire."""
    headers = None if retry_after is None else {"Retry-After": str(retry_after)}
    return JSONResponse(
        {"code": code, "description": description}, status_code=status, headers=headers
    )


def status_of(exc: Exception) -> int | None:
    """The status `exc` is answered with, or None for an exception no package raises on purpose."""
    for exc_type, status in ERRORS:
        if isinstance(exc, exc_type):
            return status
    return None


def problem(exc: Exception, retry_after: int = RETRY_AFTER_S) -> JSONResponse | None:
    """The answer to an exception of the table (None for any other)."""
    status = status_of(exc)
    if status is None:
        return None
    wait = retry_after if status == 503 else getattr(exc, "retry_after_s", None)
    return error_response(status, type(exc).__name__, str(exc), wait)
