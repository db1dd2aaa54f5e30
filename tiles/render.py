"""Layers + a tile -> Mapbox Vector Tile bytes.

One MVT layer per collection, named by the collection id. A feature is in a tile when its
geometry meets the tile (edges included); its geometry is kept up to `buffer` extent units
beyond the edge. Every feature carries its id as the string property `id` (for MapLibre's
`promoteId`), and ids that are plain non-negative integers are also its MVT feature id.
Below the detail zoom the generalisation policy of `tiles.generalise` applies.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

import numpy as np
import shapely

from layers.layer import Layer
from layers.models import Bounds, LayerSchema
from tiles import generalise
from tiles.encode import EncodedGeometry, Properties, assemble, encode_geometry, encode_layer
from tiles.grid import Tile, mercator_box, to_lonlat, to_mercator, xy_bounds
from tiles.prepared import COUNT_PROPERTY, ID_PROPERTY, PreparedLayer, prepare
from tiles.settings import TileSettings

R = 6378137.0  # sphere radius of EPSG:3857, metres

LayerRequest = tuple[Layer, np.ndarray | None]
"""A layer and, optionally, the sorted row numbers it is limited to (e.g. a CQL2 filter)."""

_BUDGET_ROUNDS = 6


def _to_mercator(coords: np.ndarray) -> np.ndarray:
    x, y = to_mercator(coords[:, 0], coords[:, 1])
    return np.column_stack([x, y])


@dataclass
class _Cut:
    """One layer's features for one tile, ready to encode (lon/lat, clipped, simplified)."""

    name: str
    geoms: np.ndarray
    ids: np.ndarray
    properties: Properties
    rank: np.ndarray
    extras: frozenset[str] = frozenset()
    """Keys of the extra attributes among `properties`: the first left out over budget."""
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """The layer's rows of the features (the clusters below the detail zoom come after)."""
    counts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """The number of points each cluster stands for."""
    drawn: EncodedGeometry | None = None
    """The features' geometry encoded, once `encode` has (none given `keep`)."""

    def without_extras(self) -> _Cut:
        """This cut without its extra attributes."""
        if not self.extras:
            return self
        keys = [k for k in self.properties.keys if k not in self.extras]
        return replace(self, properties=self.properties.select(keys), extras=frozenset())

    def encode(self, bounds: Bounds, extent: int, keep: int | None = None) -> bytes:
        """The MVT layer, holding only the `keep` most important features when given."""
        if keep is None or keep >= len(self.geoms):
            if self.drawn is None:
                self.drawn = encode_geometry(
                    self.geoms, bounds=bounds, extent=extent, ids=self.ids, transform=_to_mercator
                )
            return assemble(self.name, self.drawn, self.properties, extent)
        if keep <= 0:
            return b""
        sel = np.sort(np.argpartition(self.rank, keep - 1)[:keep])
        return encode_layer(
            self.name,
            self.geoms[sel],
            bounds=bounds,
            extent=extent,
            ids=self.ids[sel],
            properties=self.properties.take(sel),
            transform=_to_mercator,
        )


def _expected_hits(layer: Layer, tile_box: Bounds) -> float:
    """Features expected under the tile if they were spread evenly over the layer's extent."""
    lb = layer.bounds
    if lb is None:
        return 0.0
    m = mercator_box(lb)
    w = max(m.maxx - m.minx, 1e-9)
    h = max(m.maxy - m.miny, 1e-9)
    ix = max(0.0, min(m.maxx, tile_box.maxx) - max(m.minx, tile_box.minx))
    iy = max(0.0, min(m.maxy, tile_box.maxy) - max(m.miny, tile_box.miny))
    return len(layer) * (ix / w) * (iy / h) if ix and iy else 0.0


def _among(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Whether each of `values` is in `rows` (sorted row numbers)."""
    if not len(rows):
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(rows, values).clip(0, len(rows) - 1)
    return rows[pos] == values


def _within(mb: np.ndarray, b: Bounds) -> np.ndarray:
    return (mb[:, 0] >= b.minx) & (mb[:, 1] >= b.miny) & (mb[:, 2] <= b.maxx) & (mb[:, 3] <= b.maxy)


def _candidates(layer: Layer, rows: np.ndarray | None, tile_box: Bounds) -> np.ndarray:
    """Rows whose bounding box meets the tile (EPSG:3857 box), limited to `rows`."""
    prep = prepare(layer)
    lb = layer.bounds
    lon, lat = to_lonlat(
        np.array([tile_box.minx, tile_box.maxx]), np.array([tile_box.miny, tile_box.maxy])
    )
    if (
        lb is not None
        and lon[0] <= lb.minx
        and lat[0] <= lb.miny
        and lon[1] >= lb.maxx
        and lat[1] >= lb.maxy
    ):
        cand = np.flatnonzero(prep.dimension >= 0)
    else:
        cand = layer.tree.query(shapely.box(lon[0], lat[0], lon[1], lat[1]))
        mb = prep.mbounds[cand]
        # The lon/lat query can differ from the exact Mercator box by rounding: settle it here.
        hit = (
            (mb[:, 0] <= tile_box.maxx)
            & (mb[:, 2] >= tile_box.minx)
            & (mb[:, 1] <= tile_box.maxy)
            & (mb[:, 3] >= tile_box.miny)
        )
        cand = cand[hit]
    if rows is not None:
        cand = cand[_among(cand, np.asarray(rows, dtype=np.int64))]
    return cand.astype(np.int64)


_SCAN_CHUNK = 65536


def _top_shapes(
    prep: PreparedLayer,
    cand: np.ndarray | None,
    rows: np.ndarray | None,
    box: Bounds,
    min_size: float,
    k: int,
) -> np.ndarray:
    """The `k` most important lines and polygons at least `min_size` across whose box meets
    the tile. With the tile's candidates at hand they are ranked; without (a low-zoom tile
    over much of a big layer) the importance-ordered boxes are scanned until `k` are found."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if cand is not None:
        mb = prep.mbounds[cand]
        size = np.maximum(mb[:, 2] - mb[:, 0], mb[:, 3] - mb[:, 1])
        shapes = cand[(prep.dimension[cand] >= 1) & (size >= min_size)]
        if len(shapes) > k:
            shapes = shapes[np.argpartition(prep.rank[shapes], k - 1)[:k]]
        return shapes
    found: list[np.ndarray] = []
    total = 0
    ob, osz = prep.ordered_bounds, prep.ordered_size
    for s in range(0, len(ob), _SCAN_CHUNK):
        b = ob[s : s + _SCAN_CHUNK]
        hit = (
            (osz[s : s + _SCAN_CHUNK] >= min_size)
            & (b[:, 0] <= box.maxx)
            & (b[:, 2] >= box.minx)
            & (b[:, 1] <= box.maxy)
            & (b[:, 3] >= box.miny)
        )
        got = prep.order[s : s + _SCAN_CHUNK][hit]
        if rows is not None:
            got = got[_among(got, rows)]
        found.append(got)
        total += len(got)
        if total >= k:
            break
    return np.concatenate(found)[:k] if found else np.empty(0, dtype=np.int64)


def _homogenise(geoms: np.ndarray) -> np.ndarray:
    """Geometry collections (from clipping) reduced to their parts of the highest dimension."""
    gc = np.flatnonzero(shapely.get_type_id(geoms) == 7)
    for i in gc:  # rare: only clipped polygons touching the edge in a line or point
        parts = shapely.get_parts(geoms[i])
        dims = shapely.get_dimensions(parts)
        top = parts[dims == dims.max()] if len(parts) else parts
        if len(top) == 0:
            geoms[i] = None
        elif dims.max() == 2:
            geoms[i] = shapely.multipolygons(shapely.get_parts(top))
        elif dims.max() == 1:
            geoms[i] = shapely.multilinestrings(shapely.get_parts(top))
        else:
            geoms[i] = shapely.multipoints(shapely.get_parts(top))
    return geoms


def _lonlat_box(b: Bounds) -> Bounds:
    lon, lat = to_lonlat(np.array([b.minx, b.maxx]), np.array([b.miny, b.maxy]))
    return Bounds(float(lon[0]), float(lat[0]), float(lon[1]), float(lat[1]))


def _shapes(
    layer: Layer, rows: np.ndarray, tile_box: Bounds, clip_box: Bounds
) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat geometries of `rows` that meet the tile, clipped to `clip_box` (both boxes in
    EPSG:3857); and their rows. Clipping in lon/lat is exact along the box edges, which are
    meridians and parallels; it only bends clipped segments by far less than a tile unit."""
    prep = prepare(layer)
    geoms = layer.geometry[rows]
    mb = prep.mbounds[rows]
    crossing = ~_within(mb, tile_box)
    if crossing.any():
        idx = np.flatnonzero(crossing)
        hit = shapely.intersects(geoms[idx], shapely.box(*_lonlat_box(tile_box)))
        drop = idx[~hit]
        if len(drop):
            keep = np.ones(len(rows), dtype=bool)
            keep[drop] = False
            rows, geoms, mb = rows[keep], geoms[keep], mb[keep]
    outside = np.flatnonzero(~_within(mb, clip_box))
    if len(outside):
        geoms = geoms.copy()
        geoms[outside] = _homogenise(shapely.clip_by_rect(geoms[outside], *_lonlat_box(clip_box)))
    return geoms, rows


def _cluster(
    rows: np.ndarray, x: np.ndarray, y: np.ndarray, box: Bounds, cell: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points (EPSG:3857 x, y) inside the tile merged by grid cell, cells `cell` wide from the
    tile's corner (tile edges fall on cell edges, so neighbours agree): rows of lone points,
    and cluster centres (x, y, the mean of their points) with counts."""
    side = max(1, int(np.ceil((box.maxx - box.minx) / cell)))
    cx = np.clip(((x - box.minx) / cell).astype(np.int64), 0, side - 1)
    cy = np.clip(((y - box.miny) / cell).astype(np.int64), 0, side - 1)
    key = cy * side + cx
    counts = np.bincount(key, minlength=side * side)
    lone = counts[key] == 1
    many = np.flatnonzero(counts >= 2)
    k = key[~lone]
    mx = np.bincount(k, weights=x[~lone], minlength=side * side)[many] / counts[many]
    my = np.bincount(k, weights=y[~lone], minlength=side * side)[many] / counts[many]
    return rows[lone], mx, my, counts[many]


def _points_in(
    prep: PreparedLayer, cand: np.ndarray | None, rows: np.ndarray | None, box: Bounds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point rows meeting the tile, with their EPSG:3857 x and y: from the tile's candidates,
    or by one vectorised pass over the layer's points (a low-zoom tile over most of them)."""
    if cand is not None:
        pts = cand[prep.dimension[cand] == 0]
        mb = prep.mbounds[pts]
        return pts, (mb[:, 0] + mb[:, 2]) / 2, (mb[:, 1] + mb[:, 3]) / 2
    x, y = prep.point_x, prep.point_y
    inside = (x >= box.minx) & (x <= box.maxx) & (y >= box.miny) & (y <= box.maxy)
    pts, x, y = prep.point_rows[inside], x[inside], y[inside]
    if rows is not None:
        ok = _among(pts, rows)
        pts, x, y = pts[ok], x[ok], y[ok]
    return pts, x, y


def _cut(layer: Layer, rows: np.ndarray | None, tile: Tile, settings: TileSettings) -> _Cut | None:
    z = tile.z
    if len(layer) == 0 or z < generalise.minzoom(layer, settings):
        return None
    prep = prepare(layer)
    b = xy_bounds(tile)
    width = b.maxx - b.minx
    pad = width * settings.buffer / settings.extent
    clip_box = Bounds(b.minx - pad, b.miny - pad, b.maxx + pad, b.maxy + pad)
    no_clusters = np.empty(0, dtype=np.int64)
    if z >= settings.detail_zoom:
        found = _candidates(layer, rows, b)
        if len(found) == 0:
            return None
        found.sort()
        geoms, kept = _shapes(layer, found, b, clip_box)
        taken, extras = _properties(layer, prep, kept, no_clusters, settings)
        return _Cut(layer.name, geoms, prep.ids[kept], taken, prep.rank[kept], extras, kept)

    px = generalise.pixel(width)
    budget = settings.max_features
    min_size = settings.min_size_px * px
    # A low-zoom tile over much of a big layer scans the importance order instead of
    # gathering (and ranking) every feature under it.
    scan = _expected_hits(layer, b) > 4 * budget
    cand: np.ndarray | None = None
    if not scan:
        cand = _candidates(layer, rows, b)
        if len(cand) == 0:
            return None
    lone = np.empty(0, dtype=np.int64)
    cx = cy = np.empty(0)
    counts = np.empty(0, dtype=np.int64)
    if prep.has_points:
        # Only points inside the tile itself are clustered (clusters are per tile).
        pts, x, y = _points_in(prep, cand, rows, b)
        if len(pts):
            lone, cx, cy, counts = _cluster(pts, x, y, b, settings.cluster_px * px)
    # The most important features first, within the per-layer feature cap; clusters first.
    if len(counts) > budget:
        top = np.argpartition(-counts, budget - 1)[:budget]
        cx, cy, counts = cx[top], cy[top], counts[top]
    budget -= len(counts)
    shapes = _top_shapes(prep, cand, rows, b, min_size, budget)
    rest = np.concatenate([shapes, lone])
    if len(rest) > budget:
        rest = (
            rest[np.argpartition(prep.rank[rest], budget - 1)[:budget]] if budget > 0 else rest[:0]
        )
    rest.sort()
    geoms, kept = _shapes(layer, rest, b, clip_box)
    # A tolerance of d Mercator metres is d/R radians of longitude, d*cos(lat)/R of latitude.
    lat = np.radians(_lonlat_box(b).maxy if b.miny >= 0 else _lonlat_box(b).miny)
    geoms = generalise.simplify(geoms, np.degrees(settings.simplify_px * px * np.cos(lat) / R))
    ids = prep.ids[kept]
    rank = prep.rank[kept]
    if len(counts):
        geoms = np.concatenate([geoms, shapely.points(*to_lonlat(cx, cy))])
        ids = np.concatenate([ids, np.full(len(counts), -1)])
        # Clusters outrank lone features, busier clusters first.
        rank = np.concatenate([rank + len(counts), np.argsort(np.argsort(-counts, kind="stable"))])
    taken, extras = _properties(layer, prep, kept, counts, settings)
    return _Cut(layer.name, geoms, ids, taken, rank, extras, kept, counts)


def _properties(
    layer: Layer, prep: PreparedLayer, rows: np.ndarray, counts: np.ndarray, settings: TileSettings
) -> tuple[Properties, frozenset[str]]:
    """The properties a tile carries of the layer's `rows` then of clusters of `counts`
    points, and the keys of the extra attributes among them."""
    props = prep.properties
    # Narrowed after the rows are taken: never a copy of a whole layer's codes per tile.
    carried = [ID_PROPERTY, *settings.tile_keys(layer.name, props.keys[1:])]
    extras = frozenset(f.name for f in layer.schema.extras) & set(carried)
    narrowed = props.take(rows).select(carried)
    if not len(counts):
        return narrowed, extras
    codes = narrowed.codes
    keys = (*narrowed.keys, COUNT_PROPERTY)
    distinct, where = np.unique(counts, return_inverse=True)
    numbers = props.table.add_many("i", distinct.tolist())
    ccodes = np.full((len(counts), len(keys)), -1, dtype=np.int64)
    ccodes[:, -1] = numbers[where]
    codes = np.vstack([np.column_stack([codes, np.full(len(codes), -1)]), ccodes])
    return Properties(keys, codes, props.table), extras


def render_tile(
    layers: Sequence[LayerRequest], tile: Tile, settings: TileSettings | None = None
) -> bytes:
    """The uncompressed MVT of `tile` holding one layer per requested collection that has
    something to draw there; b"" when the tile is empty (answer 204).

    Each entry of `layers` is a `Layer` and an optional sorted array of the row numbers it is
    limited to (None: every row). Raises nothing for valid tiles; build `tile` with
    `tiles.grid.tile(z, x, y)`, which rejects tiles outside the matrix.
    """
    settings = settings or TileSettings()
    with _gate(settings.render_concurrency):
        return _render(layers, tile, settings)[0]


def draw_tile(
    layers: Sequence[LayerRequest],
    tile: Tile,
    settings: TileSettings,
    draft: TileDraft | None = None,
) -> tuple[bytes, TileDraft | None]:
    """`render_tile`, taking from `draft` (what the last drawing of the same tile with the
    same settings kept) each layer whose features have the same geometry, rows and order:
    only their properties are written again (the readings of a live twin change attribute
    values, never where a lamp stands). The same bytes as `render_tile`; and what this
    drawing keeps for the next (None when the tile went over its byte budget)."""
    with _gate(settings.render_concurrency):
        if draft is None or draft.settings is not settings or len(draft.layers) != len(layers):
            return _render(layers, tile, settings)
        cuts: list[_Cut | None] = []
        for (layer, rows), held in zip(layers, draft.layers, strict=True):
            again = held.again(layer, rows, tile, settings)
            cuts.append(_cut(layer, rows, tile, settings) if again is False else again)
        return _render(layers, tile, settings, cuts)


@dataclass(frozen=True)
class _Kept:
    """One layer of a tile as drawn, for drawing it again (`draw_tile`): what its features
    were cut from (held weakly: a new version of the layer with other geometry is another
    array) and the cut without its properties."""

    geometry: weakref.ref[np.ndarray]
    ids: weakref.ref[np.ndarray]
    rank: weakref.ref[np.ndarray] | Callable[[], None]
    schema: LayerSchema
    rows: np.ndarray | None
    """The rows the layer was limited to."""
    cut: _Cut | None
    """None: nothing to draw."""

    def again(
        self, layer: Layer, rows: np.ndarray | None, tile: Tile, settings: TileSettings
    ) -> _Cut | Literal[False] | None:
        """The cut of the tile from `layer`, properties made anew, when it is this one's but
        for attribute values (False otherwise): the same geometry array, ids and rows (and
        importance below the detail zoom: it may rest on an attribute)."""
        if self.geometry() is not layer.geometry or self.ids() is not layer.ids:
            return False
        if layer.schema is not self.schema and layer.schema != self.schema:
            return False
        if not _same_rows(self.rows, rows):
            return False
        if self.cut is None:
            return None
        prep = prepare(layer)
        if tile.z < settings.detail_zoom and self.rank() is not prep.rank:
            return False
        props, extras = _properties(layer, prep, self.cut.rows, self.cut.counts, settings)
        return replace(self.cut, properties=props, extras=extras)


def _rank_ref(layer: Layer) -> weakref.ref[np.ndarray] | Callable[[], None]:
    """The layer's importance rank, held weakly, if its tile arrays are made (they are
    when it had something to draw; else nothing is made for it here)."""
    prep = layer.held(PreparedLayer)
    return weakref.ref(prep.rank) if isinstance(prep, PreparedLayer) else _nothing


def _nothing() -> None:
    return None


def _same_rows(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a is b or np.array_equal(a, b)


@dataclass(frozen=True)
class TileDraft:
    """What a tile's drawing keeps for drawing it again (`draw_tile`): per layer asked for,
    the features cut and their geometry encoded."""

    settings: TileSettings
    layers: tuple[_Kept, ...]

    @cached_property
    def nbytes(self) -> int:
        """Memory held (the arrays; the geometries are the layers')."""
        total = 0
        for k in self.layers:
            c = k.cut
            if c is not None:
                total += c.rows.nbytes + c.counts.nbytes + c.ids.nbytes + c.rank.nbytes
                total += c.geoms.nbytes + (c.drawn.nbytes if c.drawn is not None else 0)
        return total


_gates: dict[int, threading.BoundedSemaphore] = {}


def _gate(n: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore letting `n` renders run at once."""
    gate = _gates.get(n)
    if gate is None:
        gate = _gates.setdefault(n, threading.BoundedSemaphore(n))
    return gate


def _render(
    layers: Sequence[LayerRequest],
    tile: Tile,
    settings: TileSettings,
    made: list[_Cut | None] | None = None,
) -> tuple[bytes, TileDraft | None]:
    b = xy_bounds(tile)
    if made is None:
        made = [_cut(layer, rows, tile, settings) for layer, rows in layers]
    cuts = [c for c in made if c]
    encoded = [c.encode(b, settings.extent) for c in cuts]
    kept = [len(c.geoms) for c in cuts]
    total = sum(map(len, encoded))
    if total <= settings.max_bytes:
        draft = TileDraft(
            settings,
            tuple(
                _Kept(
                    weakref.ref(layer.geometry),
                    weakref.ref(layer.ids),
                    _rank_ref(layer),
                    layer.schema,
                    rows,
                    cut,
                )
                for (layer, rows), cut in zip(layers, made, strict=True)
            ),
        )
        return b"".join(encoded), draft
    if total > settings.max_bytes and any(c.extras for c in cuts):
        # Over budget, the extra attributes go before any feature does.
        cuts = [c.without_extras() for c in cuts]
        encoded = [c.encode(b, settings.extent) for c in cuts]
        total = sum(map(len, encoded))
    for _ in range(_BUDGET_ROUNDS):
        if total <= settings.max_bytes:
            break
        # Shrink every layer by the same share, least important features first.
        share = settings.max_bytes / total * 0.95
        for i, c in enumerate(cuts):
            if encoded[i]:
                kept[i] = int(kept[i] * share)
                encoded[i] = c.encode(b, settings.extent, kept[i])
        total = sum(map(len, encoded))
    return b"".join(encoded), None
