"""Statistics per management grid cell: counts of points, lengths of lines, areas of polygons.

For the web map's management view and dashboards. At every level the cells' numbers add up to
what lies inside that level's cells: the cells are made a partition first (a cell keeps what its
earlier cells, in grid order, do not already hold, so an edge shared by two cells belongs to the
earlier one), then each line's length and each polygon's area is split between the cells it
crosses (clipped by each cell, measured on the ground in metres), each point is counted in one
cell (the first it falls in), and each line or polygon is counted once, in the cell holding the
largest part of it. Results are cached per layer, grid, level and filter: a layer edit makes a
new `Layer`, so the cache never serves stale numbers.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from layers.catalog import Catalog, Lens, lens_key
from layers.errors import Uncompiled
from layers.layer import Head, Layer
from layers.schemas import GRID_LEVELS
from layers.where import Where
from twin import budget, metric
from twin.cql2 import Filter, evaluate, lower
from twin.errors import InvalidParameter
from twin.queries import GRIDS, heads_for

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
        """Each statistic summed over the cells: what lies inside the level's cells."""
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


def earlier_cells(cells: np.ndarray) -> np.ndarray:
    """For each cell polygon, the union of the cells before it that it meets (None when it meets
    none): what of the cell already belongs to an earlier one."""
    out = np.full(len(cells), None, dtype=object)
    if not len(cells):
        return out
    late, early = shapely.STRtree(cells).query(cells, predicate="intersects")
    keep = early < late
    if not keep.any():
        return out
    order = np.argsort(late[keep], kind="stable")
    late, early = late[keep][order], early[keep][order]
    starts = np.flatnonzero(np.r_[True, late[1:] != late[:-1]])
    for lo, hi in zip(starts, [*starts[1:], len(late)], strict=True):
        out[late[lo]] = shapely.union_all(cells[early[lo:hi]])
    shapely.prepare(out[out != None])  # noqa: E711  (elementwise)
    return out


def layer_stats(
    layer: Layer, rows: np.ndarray, cells: np.ndarray, earlier: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Statistics of `layer`'s `rows` over the cell polygons `cells` (lon/lat): `count` always,
    `length_m` when it holds lines, `area_m2` when it holds polygons; one value per cell.

    The values add up to what lies inside the cells' union: lengths and areas are split between
    the cells (a piece on an edge two cells share goes to the earlier cell), a point is counted
    in the first cell it falls in, a line or polygon in the cell holding the largest part of it
    (the first of equals; the first it meets when it only touches the cells). `earlier` is
    `earlier_cells(cells)` when already made."""
    n = len(cells)
    geoms = layer.geometry[rows]
    types = shapely.get_type_id(geoms)
    out: dict[str, np.ndarray] = {}
    # The layer's own tree asked with each (prepared) cell: a few large polygons tested
    # against many small shapes, rather than each shape against unprepared cells.
    shapely.prepare(cells)
    cell, feat = layer.tree.query(cells, predicate="intersects")
    if len(rows) != len(layer):
        place = np.full(len(layer), -1, dtype=np.int64)
        place[rows] = np.arange(len(rows))
        keep = place[feat] >= 0
        cell, feat = cell[keep], place[feat[keep]]
    order = np.lexsort((cell, feat))
    feat, cell = feat[order], cell[order]
    share = np.zeros(len(feat))  # the length or area of each (feature, cell) piece
    if earlier is None:
        earlier = earlier_cells(cells)
    for family, name, measure in (
        (_LINE, "length_m", metric.length_m),
        (_POLYGON, "area_m2", metric.area_m2),
    ):
        if not np.isin(types, family).any():
            continue
        sel = np.flatnonzero(np.isin(types[feat], family))
        f, c = feat[sel], cell[sel]
        value = _pieces(geoms[f], cells, c, earlier, measure)
        share[sel] = value
        out[name] = np.bincount(c, weights=value, minlength=n)
    # One cell per feature: sorted by feature, then largest share, then grid order.
    order = np.lexsort((cell, -share, feat))
    first = np.ones(len(feat), dtype=bool)
    first[1:] = feat[order][1:] != feat[order][:-1]
    out["count"] = np.bincount(cell[order][first], minlength=n)
    return {"count": out.pop("count"), **out}


def _pieces(
    geoms: np.ndarray,
    cells: np.ndarray,
    cell: np.ndarray,
    earlier: np.ndarray,
    measure: Callable[[Any], Any],
) -> np.ndarray:
    """The measure of each shape's part inside its cell, less what earlier cells hold."""
    value = np.empty(len(geoms))
    shapely.prepare(cells)
    # Inside the cell's interior and clear of every earlier cell: measured whole.
    whole = shapely.contains_properly(cells[cell], geoms)
    prior = earlier[cell]
    shared = np.flatnonzero(whole & (prior != None))  # noqa: E711  (elementwise)
    whole[shared] = ~shapely.intersects(prior[shared], geoms[shared])
    if whole.any():
        value[whole] = measure(geoms[whole])
    cut = np.flatnonzero(~whole)
    if len(cut):
        piece = shapely.intersection(geoms[cut], cells[cell[cut]])
        has = np.flatnonzero(prior[cut] != None)  # noqa: E711  (elementwise)
        if len(has):
            piece[has] = shapely.difference(piece[has], prior[cut][has])
        value[cut] = measure(piece)
    return value


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
    polygons = grid.geometry[cells]
    earlier = grid.derived(("earlier cells", level), lambda: earlier_cells(polygons))
    result = layer_stats(layer, rows, polygons, earlier)
    held[key] = (weakref.ref(grid), result)
    return result


def share_unchanged(layer: Layer) -> None:
    """A layer whose rows changed in place without moving (`Layer.patched`: a reading, a
    status edit) keeps its earlier version's unfiltered statistics: they rest on the
    geometry only."""
    patch = layer.origin
    base = patch.base() if patch is not None else None
    if base is None or patch is None or not patch.same_geometry:
        return
    held: dict[tuple, Any] = base.derived(_cached_layer_stats, dict)
    mine: dict[tuple, Any] = layer.derived(_cached_layer_stats, dict)
    for key, value in list(held.items()):
        if key[2] is None:
            mine.setdefault(key, value)


def cell_stats(
    catalog: Catalog,
    scope: Lens,
    level: str,
    collections: Iterable[str] | None = None,
    flt: Filter | None = None,
) -> CellStats:
    """Statistics per grid cell at `level` of the layers named (default: every visible layer
    but the grid), counting only the features `flt` selects."""
    grid = catalog.layer(GRIDS, scope)
    cells = grid_cells(grid, level)
    heads = heads_for(catalog, scope, collections)
    if collections is None and flt is not None:
        # A filter names properties: by default, apply it to the layers that have them.
        heads = [h for h in heads if _applies(flt, h)]
        if not heads:
            raise InvalidParameter(
                "filter names properties no visible layer has; name the collections to count"
            )
    columns: dict[str, np.ndarray] = {}
    for head in heads:
        if head.name == GRIDS:
            raise InvalidParameter("statistics are per grid cell; name other collections")
        budget.check(f"counting {head.name} per cell")
        if catalog.holds:
            layer = catalog.layer(head.name, scope)
            got = _cached_layer_stats(layer, grid, level, cells, flt)
        else:
            got = _scanned_stats(catalog, scope, head.name, grid, level, cells, flt)
        for stat, values in got.items():
            columns[f"{head.name}_{stat}"] = values
    return CellStats(
        grid,
        level,
        cells,
        [h.name for h in heads],
        columns,
        None if flt is None else flt.key,
    )


def _scanned_stats(
    catalog: Catalog,
    scope: Lens,
    name: str,
    grid: Layer,
    level: str,
    cells: np.ndarray,
    flt: Filter | None,
) -> dict[str, np.ndarray]:
    """`_cached_layer_stats` of a layer the catalog does not hold: the layer read a chunk at a
    time, each chunk's statistics added up (each feature counts and measures on its own).
    Kept per revision of the layer and the grid."""
    key = (
        "stats",
        name,
        catalog.revision(name),
        catalog.revision(GRIDS),
        lens_key(scope),
        level,
        None if flt is None else flt.key,
    )

    def make() -> dict[str, np.ndarray]:
        polygons = grid.geometry[cells]
        earlier = grid.derived(("earlier cells", level), lambda: earlier_cells(polygons))
        total: dict[str, np.ndarray] = {}
        where = None
        if flt is not None:  # the store reads only what the filter may select, when it can
            with contextlib.suppress(Uncompiled):
                where = Where(filter=lower(flt, catalog.head(name, scope).schema))
        for chunk in catalog.chunks(name, scope, where):
            budget.check(f"counting {name} per cell")
            rows = (
                np.arange(len(chunk), dtype=np.int64)
                if flt is None
                else np.flatnonzero(evaluate(flt, chunk))
            )
            for stat, values in layer_stats(chunk, rows, polygons, earlier).items():
                total[stat] = total[stat] + values if stat in total else values
        return total or {"count": np.zeros(len(cells), dtype=np.int64)}

    return catalog.memo(key, make)


def _applies(flt: Filter, layer: Head) -> bool:
    try:
        flt.check(layer.schema)
    except InvalidParameter:
        return False
    return True
