"""Small helpers for the query, metric, network and stats tests: layers built at test time."""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Geod

from layers.layer import Layer, coerce, empty_attrs
from layers.models import LayerSchema
from tests.conftest import shared

GEOD = Geod(ellps="WGS84")


def make_layer(
    schema: LayerSchema,
    geometry: Any,
    ids: Any = None,
    **columns: Any,
) -> Layer:
    """A layer of `schema` holding `geometry` (lon/lat), with the given attribute columns."""
    geometry = np.asarray(geometry, dtype=object)
    n = len(geometry)
    attrs = empty_attrs(schema, n)
    for name, values in columns.items():
        attrs[name] = coerce(pd.Series(list(values)), schema.field(name).type)
    if ids is None:
        ids = [f"{schema.name}-{i}" for i in range(n)]
    return Layer(schema, np.asarray(ids, dtype=object), geometry, attrs)


def cambridge(name: str) -> gpd.GeoDataFrame:
    """One Cambridge MA layer from ../shared/data (skips when absent)."""
    return gpd.read_file(shared(f"cambridge_ma/{name}.geojson"))


def geodesic_distance_ref(
    geoms: np.ndarray, point: shapely.Point, step_m: float = 0.2
) -> np.ndarray:
    """Brute-force reference: pyproj.Geod distance from `point` to each shape, by densifying
    every boundary (as stored, straight in lon/lat) to `step_m` and taking the nearest vertex;
    0 inside a polygon."""
    out = np.empty(len(geoms))
    step_deg = step_m / 111_320.0 * 0.7
    for i, g in enumerate(geoms):
        if g.geom_type in ("Polygon", "MultiPolygon") and g.covers(point):
            out[i] = 0.0
            continue
        dense = shapely.segmentize(g, step_deg)
        c = shapely.get_coordinates(dense)
        _, _, d = GEOD.inv(np.full(len(c), point.x), np.full(len(c), point.y), c[:, 0], c[:, 1])
        out[i] = d.min()
    return out
