"""Prepared arrays of an edited layer, derived from the previous version, equal a rebuild."""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
import shapely

from layers.layer import Layer
from layers.schemas import PIPES
from tests.tiles.conftest import make_layer
from tiles import prepared
from tiles.grid import TMS, Tile
from tiles.render import render_tile
from tiles.settings import TileSettings

LON, LAT = 114.32, 30.35


def _layer(n: int = 500) -> Layer:
    rng = np.random.default_rng(8)
    start = np.array([LON, LAT]) + rng.uniform(-0.01, 0.01, (n, 2))
    geoms = shapely.linestrings(np.stack([start, start + rng.normal(0, 0.001, (n, 2))], axis=1))
    return make_layer(
        PIPES,
        list(geoms),
        ids=[str(i) if i % 5 else f"P{i}" for i in range(n)],
        diameter_mm=rng.choice([100.0, 300.0], n),
        material=rng.choice(["PE", "DI"], n),
    )


def _edit(old: Layer) -> Layer:
    """Move 3 pipes, change 2 attributes, delete 4 rows, add 2 new ones, shuffle the order."""
    geoms = old.geometry.copy()
    attrs = old.attrs.copy()
    geoms[[1, 7, 9]] = shapely.transform(geoms[[1, 7, 9]], lambda c: c + 0.0005)
    attrs.loc[3, "diameter_mm"] = 1200.0
    attrs.loc[8, "material"] = "STEEL"  # a value the layer did not hold yet
    keep = np.setdiff1d(np.arange(len(old)), [2, 4, 6, 11])
    extra = make_layer(
        PIPES,
        [shapely.LineString([(LON, LAT), (LON + 0.001, LAT)]), None],
        ids=["9000", "new-1"],
        material=["PVC", None],
    )
    order = np.random.default_rng(1).permutation(len(keep) + 2)
    ids = np.concatenate([old.ids[keep], extra.ids])[order]
    g = np.concatenate([geoms[keep], extra.geometry])[order]
    a = pd.concat([attrs.iloc[keep], extra.attrs], ignore_index=True).iloc[order]
    return Layer(PIPES, ids, g, a.reset_index(drop=True))


def test_derived_arrays_equal_a_full_rebuild() -> None:
    old = _layer()
    base = prepared.prepare(old)
    new = _edit(old)
    new.previous = weakref.ref(old)  # as the catalog links a layer to the one it replaces
    derived = prepared.prepare(new)
    assert derived.properties.table is base.properties.table  # derived, not rebuilt
    full = prepared._prepare(new)
    np.testing.assert_array_equal(derived.mbounds, full.mbounds)
    np.testing.assert_array_equal(derived.dimension, full.dimension)
    np.testing.assert_array_equal(derived.rank, full.rank)
    np.testing.assert_array_equal(derived.ids, full.ids)
    assert derived.properties.keys == full.properties.keys
    # Value numbers differ between tables; the values they stand for must not.
    for j in range(len(full.properties.keys)):
        d, f = derived.properties.codes[:, j], full.properties.codes[:, j]
        assert ((d < 0) == (f < 0)).all()
        ok = d >= 0
        assert [derived.properties.table.entries(np.array([c])) for c in d[ok]] == [
            full.properties.table.entries(np.array([c])) for c in f[ok]
        ]
    # And the tiles are the same bytes.
    t = TMS.tile(LON, LAT, 15)
    tile = Tile(t.x, t.y, t.z)
    settings = TileSettings(_env_file=None)
    served = render_tile([(new, None)], tile, settings)
    new._derived[prepared.PreparedLayer] = full
    assert render_tile([(new, None)], tile, settings) == served
    assert served
