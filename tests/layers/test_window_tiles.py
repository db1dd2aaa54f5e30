"""A tile below the detail zoom drawn from a thinned window of the PostGIS store (every point,
the most important lines and polygons: `layers.models.Thinning`, pushed down to SQL) is the
very tile drawn from the whole layer held in memory, byte for byte, also where the thinning
cuts deep (thousands of features under a tile that keeps a few dozen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from layers.gpkg import GeoPackageStore
from layers.layer import Layer, coerce, empty_attrs
from layers.models import Access
from layers.schemas import LIGHTS, PIPES, ROADS
from tiles import grid
from tiles.generalise import ROAD_CLASS_RANK, thinning
from tiles.render import render_tile
from tiles.settings import TileSettings

pytestmark = pytest.mark.postgis

ALL = Access.RESTRICTED
BOX = (114.28, 30.33, 114.36, 30.41)


def _layer(schema, geoms, **columns) -> Layer:
    n = len(geoms)
    attrs = empty_attrs(schema, n)
    for name, values in columns.items():
        attrs[name] = coerce(pd.Series(list(values), dtype=object), schema.field(name).type)
    ids = np.array([f"{schema.name}-{i}" for i in range(n)], dtype=object)
    return Layer(schema, ids, np.array(geoms, dtype=object), attrs)


def _city(rng: np.random.Generator) -> list[Layer]:
    """Pipes of every length (some tiny, diameters tied, missing), roads of every class (and
    unknown ones), lights: thousands under a z11 tile."""
    n = 3000
    x = rng.uniform(BOX[0], BOX[2], n)
    y = rng.uniform(BOX[1], BOX[3], n)
    length = rng.choice([1e-6, 1e-5, 2e-4, 1e-3, 5e-3], n)  # sub-pixel to long
    angle = rng.uniform(0, np.pi, n)
    ends = np.stack([x + length * np.cos(angle), y + length * np.sin(angle)], 1)
    pipes = shapely.linestrings(np.stack([np.stack([x, y], 1), ends], 1))
    diameter = rng.choice([150.0, 600.0, np.nan], n, p=[0.3, 0.6, 0.1])  # many tied at the top
    roads = shapely.linestrings(
        np.stack([np.stack([y * 0 + x, y], 1), ends[:, ::-1] * 0 + ends], 1)
    )
    classes = rng.choice([*ROAD_CLASS_RANK[:4], "track", None], n)
    lx = rng.uniform(BOX[0], BOX[2], 2000)
    ly = rng.uniform(BOX[1], BOX[3], 2000)
    return [
        _layer(PIPES, list(pipes), diameter_mm=diameter, network=["water"] * n),
        _layer(ROADS, list(roads), **{"class": classes}),
        _layer(LIGHTS, list(shapely.points(lx, ly)), status=["on"] * 2000),
    ]


def test_thinned_windows_draw_the_same_tiles(pg_url: str, tmp_path: Path) -> None:
    from layers.postgis import PostGISStore

    held = GeoPackageStore(tmp_path / "held")
    pg = PostGISStore(pg_url, raster_dir=tmp_path / "rasters")
    layers = _city(np.random.default_rng(11))
    for lyr in layers:
        held.write(lyr, source="t", user="u")
        pg.write(lyr, source="t", user="u")
    settings = TileSettings(max_features=40, detail_zoom=14)
    tiles = [grid.TMS.tile(114.32, 30.37, z) for z in (10, 11, 12, 13)]
    tiles += [grid.TMS.tile(114.30, 30.35, 13), grid.TMS.tile(114.34, 30.39, 12)]
    cut_deep = drawn = 0
    for lyr in layers:
        whole = held.load(lyr.name, ALL)
        for t in tiles:
            tile = grid.tile(t.z, t.x, t.y)
            thin = thinning(lyr.name, tile, settings)
            assert thin is not None
            box = grid.window(tile, settings.buffer, settings.extent, padded=False)
            window = pg.window(lyr.name, box, ALL, thin)
            if lyr.name != "lights":
                # Only the most important lines were read; the points all.
                assert len(window) <= thin.most
                cut_deep += len(whole.query_bbox(box)) >= 5 * len(window)
            want = render_tile([(whole, None)], tile, settings)
            got = render_tile([(window, None)], tile, settings)
            assert got == want, (lyr.name, tile)
            drawn += bool(want)
    assert cut_deep >= 4 and drawn >= 14
    pg.close()
    held.close()
