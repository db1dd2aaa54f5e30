"""Errors raised by the importers: each means nothing was written, and says why in one line."""

from __future__ import annotations


class ImporterError(Exception):
    """Root of every error the importers raise on purpose; the message is for the user."""


class InvalidOption(ImporterError):
    """An import option that cannot be used (`--map` to an unknown field, a bad `--set` value)."""


class UnreadableFile(ImporterError):
    """The file is missing, truncated, damaged or not a format GDAL reads."""


def damaged(what: str, detail: str) -> UnreadableFile:
    """`the GeoPackage a.gpkg is damaged or truncated (detail); copy the complete file`."""
    return UnreadableFile(f"{what} is damaged or truncated ({detail}); copy the complete file")


class UnknownLayer(ImporterError):
    """The file holds several layers and none was chosen, or the chosen one is not there."""


class UnknownCRS(ImporterError):
    """The coordinates' reference system is not declared, not given and not lon/lat."""


class WrongGeometryType(ImporterError):
    """The file's geometries do not fit the layer (points offered to `pipes`)."""


class EmptySource(ImporterError):
    """The file holds no features at all."""


class NothingImported(ImporterError):
    """Every record was rejected, so nothing landed; the message names the main reasons."""
