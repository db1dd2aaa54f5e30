"""Measures on the ground (geodesic, on the WGS84 ellipsoid) for fields a file leaves empty."""

from __future__ import annotations

import numpy as np
from pyproj import Geod

_GEOD = Geod(ellps="WGS84")


def geodesic_area_m2(geometry: np.ndarray) -> np.ndarray:
    """Area in square metres of each lon/lat polygon (NaN for None); holes subtracted."""
    out = np.full(len(geometry), np.nan)
    # pyproj's geodesic area works one geometry at a time; parks and cells are few.
    for i, g in enumerate(geometry):
        if g is not None and not g.is_empty:
            out[i] = abs(_GEOD.geometry_area_perimeter(g)[0])
    return out
