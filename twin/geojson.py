"""GeoJSON bytes for pages of features, written once without a round trip through dicts."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import shapely

from layers.layer import Layer


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # an infinite number: JSON has none, so it goes out as null
        return json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def features_json(layer: Layer, rows: np.ndarray, geometry: np.ndarray) -> list[str]:
    """One GeoJSON Feature text per row; `geometry` holds the rows' geometries, already in the
    answer's CRS."""
    if len(rows) == 0:
        return []
    props = layer.properties(rows)
    geoms = shapely.to_geojson(geometry)
    ids = layer.ids[rows].tolist()
    # One string join per feature: the page is serialised once, geometry text spliced as is.
    return [
        f'{{"type":"Feature","id":{_dumps(fid)},"geometry":{g if g is not None else "null"},'
        f'"properties":{_dumps(p)}}}'
        for fid, g, p in zip(ids, geoms.tolist(), props, strict=True)
    ]


def feature_collection(features: list[str], members: dict[str, Any]) -> bytes:
    """A FeatureCollection holding `features` (texts) and the other `members` given."""
    head = _dumps({"type": "FeatureCollection", **members})[:-1]
    return f'{head},"features":[{",".join(features)}]}}'.encode()


def feature(text: str, members: dict[str, Any]) -> bytes:
    """One Feature text with extra top-level `members` (links)."""
    return f"{text[:-1]},{_dumps(members)[1:]}".encode()
