"""PNG map tiles of a DEM: hillshade and colour relief, read from a COG through rio-tiler.

Hillshade lights the ground from the north-west (azimuth 315°, altitude 45°): each pixel is
255 × the cosine between the ground normal (Horn's 3×3 gradient, in ground metres) and the
sun, 0 in full shade; grey with alpha. Colour relief maps elevation over the raster's own
range (min..max of the whole DEM) through `RELIEF_RAMP`. Pixels without data are
transparent.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from PIL import Image
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader

from tiles.errors import InvalidTileRequest, RasterError
from tiles.grid import Tile, to_lonlat, xy_bounds

RasterStyle = Literal["hillshade", "relief"]
STYLES: tuple[str, ...] = ("hillshade", "relief")
TILE_SIZE = 256
AZIMUTH = 315.0
ALTITUDE = 45.0

RELIEF_RAMP: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.00, (46, 125, 50)),
    (0.25, (139, 195, 74)),
    (0.50, (255, 235, 130)),
    (0.75, (176, 118, 62)),
    (1.00, (250, 250, 250)),
)
"""Colour stops over the elevation range, 0 = the DEM's lowest point, 1 = its highest."""


def relief_colour(elevation: np.ndarray, low: float, high: float) -> np.ndarray:
    """RGB (uint8, shape (..., 3)) of elevations on `RELIEF_RAMP` stretched over low..high,
    linearly interpolated between stops and rounded."""
    span = high - low if high > low else 1.0
    t = np.clip((np.asarray(elevation, dtype=np.float64) - low) / span, 0.0, 1.0)
    stops = np.array([s for s, _ in RELIEF_RAMP])
    rgb = np.array([c for _, c in RELIEF_RAMP], dtype=np.float64)
    out = np.stack([np.interp(t, stops, rgb[:, k]) for k in range(3)], axis=-1)
    return np.round(out).astype(np.uint8)


def hillshade(dem: np.ndarray, cell: np.ndarray | float) -> np.ndarray:
    """Shade (0..1) of the inner pixels of `dem` (one pixel of margin is consumed): rows run
    south; `cell` is the ground size of a pixel in metres (one value, or one per inner row)."""
    a, b, c = dem[:-2, :-2], dem[:-2, 1:-1], dem[:-2, 2:]
    d, f = dem[1:-1, :-2], dem[1:-1, 2:]
    g, h, i = dem[2:, :-2], dem[2:, 1:-1], dem[2:, 2:]
    size = np.asarray(cell, dtype=np.float64).reshape(-1, 1)
    dz_east = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * size)
    dz_north = ((a + 2 * b + c) - (g + 2 * h + i)) / (8 * size)
    az, alt = np.radians(AZIMUTH), np.radians(ALTITUDE)
    sun = (np.sin(az) * np.cos(alt), np.cos(az) * np.cos(alt), np.sin(alt))
    dot = -dz_east * sun[0] - dz_north * sun[1] + sun[2]
    return np.clip(dot / np.sqrt(dz_east**2 + dz_north**2 + 1), 0.0, 1.0)


@lru_cache(maxsize=64)
def _range(uri: str, version: str) -> tuple[float, float]:
    with rasterio.open(uri) as src:
        stats = src.stats(indexes=1, approx=False)[0]
    return float(stats.min), float(stats.max)


def elevation_range(uri: str | Path, version: str | None = None) -> tuple[float, float]:
    """Lowest and highest elevation of a DEM at `uri` (a file or a URL GDAL reads; GDAL
    statistics, cached per `version`: by default a local file's modification time)."""
    p = str(uri)
    try:
        return _range(p, str(os.stat(p).st_mtime_ns) if version is None else version)
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise RasterError(f"cannot read raster {uri}: {exc}") from None


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def render_raster_tile(
    path: str | Path, tile: Tile, style: str, version: str | None = None
) -> bytes | None:
    """PNG of a DEM tile in `style` ("hillshade" or "relief"), 256 px, from the DEM at `path`
    (a file or a URL GDAL reads; `version` as for `elevation_range`); None when the tile has
    no data (outside the raster, or nodata only)."""
    if style not in STYLES:
        raise InvalidTileRequest(f"unknown raster style {style!r}: use one of {', '.join(STYLES)}")
    try:
        with Reader(str(path)) as src:
            img = src.tile(
                tile.x,
                tile.y,
                tile.z,
                tilesize=TILE_SIZE,
                buffer=1,
                indexes=1,
                out_dtype="float64",
                resampling_method="bilinear",
                reproject_method="bilinear",
            )
    except TileOutsideBounds:
        return None
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise RasterError(f"cannot read raster {path}: {exc}") from None
    data = np.ma.masked_invalid(img.array[0])
    valid = ~np.ma.getmaskarray(data)
    inner = valid[1:-1, 1:-1]
    if not inner.any():
        return None
    if style == "relief":
        low, high = elevation_range(path, version)
        rgb = relief_colour(data.filled(low)[1:-1, 1:-1], low, high)
        alpha = np.where(inner, 255, 0).astype(np.uint8)
        return _png(np.dstack([rgb, alpha]))
    # Ground size of a pixel: Mercator size × cos(latitude), per output row.
    b = xy_bounds(tile)
    cell = (b.maxx - b.minx) / TILE_SIZE
    rows_y = b.maxy - (np.arange(TILE_SIZE) + 0.5) * cell
    _, lat = to_lonlat(np.zeros(TILE_SIZE), rows_y)
    scale = np.cos(np.radians(lat))
    shade = hillshade(data.filled(np.nan), cell * scale)
    # Horn's kernel needs all 9 neighbours; where one is missing the pixel is left out.
    ok = inner & np.isfinite(shade)
    grey = np.round(np.nan_to_num(shade) * 255).astype(np.uint8)
    alpha = np.where(ok, 255, 0).astype(np.uint8)
    return _png(np.dstack([grey, alpha]))
