"""Spatial queries across the layers a caller may see: near, at/under, dig check, asset buffer.

Pure functions over a `Catalog` and the caller's `Access` scope: a layer above the scope is
never searched, and naming it is answered as an unknown collection. Distances, radii and
buffers are metres on the ground (`twin.metric`); answers list features nearest first.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader

from layers.catalog import Catalog, Lens
from layers.layer import Head, Layer, json_text, json_value
from layers.models import Bounds
from layers.raster import Dataset, MemoryRaster, Method, read_into_memory, sample_xy
from layers.schemas import GRID_LEVELS
from layers.store import RasterInfo
from layers.transform import transformer
from twin import budget, geojson, metric
from twin.errors import InvalidParameter, LimitExceeded

log = logging.getLogger("twin.queries")

GRIDS = "grids"
SITES = "sites"
DEPTH = "depth_m"
_GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}
)


# -- what a query found -------------------------------------------------------------------------


@dataclass(frozen=True)
class Matches:
    """Features of one layer that a query found, nearest first.

    `members` holds extra per-feature values (aligned with `rows`) written into each feature
    beside `collection` and `distance_m`, such as the length of a line inside a buffer.
    """

    layer: Layer
    rows: np.ndarray
    distance_m: np.ndarray
    members: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def collection(self) -> str:
        """The layer's collection id."""
        return self.layer.name

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, index: Sequence[int] | np.ndarray | None = None) -> list[dict[str, Any]]:
        """GeoJSON features (lon/lat) of the matches at `index` (default: all), each carrying
        `collection`, `distance_m` and the extra members."""
        idx = np.arange(len(self.rows)) if index is None else np.asarray(index, dtype=np.int64)
        feats = self.layer.features(self.rows[idx])
        for k, (f, i) in enumerate(zip(feats, idx.tolist(), strict=True)):
            extra = {name: values[i] for name, values in self.members.items()}
            feats[k] = {
                "type": "Feature",
                "id": f["id"],
                "collection": self.collection,
                "distance_m": round(float(self.distance_m[i]), 3),
                **extra,
                "geometry": f["geometry"],
                "properties": f["properties"],
            }
        return feats

    def feature_texts(self, index: Sequence[int] | np.ndarray) -> list[str]:
        """`features` as GeoJSON texts."""
        idx = np.asarray(index, dtype=np.int64)
        rows = self.rows[idx]
        picked = idx.tolist()
        # Distances are finite floats: their repr is their JSON.
        members = [
            ("collection", [json_text(self.collection)] * len(picked)),
            ("distance_m", [repr(round(d, 3)) for d in self.distance_m[idx].tolist()]),
        ]
        for name, values in self.members.items():
            members.append((name, [json_text(values[i]) for i in picked]))
        return geojson.features_json(self.layer, rows, self.layer.geometry[rows], members)

    def summary(self) -> dict[str, Any]:
        """Count and nearest distance of the layer's matches (and the shallowest cover depth of
        buried assets)."""
        out: dict[str, Any] = {
            "collection": self.collection,
            "count": len(self),
            "nearest_m": round(float(self.distance_m[0]), 3) if len(self) else None,
        }
        if is_buried(self.layer):
            depths = self.layer.floats(DEPTH)[self.rows]
            known = depths[~np.isnan(depths)]
            out["shallowest_depth_m"] = float(known.min()) if len(known) else None
        return out


def _merged(groups: Sequence[Matches], limit: int | None) -> tuple[np.ndarray, dict]:
    """Which group each of the first `limit` features (all groups nearest first, ties by
    collection then row) comes from, and the positions picked in each group."""
    dist = np.concatenate([g.distance_m for g in groups])
    group = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    pos = np.concatenate([np.arange(len(g)) for g in groups])
    order = np.lexsort((pos, group, dist))[:limit]
    picked = {i: pos[order[group[order] == i]] for i in range(len(groups))}
    return group[order], {i: p for i, p in picked.items() if len(p)}


def nearest_first(groups: Sequence[Matches], limit: int | None = None) -> list[dict[str, Any]]:
    """The features of all groups merged nearest first (ties by collection, then row), at most
    `limit` of them."""
    if not groups:
        return []
    sequence, picked = _merged(groups, limit)
    rendered = {i: iter(groups[i].features(p)) for i, p in picked.items()}
    return [next(rendered[int(i)]) for i in sequence]


def feature_collection_bytes(
    groups: Sequence[Matches], limit: int | None = None, members: dict[str, Any] | None = None
) -> bytes:
    """`feature_collection` as JSON bytes, with more top-level `members`; feature texts are
    spliced, not built as dicts and serialised again (the hot path of the answers)."""
    texts: list[str] = []
    if groups:
        sequence, picked = _merged(groups, limit)
        rendered = {i: iter(groups[i].feature_texts(p)) for i, p in picked.items()}
        texts = [next(rendered[int(i)]) for i in sequence]
    head = {
        "numberMatched": int(sum(len(g) for g in groups)),
        "numberReturned": len(texts),
        **(members or {}),
    }
    return geojson.feature_collection(texts, head)


def feature_collection(groups: Sequence[Matches], limit: int | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of every group's features, nearest first, with
    `numberMatched` and `numberReturned`."""
    feats = nearest_first(groups, limit)
    return {
        "type": "FeatureCollection",
        "numberMatched": int(sum(len(g) for g in groups)),
        "numberReturned": len(feats),
        "features": feats,
    }


# -- input checks -------------------------------------------------------------------------------


def check_point(lon: float, lat: float) -> shapely.Point:
    """The lon/lat point, or `InvalidParameter` naming the coordinate out of range."""
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise InvalidParameter(f"lon={lon} is outside -180..180 (degrees east)")
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise InvalidParameter(f"lat={lat} is outside -90..90 (degrees north)")
    return shapely.Point(lon, lat)


def check_distance(value: float, name: str, maximum: float) -> float:
    """A distance in metres between 0 and `maximum`; 4xx naming the parameter otherwise."""
    if not math.isfinite(value) or value < 0:
        raise InvalidParameter(f"{name}={value}: give a distance of 0 or more metres")
    if value > maximum:
        raise LimitExceeded(f"{name}={value:g} m is above the maximum of {maximum:g} m")
    return float(value)


def check_limit(limit: int | None, default: int, maximum: int) -> int:
    """The number of features to return; 4xx when below 1 or above the maximum."""
    if limit is None:
        return min(default, maximum)
    if limit < 1:
        raise InvalidParameter(f"limit={limit}: give 1 or more")
    if limit > maximum:
        raise LimitExceeded(f"limit={limit} is above the maximum of {maximum} features")
    return limit


def parse_geometry(data: Any, *, max_vertices: int, what: str = "geometry") -> shapely.Geometry:
    """A valid lon/lat shape from a GeoJSON geometry (or Feature) object; `InvalidParameter`
    or `LimitExceeded` naming what is wrong with it."""
    if isinstance(data, dict) and data.get("type") == "Feature":
        data = data.get("geometry")
    if not isinstance(data, dict) or "type" not in data:
        raise InvalidParameter(f"{what} must be a GeoJSON geometry object with a type")
    kind = data["type"]
    if not isinstance(kind, str) or kind not in _GEOMETRY_TYPES:
        raise InvalidParameter(
            f"{what} has GeoJSON type {kind!r}; send one Point, MultiPoint, LineString, "
            "MultiLineString, Polygon or MultiPolygon"
        )
    try:
        geom = shapely.from_geojson(json.dumps(data))
    except (shapely.errors.GEOSException, ValueError, TypeError) as exc:
        raise InvalidParameter(f"{what} is not a valid GeoJSON {kind}: {exc}") from None
    if geom is None or geom.is_empty:
        raise InvalidParameter(f"{what} is empty")
    n = shapely.get_num_coordinates(geom)
    if n > max_vertices:
        raise LimitExceeded(f"{what} has {n} vertices, more than the maximum of {max_vertices}")
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        raise InvalidParameter(f"{what} holds a coordinate that is not a finite number")
    if (np.abs(coords[:, 0]) > 180).any() or (np.abs(coords[:, 1]) > 90).any():
        raise InvalidParameter(
            f"{what} has coordinates outside longitude -180..180, latitude -90..90 "
            "(positions are lon, lat)"
        )
    if not geom.is_valid:
        raise InvalidParameter(f"{what} is not a valid {kind}: {shapely.is_valid_reason(geom)}")
    return geom


# -- layers a query may search ------------------------------------------------------------------


def is_buried(layer: Layer) -> bool:
    """Whether the layer's features lie below ground with a cover depth (`depth_m`): pipes,
    valves and custom underground layers; a site's depth is its excavation's, not buried."""
    return layer.name != SITES and DEPTH in layer.schema.field_names


def layers_for(
    catalog: Catalog,
    scope: Lens,
    collections: Iterable[str] | None,
    *,
    skip: Iterable[str] = (GRIDS,),
    around: tuple[shapely.Geometry, float] | None = None,
) -> list[Layer]:
    """The vector layers a query searches: those named (each visible at `scope`, else
    `UnknownCollection`), or every visible layer except `skip`; with `around` (a geometry and
    a distance in metres), each holding at least the features that may lie within that
    distance of it (a catalog that does not hold its layers reads just those)."""
    box = None if around is None or catalog.holds else _window(*around)
    return [
        catalog.around(h.name, scope, box) for h in heads_for(catalog, scope, collections, skip)
    ]


def heads_for(
    catalog: Catalog, scope: Lens, collections: Iterable[str] | None, skip: Iterable[str] = (GRIDS,)
) -> list[Head]:
    """What describes each layer a query searches (see `layers_for`), before reading any."""
    if collections is None:
        skipped = set(skip)
        return [h for n, h in catalog.heads(scope).items() if n not in skipped]
    rasters = catalog.rasters(scope)
    out = []
    for name in dict.fromkeys(collections):
        if name in rasters:
            raise InvalidParameter(
                f"{name!r} is a raster collection; name vector collections (see /query/at "
                "for raster values)"
            )
        out.append(catalog.head(name, scope))  # visible, else UnknownCollection
    return out


def _window(geometry: shapely.Geometry, distance_m: float) -> Bounds:
    """The lon/lat box holding every place within `distance_m` metres of `geometry`."""
    area = metric.search_area(metric.check_geometry(geometry), metric.check_distance(distance_m))
    b = shapely.bounds(area.boxes)
    return Bounds(
        float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())
    )


@dataclass(frozen=True)
class Caps:
    """How much one query may examine (`TWIN_QUERY_MAX_CANDIDATES`, `TWIN_QUERY_MAX_WORK`)."""

    max_candidates: int = 2_000_000
    max_work: int = 20_000_000

    def check(self, candidates: int, pairs: int) -> None:
        """`LimitExceeded` naming the cap when a search would examine `candidates` features or
        measure `pairs` distance pairs (features times the vertices of the shape near them),
        before any distance is measured."""
        if candidates > self.max_candidates:
            raise LimitExceeded(
                f"the query would examine {candidates} features, more than the maximum of "
                f"{self.max_candidates} (TWIN_QUERY_MAX_CANDIDATES); search a smaller area "
                "or fewer collections"
            )
        if pairs > self.max_work:
            raise LimitExceeded(
                f"the query would measure {pairs:.3g} distance pairs (features times the "
                f"vertices of the shape near them), more than the maximum of "
                f"{self.max_work:.3g} (TWIN_QUERY_MAX_WORK); send a simpler shape, a smaller "
                "buffer or fewer collections"
            )


def _search(
    layers: Iterable[Layer],
    geometry: shapely.Geometry,
    distance_m: float,
    caps: Caps | None = None,
) -> list[Matches]:
    distance_m = metric.check_distance(distance_m)
    geometry = metric.check_geometry(geometry)
    caps = caps or Caps()
    vertices = shapely.get_num_coordinates(geometry)
    layers = list(layers)
    area = metric.search_area(geometry, distance_m)  # for every layer
    found = [(layer, metric.candidates(layer, geometry, distance_m, area)) for layer in layers]
    candidates = sum(len(c) for _, c in found)
    pairs = candidates * (1 if distance_m == 0 else vertices)
    groups = []
    if distance_m > 0 and vertices > metric.PIECE_VERTICES:
        pieces = metric.Pieces.cut(geometry, distance_m)
        if pieces is not None:
            # A shape of many vertices: only the candidates near a piece are measured, each
            # against its nearest piece, which may mean trying every piece the shape folds
            # back near it: each costs about `folds` pieces.
            per_candidate = (pieces.folds + 3) * metric.PIECE_VERTICES
            most = int(caps.max_work / per_candidate)
            near = []
            for layer, cand in found:
                rows = pieces.near(layer, cand, most)
                if rows is None:
                    break
                near.append((layer, rows))
            else:
                n = sum(len(rows) for _, rows in near)
                caps.check(candidates, int(n * per_candidate))
                tree = pieces.tree
                for layer, cand in near:
                    rows, d = pieces.within(layer, cand, distance_m, tree)
                    if len(rows):
                        groups.append(Matches(layer, rows, d))
                return groups
    caps.check(candidates, pairs)
    for layer, cand in found:
        rows, d = metric.within(layer, geometry, distance_m, cand=cand)
        if len(rows):
            groups.append(Matches(layer, rows, d))
    return groups


@dataclass(frozen=True)
class _Cells:
    """Every cell of a grid as `{collection, id, level, code, ...}` (a client follows it to
    `/collections/{collection}/items/{id}`), and each row's place in the answer's order
    (district first, then by code)."""

    records: list[dict[str, Any]]
    place: np.ndarray


def _grid_cells(grid: Layer) -> _Cells:
    """The grid's `_Cells` (the grid is small and read on every `at`, dig check and buffer)."""
    props = grid.properties(np.arange(len(grid)))
    records = [
        {"collection": grid.name, "id": fid, **p}
        for fid, p in zip(grid.ids.tolist(), props, strict=True)
    ]
    rank = {level: i for i, level in enumerate(GRID_LEVELS)}
    order = sorted(
        range(len(records)),
        key=lambda i: (
            rank.get(str(records[i].get("level")), len(rank)),
            str(records[i].get("code")),
        ),
    )
    place = np.empty(len(records), dtype=np.int64)
    place[order] = np.arange(len(records))
    return _Cells(records, place)


def cell_records(grid: Layer) -> _Cells:
    """The grid's cells as answers give them, made once per grid layer."""
    return grid.derived(_Cells, lambda: _grid_cells(grid))


def cells_at(catalog: Catalog, scope: Lens, geometry: shapely.Geometry) -> list[dict[str, Any]]:
    """The management cells (every level, district first) that `geometry` meets, when the
    caller may see the grid."""
    if GRIDS not in catalog.heads(scope):
        return []
    grid = catalog.around(GRIDS, scope, Bounds(*shapely.bounds(geometry).tolist()))
    rows = grid.query(geometry, "intersects")
    if not len(rows):
        return []
    cells = cell_records(grid)
    rows = rows[np.argsort(cells.place[rows], kind="stable")]
    return [dict(cells.records[i]) for i in rows.tolist()]


# -- near ---------------------------------------------------------------------------------------


def near(
    catalog: Catalog,
    scope: Lens,
    point: shapely.Point,
    radius_m: float,
    collections: Iterable[str] | None = None,
    caps: Caps | None = None,
) -> list[Matches]:
    """Features within `radius_m` metres of `point`, one group per layer, nearest first."""
    searched = layers_for(catalog, scope, collections, around=(point, radius_m))
    return _search(searched, point, radius_m, caps)


# -- at / under ---------------------------------------------------------------------------------


class RasterReader:
    """The rasters `at` samples, opened once: held in memory (shared by all threads) when
    their bands fit in `max_memory` bytes, else an open dataset per thread (rasterio handles
    are not thread-safe); refreshed when a file changes. The server holds one (app state),
    so apps in one process share nothing."""

    def __init__(self) -> None:
        self._datasets = threading.local()
        self._in_memory: dict[str, tuple[str, MemoryRaster, Transformer]] = {}
        self._lock = threading.Lock()

    def _open(self, info: RasterInfo, max_memory: int = 0) -> tuple[Dataset, Transformer]:
        uri, stamp = info.location, info.version
        held = self._in_memory.get(uri)
        if held is not None and held[0] == stamp and held[1].nbytes <= max_memory:
            return held[1], held[2]
        cache: dict[str, tuple[str, DatasetReader, Transformer]] = (
            self._datasets.__dict__.setdefault("cache", {})
        )
        opened = cache.get(uri)
        if opened is None or opened[0] != stamp:
            if opened is not None:
                opened[1].close()
            ds = rasterio.open(uri)
            if ds.crs is None:
                ds.close()
                raise InvalidParameter(f"raster {info.name} has no coordinate reference system")
            opened = cache[uri] = (stamp, ds, _to_raster(ds.crs.to_wkt()))
        _, ds, to_raster = opened
        mem = read_into_memory(ds, max_memory) if max_memory > 0 else None
        if mem is not None:
            with self._lock:
                self._in_memory[uri] = (stamp, mem, to_raster)
            # This thread's file handle is not needed any more.
            cache.pop(uri)
            ds.close()
            return mem, to_raster
        return ds, to_raster

    def values(
        self, info: RasterInfo, point: shapely.Point, method: Method, *, max_memory: int = 0
    ) -> list[float | None]:
        """Every band's value of a raster collection at a lon/lat point (None: nodata or
        outside; no values at all when the file cannot be read). Rasters up to `max_memory`
        bytes are read into memory once and sampled there."""
        try:
            ds, to_raster = self._open(info, max_memory)
        except (OSError, RasterioIOError):
            log.warning("raster %s cannot be read at %s", info.name, info.location)
            return []
        x, y = to_raster.transform(point.x, point.y)
        xs, ys = np.array([x]), np.array([y])
        return [sample_xy(ds, xs, ys, method=method, band=b)[0] for b in range(1, ds.count + 1)]


@lru_cache(maxsize=64)
def _to_raster(crs_wkt: str) -> Transformer:
    return transformer("OGC:CRS84", crs_wkt)


@dataclass(frozen=True)
class AtResult:
    """What sits at / under a point: features by layer, grid cells, raster values."""

    point: shapely.Point
    tolerance_m: float
    groups: list[Matches]
    cells: list[dict[str, Any]]
    rasters: dict[str, list[float | None]]
    dem: str | None
    ground_m: float | None

    def _head(self) -> dict[str, Any]:
        return {
            "location": {"lon": self.point.x, "lat": self.point.y},
            "tolerance": self.tolerance_m,
            "ground_elevation_m": self.ground_m,
            "dem": self.dem,
            "cells": self.cells,
            "rasters": {
                name: {"value": values[0] if values else None, "values": values}
                for name, values in self.rasters.items()
            },
        }

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        """The JSON answer: `layers` holds a FeatureCollection per layer (its `limit` nearest
        features, and how many there are)."""
        return {
            **self._head(),
            "layers": {
                g.collection: {
                    "type": "FeatureCollection",
                    "numberMatched": len(g),
                    "numberReturned": min(len(g), len(g) if limit is None else limit),
                    "features": g.features(np.arange(len(g))[:limit]),
                }
                for g in self.groups
            },
        }

    def to_bytes(self, limit: int | None = None) -> bytes:
        """`to_json` as JSON bytes, feature texts spliced rather than built as dicts."""
        layers = []
        for g in self.groups:
            texts = g.feature_texts(np.arange(len(g))[:limit])
            layers.append(
                f'{json_text(g.collection)}:{{"type":"FeatureCollection",'
                f'"numberMatched":{len(g)},"numberReturned":{len(texts)},'
                f'"features":[{",".join(texts)}]}}'
            )
        head = json_text(self._head())[:-1]
        return f'{head},"layers":{{{",".join(layers)}}}}}'.encode()


def _underground(group: Matches, ground_m: float | None) -> Matches:
    """`group` with each buried feature's ground elevation, cover depth and top elevation."""
    depths = group.layer.json_column(DEPTH).values(group.rows)
    under = [
        {
            "ground_elevation_m": ground_m,
            "depth_m": d,
            "top_elevation_m": None if ground_m is None or d is None else round(ground_m - d, 3),
        }
        for d in depths
    ]
    return Matches(
        group.layer, group.rows, group.distance_m, {**group.members, "underground": under}
    )


def at(
    catalog: Catalog,
    scope: Lens,
    point: shapely.Point,
    tolerance_m: float = 1.0,
    *,
    dem: str = "dem",
    method: Method = "bilinear",
    raster_memory_bytes: int = 0,
    caps: Caps | None = None,
    rasters: RasterReader | None = None,
) -> AtResult:
    """Everything at `point`: features of every visible layer that contain it or pass within
    `tolerance_m`, the grid cells it falls in, and every visible raster's values there; buried
    assets carry the ground elevation from raster `dem` and their cover depth. Rasters up to
    `raster_memory_bytes` are sampled in memory, by `rasters` (the server's reader; a new one
    otherwise)."""
    reader = rasters if rasters is not None else RasterReader()
    values = {
        name: reader.values(info, point, method, max_memory=raster_memory_bytes)
        for name, info in catalog.rasters(scope).items()
    }
    ground = (values.get(dem) or [None])[0]
    groups = [
        _underground(g, ground) if is_buried(g.layer) else g
        for g in _search(
            layers_for(catalog, scope, None, around=(point, tolerance_m)), point, tolerance_m, caps
        )
    ]
    return AtResult(
        point,
        tolerance_m,
        groups,
        cells_at(catalog, scope, point),
        values,
        dem if dem in values else None,
        ground,
    )


# -- dig check ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigCheck:
    """What a drawn shape (an excavation, a corridor) meets, grouped by layer."""

    geometry: shapely.Geometry
    buffer_m: float
    area: shapely.Geometry
    groups: list[Matches]
    cells: list[dict[str, Any]]
    dig_depth_m: float | None
    shape_tolerance_m: float = 0.0
    """How far the posted shape was simplified before distances were measured (0: not at all;
    a thousandth of the buffer for a shape of many vertices)."""
    area_tolerance_m: float = 0.0
    """How far the shape was simplified before the area was drawn around it."""

    def to_bytes(self, limit: int | None = None) -> bytes:
        """A FeatureCollection of every conflict nearest first, with the conflicts by layer, the
        area searched and the cells it touches (JSON bytes)."""
        return feature_collection_bytes(
            self.groups,
            limit,
            {
                "buffer_m": self.buffer_m,
                "shape_tolerance_m": self.shape_tolerance_m,
                "area_tolerance_m": self.area_tolerance_m,
                "dig_depth_m": self.dig_depth_m,
                "area": json.loads(shapely.to_geojson(self.area)),
                "area_m2": round(float(metric.area_m2(self.area)), 2),
                "summary": [g.summary() for g in self.groups],
                "cells": self.cells,
            },
        )


def _dig_depth(group: Matches, dig_depth_m: float) -> Matches:
    """`group` with, for each buried feature, whether digging to `dig_depth_m` reaches it (None:
    its depth is unknown, so it must be located on site)."""
    depths = group.layer.json_column(DEPTH).values(group.rows)
    reached = [None if v is None else bool(v <= dig_depth_m) for v in depths]
    return Matches(group.layer, group.rows, group.distance_m, {**group.members, "reached": reached})


def intersects(
    catalog: Catalog,
    scope: Lens,
    geometry: shapely.Geometry,
    buffer_m: float = 0.0,
    collections: Iterable[str] | None = None,
    *,
    dig_depth_m: float | None = None,
    caps: Caps | None = None,
) -> DigCheck:
    """Features that meet `geometry` or lie within `buffer_m` metres of it, by layer, each with
    its nearest distance; buried ones say whether a dig to `dig_depth_m` reaches them.

    A shape of many vertices is first simplified by a thousandth of the buffer (points closer
    than that merged), which moves no distance by more than that, and the area is drawn around
    a shape simplified as far as needed to draw it cheaply (`metric.drawable`); both tolerances
    are in the answer. `LimitExceeded` before any work when the search would be too big."""
    searched = metric.reduced(geometry, buffer_m / 1000)
    shape_tolerance = buffer_m / 1000 if searched is not geometry else 0.0
    layers = layers_for(catalog, scope, collections, around=(searched, buffer_m))
    groups = _search(layers, searched, buffer_m, caps)
    if dig_depth_m is not None:
        groups = [_dig_depth(g, dig_depth_m) if is_buried(g.layer) else g for g in groups]
    area, area_tolerance = geometry, 0.0
    if buffer_m > 0:
        budget.check("drawing the buffer")
        drawn, area_tolerance = metric.drawable(geometry, buffer_m)
        area = metric.buffer(drawn, buffer_m)
    return DigCheck(
        geometry,
        buffer_m,
        area,
        groups,
        cells_at(catalog, scope, area),
        dig_depth_m,
        shape_tolerance,
        area_tolerance,
    )


# -- asset buffer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetBuffer:
    """The buffer of one asset and what of the other layers lies in it."""

    layer: Layer
    row: int
    distance_m: float
    polygon: shapely.Geometry
    groups: list[Matches]
    cells: list[dict[str, Any]]

    def to_bytes(self, limit: int | None = None) -> bytes:
        """A FeatureCollection of what lies in the buffer, nearest first, with the buffer polygon
        and the asset it was drawn around (JSON bytes)."""
        return feature_collection_bytes(
            self.groups,
            limit,
            {
                "asset": {
                    "collection": self.layer.name,
                    "id": json_value(self.layer.ids[self.row]),
                },
                "distance": self.distance_m,
                "buffer": json.loads(shapely.to_geojson(self.polygon)),
                "buffer_area_m2": round(float(metric.area_m2(self.polygon)), 2),
                "summary": [g.summary() for g in self.groups],
                "cells": self.cells,
            },
        )


def _inside(group: Matches, polygon: shapely.Geometry) -> Matches:
    """`group` with the length of each line (area of each polygon) inside `polygon`."""
    geoms = group.layer.geometry[group.rows]
    types = shapely.get_type_id(geoms)
    lines = (types == 1) | (types == 2) | (types == 5)
    polys = (types == 3) | (types == 6)
    members = dict(group.members)
    if lines.any() or polys.any():
        clipped = np.empty(len(geoms), dtype=object)
        clipped[lines | polys] = shapely.intersection(geoms[lines | polys], polygon)
        if lines.any():
            length = np.full(len(geoms), np.nan)
            length[lines] = metric.length_m(clipped[lines])
            members["length_inside_m"] = [None if np.isnan(v) else round(v, 3) for v in length]
        if polys.any():
            area = np.full(len(geoms), np.nan)
            area[polys] = metric.area_m2(clipped[polys])
            members["area_inside_m2"] = [None if np.isnan(v) else round(v, 3) for v in area]
    return Matches(group.layer, group.rows, group.distance_m, members)


def asset_buffer(
    catalog: Catalog,
    scope: Lens,
    collection: str,
    fid: str,
    distance_m: float,
    collections: Iterable[str] | None = None,
    caps: Caps | None = None,
) -> AssetBuffer:
    """The lon/lat polygon `distance_m` metres around feature `fid` of `collection`, and the
    features of the other layers (or of `collections`) within that distance of the asset, each
    with the length (area) of it inside the buffer."""
    layer = catalog.picked(collection, scope, [fid])
    row = layer.row(fid)
    geom = layer.geometry[row]
    if geom is None or geom.is_empty:
        raise InvalidParameter(f"feature {fid!r} of {collection!r} has no geometry to buffer")
    searched = layers_for(
        catalog, scope, collections, skip=(GRIDS, collection), around=(geom, distance_m)
    )
    found = _search(searched, geom, distance_m, caps)
    budget.check("drawing the buffer")
    polygon = metric.buffer(metric.drawable(geom, distance_m)[0], distance_m, quad_segs=32)
    groups = []
    for g in found:
        if g.layer.name == collection:  # the asset is not in its own buffer's answer
            keep = g.layer.ids[g.rows] != fid
            g = Matches(g.layer, g.rows[keep], g.distance_m[keep])
        if len(g):
            groups.append(_inside(g, polygon))
    return AssetBuffer(layer, row, distance_m, polygon, groups, cells_at(catalog, scope, polygon))
