"""The tile matrix: range checks and bounds."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Transformer

from tiles.errors import TileOutOfMatrix, TilesError
from tiles.grid import TMS, Tile, lonlat_bounds, tile, to_lonlat, to_mercator, xy_bounds


@pytest.mark.parametrize(
    "zxy", [(-1, 0, 0), (25, 0, 0), (40, 0, 0), (0, 1, 0), (3, 0, 8), (3, -1, 2), (14, 16384, 0)]
)
def test_tiles_outside_the_matrix_are_refused(zxy: tuple[int, int, int]) -> None:
    with pytest.raises(TileOutOfMatrix) as err:
        tile(*zxy)
    assert isinstance(err.value, TilesError) and "outside" in str(err.value)


def test_tiles_inside_the_matrix() -> None:
    assert tile(0, 0, 0) == Tile(0, 0, 0)
    assert tile(24, 2**24 - 1, 5) == Tile(2**24 - 1, 5, 24)
    t = tile(14, 13394, 6871)
    assert (t.x, t.y, t.z) == (13394, 6871, 14)
    b, tb = xy_bounds(t), TMS.xy_bounds(t)
    assert b == (tb.left, tb.bottom, tb.right, tb.top)
    lb = lonlat_bounds(t)
    assert lb.minx < 114.32 < lb.maxx or lb.minx < 114.33 < lb.maxx


def test_mercator_matches_pyproj() -> None:
    lon = np.array([-179.9, -97.3, 0.0, 114.32, 179.9])
    lat = np.array([-85.0, 32.7, 0.0, 30.35, 85.0])
    x, y = to_mercator(lon, lat)
    px, py = Transformer.from_crs(4326, 3857, always_xy=True).transform(lon, lat)
    assert np.allclose(x, px, atol=1e-6) and np.allclose(y, py, atol=1e-6)
    blon, blat = to_lonlat(x, y)
    assert np.allclose(blon, lon, atol=1e-9) and np.allclose(blat, lat, atol=1e-9)
