"""Statistics per management grid cell: counts of points, lengths of lines, areas of polygons.

For the web map's management view and dashboards. A point is counted in one cell (the first
it falls in, so a point on a shared edge is not counted twice and totals add up); a line or
polygon counts in every cell it meets, with the length or area of its part inside each cell,
in metres on the ground. Results are cached per layer, grid, level and filter: a layer edit
makes a new `Layer`, so the cache never serves stale numbers.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from layers.catalog import Catalog
from layers.layer import Layer
from layers.models import Access
from layers.schemas import GRID_LEVELS
from twin import budget, metric
from twin.cql2 import Filter, evaluate
from twin.errors import InvalidParameter
from twin.queries import GRIDS, layers_for

_POINT, _LINE, _POLYGON = (0, 4), (1, 2, 5), (3, 6)


@dataclass(frozen=True)
class CellStats:
    """Per-cell statistics of some layers over the grid cells of one level."""

    grid: Layer
    level: str
    cells: np.ndarray
    collections: list[str]
    columns: dict[str, np.ndarray]
    filter: str | None

    def totals(self) -> dict[str, float | int]:
        """Each statistic summed over the cells (counts of lines and polygons meeting several
        cells are counted once per cell)."""
        return {k: _number(v.sum(), k) for k, v in self.columns.items()}

    def to_json(self) -> dict[str, Any]:
        """A GeoJSON FeatureCollection of the cells with their statistics as properties."""
        props = self.grid.properties(self.cells)
        geoms = shapely.to_geojson(self.grid.geometry[self.cells]) if len(self.cells) else []
        cols = {k: v.tolist() for k, v in self.columns.items()}
        feats = []
        for i, (fid, g, p) in enumerate(
            zip(self.grid.ids[self.cells].tolist(), geoms, props, strict=True)
        ):
            p.update({k: _number(v[i], k) for k, v in cols.items()})
            feats.append(
                {
                    "type": "Feature",
                    "id": fid,
                    "collection": GRIDS,
                    "geometry": json.loads(g) if g is not None else None,
                    "properties": p,
                }
            )
        return {
            "type": "FeatureCollection",
            "level": self.level,
            "collections": self.collections,
            "filter": self.filter,
            "statistics": list(self.columns),
            "totals": self.totals(),
            "numberMatched": len(feats),
            "numberReturned": len(feats),
            "features": feats,
        }


def _number(v: Any, name: str) -> float | int:
    return int(v) if name.endswith("_count") else round(float(v), 3)


def grid_cells(grid: Layer, level: str) -> np.ndarray:
    """Rows of the grid's cells at `level` (district, street, community or cell)."""
    if level not in GRID_LEVELS:
        raise InvalidParameter(f"level {level!r}: use one of {', '.join(GRID_LEVELS)}")
    mask = np.asarray((grid.attrs["level"] == level).fillna(False), dtype=bool)
    return np.flatnonzero(mask)


def layer_stats(layer: Layer, rows: np.ndarray, cells: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of `layer`'s `rows` over the cell polygons `cells` (lon/lat): `count` always,
    `length_m` when it holds lines, `area_m2` when it holds polygons; one value per cell."""
    n = len(cells)
    geoms = layer.geometry[rows]
    types = shapely.get_type_id(geoms)
    out: dict[str, np.ndarray] = {}
    tree = shapely.STRtree(cells)
    feat, cell = tree.query(geoms, predicate="intersects")
    order = np.lexsort((cell, feat))
    feat, cell = feat[order], cell[order]
    points = np.isin(types[feat], _POINT)
    first = np.ones(len(feat), dtype=bool)
    first[1:] = feat[1:] != feat[:-1]
    counted = ~points | first  # a point in the first cell it falls in; others in every cell
    out["count"] = np.bincount(cell[counted], minlength=n)
    for family, name, measure in (
        (_LINE, "length_m", metric.length_m),
        (_POLYGON, "area_m2", metric.area_m2),
    ):
        if not np.isin(types, family).any():
            continue
        sel = np.isin(types[feat], family)
        f, c = feat[sel], cell[sel]
        shapely.prepare(cells)
        whole = shapely.contains_properly(cells[c], geoms[f])
        value = np.empty(len(f))
        if whole.any():
            value[whole] = measure(geoms[f[whole]])
        if (~whole).any():
            value[~whole] = measure(shapely.intersection(geoms[f[~whole]], cells[c[~whole]]))
        out[name] = np.bincount(c, weights=value, minlength=n)
    return out


def _cached_layer_stats(
    layer: Layer, grid: Layer, level: str, cells: np.ndarray, flt: Filter | None
) -> dict[str, np.ndarray]:
    key = (id(grid), level, flt.key if flt is not None else None)
    # Kept with the layer; the grid is checked by identity, as another grid may take its id.
    held: dict[tuple, Any] = layer.derived(_cached_layer_stats, dict)
    found = held.get(key)
    if found is not None and found[0]() is grid:
        return found[1]
    if flt is None:
        rows = np.arange(len(layer), dtype=np.int64)
    else:
        rows = np.flatnonzero(evaluate(flt, layer))
    result = layer_stats(layer, rows, grid.geometry[cells])
    held[key] = (weakref.ref(grid), result)
    return result


def cell_stats(
    catalog: Catalog,
    scope: Access,
    level: str,
    collections: Iterable[str] | None = None,
    flt: Filter | None = None,
) -> CellStats:
    """Statistics per grid cell at `level` of the layers named (default: every visible layer
    but the grid), counting only the features `flt` selects."""
    grid = catalog.layer(GRIDS, scope)
    cells = grid_cells(grid, level)
    layers = layers_for(catalog, scope, collections)
    if collections is None and flt is not None:
        # A filter names properties: by default, apply it to the layers that have them.
        layers = [lyr for lyr in layers if _applies(flt, lyr)]
        if not layers:
            raise InvalidParameter(
                "filter names properties no visible layer has; name the collections to count"
            )
    columns: dict[str, np.ndarray] = {}
    for layer in layers:
        if layer.name == GRIDS:
            raise InvalidParameter("statistics are per grid cell; name other collections")
        budget.check(f"counting {layer.name} per cell")
        for stat, values in _cached_layer_stats(layer, grid, level, cells, flt).items():
            columns[f"{layer.name}_{stat}"] = values
    return CellStats(
        grid,
        level,
        cells,
        [lyr.name for lyr in layers],
        columns,
        None if flt is None else flt.key,
    )


def _applies(flt: Filter, layer: Layer) -> bool:
    try:
        flt.check(layer.schema)
    except InvalidParameter:
        return False
    return True
