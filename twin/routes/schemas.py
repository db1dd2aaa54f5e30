"""JSON Schemas of GeoJSON and tile bodies, for the OpenAPI document (`/api`).

They state the shape the answers and the posted shapes take; what a schema cannot say (a
ring closed, a shape valid) the code checks and answers 400, naming it.
"""

from __future__ import annotations

from typing import Any

_LON: dict[str, Any] = {"type": "number", "minimum": -180, "maximum": 180}
_LAT: dict[str, Any] = {"type": "number", "minimum": -90, "maximum": 90}
POSITION: dict[str, Any] = {
    "type": "array",
    "prefixItems": [_LON, _LAT, {"type": "number"}],
    "minItems": 2,
    "maxItems": 3,
}
"""A GeoJSON position: longitude, latitude (degrees) and an optional height."""


def _array(items: dict[str, Any], min_items: int) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": min_items}


_LINE = _array(POSITION, 2)
_RING = _array(POSITION, 4)
_POLYGON = _array(_RING, 1)
_COORDINATES: dict[str, dict[str, Any]] = {
    "Point": POSITION,
    "MultiPoint": _array(POSITION, 1),
    "LineString": _LINE,
    "MultiLineString": _array(_LINE, 1),
    "Polygon": _POLYGON,
    "MultiPolygon": _array(_POLYGON, 1),
}
GEOMETRY: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "required": ["type", "coordinates"],
            "properties": {"type": {"const": kind}, "coordinates": coordinates},
        }
        for kind, coordinates in _COORDINATES.items()
    ]
}
"""A GeoJSON geometry in lon/lat: Point, LineString, Polygon or their Multi forms."""

FEATURE: dict[str, Any] = {
    "type": "object",
    "required": ["type", "geometry", "properties"],
    "properties": {"type": {"const": "Feature"}},
}
"""A GeoJSON Feature answer (its members beyond these are free)."""

FEATURE_COLLECTION: dict[str, Any] = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": FEATURE},
    },
}
"""A GeoJSON FeatureCollection answer (its members beyond these are free)."""

BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
"""A body of bytes (a vector tile, a PNG)."""
