"""The tile matrix: WebMercatorQuad (morecantile), range checks and tile bounds."""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache

import morecantile
import numpy as np

from layers.models import Bounds
from tiles.errors import TileOutOfMatrix

TMS = morecantile.tms.get("WebMercatorQuad")
Tile = morecantile.Tile
"""A tile as `Tile(x, y, z)` (morecantile's NamedTuple; the URL order is z/y/x)."""

MAXZOOM = TMS.maxzoom
ORIGIN = 20037508.342789244
"""Half the width of the WebMercatorQuad square, metres (EPSG:3857)."""
MAX_LAT = 85.0511287798066


def tile(z: int, x: int, y: int) -> Tile:
    """The tile z/x/y, or `TileOutOfMatrix` when it is not in the matrix set."""
    if not 0 <= z <= MAXZOOM:
        raise TileOutOfMatrix(z, x, y, f"zoom must be 0..{MAXZOOM}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise TileOutOfMatrix(z, x, y, f"column and row must be 0..{n - 1} at zoom {z}")
    return Tile(x, y, z)


def tile_width(z: int) -> float:
    """Width of a tile at zoom `z` in EPSG:3857 metres."""
    return 2 * ORIGIN / (1 << z)


@lru_cache(maxsize=16384)
def xy_bounds(t: Tile) -> Bounds:
    """Bounds of a tile in EPSG:3857 (morecantile's values, so tests can use it as oracle)."""
    b = TMS.xy_bounds(t)
    return Bounds(b.left, b.bottom, b.right, b.top)


@lru_cache(maxsize=16384)
def lonlat_bounds(t: Tile) -> Bounds:
    """Bounds of a tile in longitude/latitude."""
    b = TMS.bounds(t)
    return Bounds(b.left, b.bottom, b.right, b.top)


def window(t: Tile, buffer: int, extent: int, padded: bool = True) -> Bounds:
    """The lon/lat box a tile's features are read from: the tile grown by `buffer` extent
    units and a tenth of its side more (Mercator is not linear in latitude), within the
    world; not `padded` (a tile below the detail zoom draws only what meets the tile), the
    tile and a hair more."""
    b = lonlat_bounds(t)
    grow = buffer / extent + 0.1 if padded else 1e-7
    pad = (b.maxx - b.minx) * grow
    padlat = (b.maxy - b.miny) * grow
    return Bounds(
        b.minx - pad, max(b.miny - padlat, -90.0), b.maxx + pad, min(b.maxy + padlat, 90.0)
    )


def buffered(b: Bounds, t: Tile, buffer: int, extent: int) -> Bounds:
    """`b` (EPSG:3857 tile bounds) grown by `buffer` extent units on every side."""
    pad = (b.maxx - b.minx) * buffer / extent
    return Bounds(b.minx - pad, b.miny - pad, b.maxx + pad, b.maxy + pad)


def to_mercator(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spherical Mercator (EPSG:3857) of lon/lat arrays; latitudes are clamped to the square."""
    lat = np.clip(lat, -MAX_LAT, MAX_LAT)
    x = np.radians(lon) * 6378137.0
    y = np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)) * 6378137.0
    return x, y


def to_lonlat(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude/latitude of EPSG:3857 coordinates."""
    lon = np.degrees(x / 6378137.0)
    lat = np.degrees(2 * np.arctan(np.exp(y / 6378137.0)) - np.pi / 2)
    return lon, lat


def mercator_box(b: Bounds) -> Bounds:
    """A lon/lat box in EPSG:3857 (exact: the projection is monotone on each axis)."""
    x, y = to_mercator(np.array([b.minx, b.maxx]), np.array([b.miny, b.maxy]))
    return Bounds(float(x[0]), float(y[0]), float(x[1]), float(y[1]))


def tile_range(box: Bounds, z: int, pad: float = 0.0) -> tuple[int, int, int, int]:
    """Columns and rows (xmin, ymin, xmax, ymax, inclusive) of the tiles at zoom `z` whose
    bounds grown by `pad` EPSG:3857 metres meet the EPSG:3857 `box` (touching counts)."""
    w = tile_width(z)
    n = (1 << z) - 1
    xmin = math.ceil((box.minx - pad + ORIGIN) / w) - 1
    xmax = math.floor((box.maxx + pad + ORIGIN) / w)
    ymin = math.ceil((ORIGIN - box.maxy - pad) / w) - 1
    ymax = math.floor((ORIGIN - box.miny + pad) / w)
    return max(xmin, 0), max(ymin, 0), min(xmax, n), min(ymax, n)


def covering(b: Bounds, zooms: range) -> Iterator[Tile]:
    """Every tile of the given zooms that meets the lon/lat box `b`."""
    box = mercator_box(b)
    for z in zooms:
        x0, y0, x1, y1 = tile_range(box, z)
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                yield Tile(x, y, z)
