"""Metres on the ground: distances, radius searches, buffers, lengths and areas of lon/lat shapes.

Everything here is pure and vectorised over shapely 2 arrays in lon/lat (EPSG:4326):

- distances are geodesic on the WGS 84 ellipsoid. The nearest points of two shapes are found in
  a local frame centred on the query (an equirectangular frame scaled by the ellipsoid's radii of
  curvature there, or the place's transverse Mercator zone for large shapes); the distance
  between those two points is then measured geodesically (`geodesic_m`);
- buffers are drawn in the transverse Mercator zone of the place (the CGCS2000 3-degree
  Gauss–Krüger zone inside China's extent, the UTM zone elsewhere), corrected for the zone's
  scale factor there;
- lengths are geodesic, segment by segment; areas come from an equal-area projection.

Transformers are built once per zone and cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Geod, Proj, Transformer

from layers.layer import Layer
from layers.transform import transformer
from twin import budget
from twin.errors import InvalidParameter, LimitExceeded

GEOD = Geod(ellps="WGS84")
_A = 6_378_137.0
_F = 1 / 298.257223563
_E2 = _F * (2 - _F)

_M_PER_DEG_LAT_MIN = math.pi / 180 * _A * (1 - _E2)  # meridian degree at the equator, the shortest
_M_PER_DEG_LON_EQ = math.pi / 180 * _A  # parallel degree at the equator (N >= a everywhere)

# Pairs farther apart than this, or near a pole, are measured by pyproj.Geod (Karney's exact
# algorithm, ~1 µs a pair); closer pairs by the mid-latitude formula below, 50× faster and within
# 1.3 mm of Geod up to 70° latitude (checked in tests/twin/test_metric.py).
_SHORT_M = 5_000.0
_POLAR_DEG = 80.0

# Query shapes wider than this (degrees) find nearest points in their conformal zone projection
# instead of the local frame, whose anisotropy grows with the distance from its centre.
LOCAL_EXTENT_DEG = 0.2

# China's extent, where the local Gauss–Krüger zones of CGCS2000 are the projection of the place.
_CGCS2000_AREA = (73.62, 16.7, 134.77, 53.56)

Coords = np.ndarray
CoordMap = Callable[[Coords], Coords]


# -- geodesic distance between points ---------------------------------------------------------


def _radii(lat_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Meridional (M) and prime-vertical (N) radii of curvature at a latitude."""
    w = np.sqrt(1 - _E2 * np.sin(lat_rad) ** 2)
    return _A * (1 - _E2) / w**3, _A / w


def geodesic_m(lon1: Any, lat1: Any, lon2: Any, lat2: Any) -> np.ndarray:
    """Geodesic distance in metres between point pairs (arrays of lon/lat degrees)."""
    lon1, lat1, lon2, lat2 = (np.asarray(v, dtype=np.float64) for v in (lon1, lat1, lon2, lat2))
    mid = np.radians((lat1 + lat2) / 2)
    m, n = _radii(mid)
    dlon = (lon2 - lon1 + 180.0) % 360.0 - 180.0
    d = np.asarray(np.hypot(n * np.cos(mid) * np.radians(dlon), m * np.radians(lat2 - lat1)))
    far = (d > _SHORT_M) | (np.abs(lat1) > _POLAR_DEG) | (np.abs(lat2) > _POLAR_DEG)
    if far.any():
        b = np.broadcast_arrays(lon1, lat1, lon2, lat2)
        d = np.array(d, dtype=np.float64, copy=True)
        d[far] = GEOD.inv(b[0][far], b[1][far], b[2][far], b[3][far])[2]
    return d


# -- projections of the place -----------------------------------------------------------------


def zone_epsg(lon: float, lat: float) -> int:
    """EPSG code of the transverse Mercator zone for a place: the CGCS2000 3-degree Gauss–Krüger
    zone inside China's extent (CM 75°E…135°E), else the WGS 84 UTM zone."""
    minx, miny, maxx, maxy = _CGCS2000_AREA
    if minx <= lon <= maxx and miny <= lat <= maxy:
        cm = min(max(round(lon / 3) * 3, 75), 135)
        return 4534 + (cm - 75) // 3
    zone = min(max(int((lon + 180) // 6) + 1, 1), 60)
    return (32600 if lat >= 0 else 32700) + zone


@dataclass(frozen=True, eq=False)
class Projection:
    """A metric projection with its transformers both ways, built once per EPSG code."""

    epsg: int
    name: str
    to_metric: Transformer
    to_lonlat: Transformer
    proj: Proj

    def forward(self, geometry: Any) -> Any:
        """`geometry` (shapely, lon/lat; one or an array) in this projection's metres."""
        return shapely.transform(geometry, self._fwd)

    def inverse(self, geometry: Any) -> Any:
        """`geometry` from this projection back to lon/lat."""
        return shapely.transform(geometry, self._inv)

    def scale(self, lon: float, lat: float) -> float:
        """Point scale factor (projected metres per metre on the ground) at a place."""
        return float(self.proj.get_factors(lon, lat).meridional_scale)

    def _fwd(self, c: Coords) -> Coords:
        x, y = self.to_metric.transform(c[:, 0], c[:, 1])
        return np.column_stack([x, y])

    def _inv(self, c: Coords) -> Coords:
        x, y = self.to_lonlat.transform(c[:, 0], c[:, 1])
        return np.column_stack([x, y])


@lru_cache(maxsize=64)
def projection(epsg: int) -> Projection:
    """The cached `Projection` of an EPSG code."""
    crs = CRS.from_epsg(epsg)
    return Projection(
        epsg,
        crs.name,
        transformer(4326, crs),
        transformer(crs, 4326),
        Proj(crs),
    )


def _centre(geometry: Any) -> tuple[float, float]:
    minx, miny, maxx, maxy = shapely.total_bounds(geometry)
    if not np.isfinite(minx):
        raise InvalidParameter("the geometry is empty")
    return (minx + maxx) / 2, (miny + maxy) / 2


def projection_for(geometry: Any) -> Projection:
    """The transverse Mercator zone of the place where `geometry` (lon/lat) lies."""
    return projection(zone_epsg(*_centre(geometry)))


@lru_cache(maxsize=1)
def _equal_area() -> Transformer:
    # Lambert cylindrical equal-area on the WGS 84 ellipsoid (EASE-Grid 2.0): areas are exact.
    return transformer(4326, 6933)


# -- the local frame in which nearest points are found ----------------------------------------


def local_frame(lon0: float, lat0: float) -> tuple[CoordMap, CoordMap]:
    """Maps lon/lat coordinates to metres east/north of (lon0, lat0) and back.

    An equirectangular frame scaled by the ellipsoid's radii of curvature at the centre: true to
    first order near it and, being affine in lon/lat, it keeps the stored straight segments
    straight, so nearest points found in it lie exactly on the shapes.
    """
    kx, ky = _scales(lat0)

    def fwd(c: Coords) -> Coords:
        return np.column_stack(
            [((c[:, 0] - lon0 + 180.0) % 360.0 - 180.0) * kx, (c[:, 1] - lat0) * ky]
        )

    def inv(c: Coords) -> Coords:
        return np.column_stack([c[:, 0] / kx + lon0, c[:, 1] / ky + lat0])

    return fwd, inv


def frame(geometry: Any) -> tuple[CoordMap, CoordMap]:
    """Maps lon/lat coordinates to a metric frame around `geometry` and back: the local frame
    for a small shape, the place's conformal zone projection for a wide one."""
    minx, miny, maxx, maxy = shapely.total_bounds(geometry)
    if max(maxx - minx, maxy - miny) > LOCAL_EXTENT_DEG:
        p = projection(zone_epsg((minx + maxx) / 2, (miny + maxy) / 2))
        return p._fwd, p._inv
    return local_frame((minx + maxx) / 2, (miny + maxy) / 2)


# -- distances and radius searches ------------------------------------------------------------


def check_distance(distance_m: float) -> float:
    """`distance_m` as a float; `InvalidParameter` unless it is a finite number >= 0."""
    d = float(distance_m)
    if not math.isfinite(d) or d < 0:
        raise InvalidParameter(f"a distance must be 0 or more metres, not {distance_m!r}")
    return d


def check_geometry(geometry: Any) -> shapely.Geometry:
    """`geometry`; `InvalidParameter` when it is missing or empty."""
    if not isinstance(geometry, shapely.Geometry) or geometry.is_empty:
        raise InvalidParameter("the query geometry is missing or empty")
    return geometry


def distances(geoms: Any, geometry: shapely.Geometry) -> np.ndarray:
    """Geodesic distance in metres from each of `geoms` (lon/lat) to `geometry`; 0 where they
    meet, NaN for missing or empty shapes."""
    geometry = check_geometry(geometry)
    geoms = np.atleast_1d(np.asarray(geoms, dtype=object))
    out = np.full(len(geoms), np.nan)
    ok = ~shapely.is_missing(geoms)
    ok[ok] = ~shapely.is_empty(geoms[ok])
    if ok.any():
        out[ok] = _distances(geoms[ok], geometry)
    return out


def _distances(geoms: np.ndarray, geometry: shapely.Geometry) -> np.ndarray:
    """`distances` for shapes known to be present and not empty."""
    if isinstance(geometry, shapely.Point):
        types = shapely.get_type_id(geoms)
        if (types == 0).all():
            c = shapely.get_coordinates(geoms)
            return geodesic_m(geometry.x, geometry.y, c[:, 0], c[:, 1])
        if (types == 1).all():
            return _point_to_linestrings(geoms, geometry)
        if _LINEAR[types].all():
            return _point_to_linear(geoms, types, geometry)
    fwd, inv = frame(geometry)
    lines = shapely.shortest_line(shapely.transform(geoms, fwd), shapely.transform(geometry, fwd))
    c = inv(shapely.get_coordinates(lines))
    return geodesic_m(c[0::2, 0], c[0::2, 1], c[1::2, 0], c[1::2, 1])


# By shapely type id (0 Point .. 7 GeometryCollection): LineString, LinearRing, Polygon,
# MultiLineString, MultiPolygon are linear; Polygon and MultiPolygon polygonal. Looked up by
# indexing, several times cheaper than `np.isin` on the few shapes of a query.
_LINEAR = np.isin(np.arange(8), (1, 2, 3, 5, 6))
_POLYGONAL = np.isin(np.arange(8), (3, 6))


def _point_to_linear(geoms: np.ndarray, types: np.ndarray, point: shapely.Point) -> np.ndarray:
    """Geodesic distance from a point to lines and polygons (0 inside a polygon): their parts
    and rings measured as lines, the least per shape."""
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    poly = _POLYGONAL[shapely.get_type_id(parts)]
    pieces, piece_of = parts[~poly], part_of[~poly]
    if poly.any():
        rings, ring_of = shapely.get_rings(parts[poly], return_index=True)
        pieces = np.concatenate([pieces, rings])
        piece_of = np.concatenate([piece_of, part_of[poly][ring_of]])
    out = np.full(len(geoms), np.inf)
    np.minimum.at(out, piece_of, _point_to_linestrings(pieces, point))
    polygons = _POLYGONAL[types]
    if polygons.any():
        inside = shapely.intersects_xy(geoms[polygons], point.x, point.y)
        out[np.flatnonzero(polygons)[inside]] = 0.0
    return out


def _point_to_linestrings(lines: np.ndarray, point: shapely.Point) -> np.ndarray:
    """Geodesic distance from a point to each LineString (or ring): the nearest point of every
    segment in the local frame centred on the point, measured geodesically, the least per line.
    Vectorised over all segments at once: the hot path of `near`."""
    lon0, lat0 = point.x, point.y
    kx, ky = _scales(lat0)
    c, owner = shapely.get_coordinates(lines, return_index=True)
    x = ((c[:, 0] - lon0 + 180.0) % 360.0 - 180.0) * kx
    y = (c[:, 1] - lat0) * ky
    seg = np.flatnonzero(owner[1:] == owner[:-1])
    ax, ay = x[seg], y[seg]
    dx, dy = x[seg + 1] - ax, y[seg + 1] - ay
    length2 = dx * dx + dy * dy
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip(np.where(length2 > 0, -(ax * dx + ay * dy) / length2, 0.0), 0.0, 1.0)
    d = geodesic_m(lon0, lat0, (ax + t * dx) / kx + lon0, (ay + t * dy) / ky + lat0)
    # Every line has at least one segment and segments come grouped by line, in order.
    seg_owner = owner[seg]
    starts = np.flatnonzero(np.concatenate(([True], seg_owner[1:] != seg_owner[:-1])))
    return np.minimum.reduceat(d, starts)


def _scales(lat0: float) -> tuple[float, float]:
    """Metres per degree of longitude and of latitude at a latitude (the local frame)."""
    phi = math.radians(lat0)
    w = math.sqrt(1 - _E2 * math.sin(phi) ** 2)
    kx = max(math.pi / 180 * _A / w * math.cos(phi), 1e-3)
    return kx, math.pi / 180 * _A * (1 - _E2) / w**3


def distance_m(a: shapely.Geometry, b: shapely.Geometry) -> float:
    """Geodesic distance in metres between two lon/lat shapes (0 when they meet)."""
    return float(distances(np.array([check_geometry(a)], dtype=object), b)[0])


@dataclass(frozen=True)
class SearchArea:
    """Where to look for what lies within a distance of a geometry: lon/lat `boxes` that surely
    hold all of it (two when the search crosses the antimeridian) and, when the search is
    small enough, `degrees`: a distance on the lon/lat plane that none of it lies beyond."""

    boxes: np.ndarray
    degrees: float | None = None


def search_area(geometry: shapely.Geometry, distance_m: float) -> SearchArea:
    """The `SearchArea` of everything within `distance_m` metres of `geometry` (lon/lat).

    A degree of latitude is at least `_M_PER_DEG_LAT_MIN` metres long and a degree of longitude
    at least `_M_PER_DEG_LON_EQ * cos(lat)`, so the boxes grow by `distance_m` over those at the
    most poleward latitude reached, and a path of `distance_m` inside them moves at most
    `distance_m / min(both)` degrees on the lon/lat plane (`degrees`, with slack for rounding
    and for the geodesic bending out of the boxes by a hair)."""
    minx, miny, maxx, maxy = shapely.bounds(geometry).tolist()
    # 1e-9 relative slack and 1 µ° absolute slack cover rounding; the bounds themselves are exact
    # lower bounds of metres per degree, so the boxes never miss a feature.
    dlat = distance_m / _M_PER_DEG_LAT_MIN * (1 + 1e-9) + 1e-6
    top = min(max(abs(miny - dlat), abs(maxy + dlat)), 90.0)
    cos_top = math.cos(math.radians(top))
    if cos_top < 1e-6 or distance_m / (_M_PER_DEG_LON_EQ * cos_top) >= 180:
        world = shapely.box([-180.0], [max(miny - dlat, -90)], [180.0], [min(maxy + dlat, 90)])
        return SearchArea(world)
    dlon = distance_m / (_M_PER_DEG_LON_EQ * cos_top) * (1 + 1e-9) + 1e-6
    x0, x1, y0, y1 = minx - dlon, maxx + dlon, max(miny - dlat, -90.0), min(maxy + dlat, 90.0)
    if x1 - x0 >= 360:
        return SearchArea(shapely.box([-180.0], [y0], [180.0], [y1]))
    if x0 >= -180 and x1 <= 180:
        box = np.array([shapely.box(x0, y0, x1, y1)], dtype=object)
        if x1 - x0 >= 90 or cos_top < 1e-3:
            return SearchArea(box)
        per_deg = min(_M_PER_DEG_LAT_MIN, _M_PER_DEG_LON_EQ * cos_top)
        return SearchArea(box, distance_m / per_deg * (1 + 1e-3) + 1e-9)
    boxes = [(x0, y0, x1, y1)]
    if x0 < -180:
        boxes.append((x0 + 360, y0, 180.0, y1))
    if x1 > 180:
        boxes.append((-180.0, y0, x1 - 360, y1))
    b = np.array(boxes)
    return SearchArea(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]))


def candidates(
    layer: Layer,
    geometry: shapely.Geometry,
    distance_m: float,
    area: SearchArea | None = None,
) -> np.ndarray:
    """Sorted rows of `layer` that may lie within `distance_m` of `geometry` (`area`: its
    `search_area`, when already made)."""
    if len(layer) == 0:
        return np.array([], dtype=np.int64)
    if area is None:
        area = search_area(geometry, distance_m)
    if len(area.boxes) > 1:
        return np.unique(layer.tree.query(area.boxes)[1]).astype(np.int64)
    rows = np.sort(layer.tree.query(area.boxes[0])).astype(np.int64)
    if area.degrees is not None and 0 < len(rows) <= _FEW_CANDIDATES:
        # A few boxes met, as when looking right at a point: most are long lines passing by.
        # GEOS drops the shapes farther than `degrees` on the lon/lat plane, none of which can
        # be within `distance_m` on the ground, so that often nothing is left to measure.
        rows = rows[shapely.dwithin(layer.geometry[rows], geometry, area.degrees)]
    return rows


# Up to this many candidates are sifted by GEOS before their exact distances are measured: the
# measuring costs about the same for one shape as for a few, so sifting pays when it often
# leaves none (`at`: 1 m around a point, -25 % against no sifting), and costs more than it
# saves on the many candidates of a radius search (`near` 100 m: +7 % when always sifted).
_FEW_CANDIDATES = 16


def within(
    layer: Layer,
    geometry: shapely.Geometry,
    distance_m: float,
    rows: np.ndarray | None = None,
    area: SearchArea | None = None,
    *,
    cand: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `layer` within `distance_m` metres of `geometry` (lon/lat), and their geodesic
    distances, nearest first (ties by row). `rows` limits the search to those rows; `area` is
    the `search_area` of the geometry and distance, when several layers are searched; `cand`
    the `candidates`, when already found. Measured in chunks, between which the request's
    deadline is checked; at distance 0 of a shape, what meets it is found by GEOS alone."""
    distance_m = check_distance(distance_m)
    geometry = check_geometry(geometry)
    if cand is None:
        cand = candidates(layer, geometry, distance_m, area)
    if rows is not None:
        cand = cand[np.isin(cand, np.asarray(rows, dtype=np.int64))]
    if len(cand) == 0:
        return cand, np.array([], dtype=np.float64)
    if distance_m == 0 and not isinstance(geometry, shapely.Point):
        shapely.prepare(geometry)
        cand = cand[shapely.intersects(layer.geometry[cand], geometry)]
        return cand, np.zeros(len(cand))
    # The tree holds no missing or empty shapes, so the candidates need no such check.
    step = max(1, _CHUNK_WORK // shapely.get_num_coordinates(geometry))
    d = np.empty(len(cand))
    for start in range(0, len(cand), step):
        budget.check("measuring distances")
        part = cand[start : start + step]
        d[start : start + step] = _distances(layer.geometry[part], geometry)
    keep = d <= distance_m
    cand, d = cand[keep], d[keep]
    order = np.lexsort((cand, d))
    return cand[order], d[order]


_CHUNK_WORK = 2_000_000
"""Candidates times query vertices measured between two checks of the request's deadline."""


# -- a shape of many vertices, searched piece by piece -----------------------------------------

PIECE_VERTICES = 32
"""Most vertices of one piece of a shape searched piece by piece (`Pieces`)."""
_PIECES_AT_ONCE = 16
"""Pieces whose nearby features are looked up in one query of a layer's tree."""
_NEAREST_AT_ONCE = 1024
"""Candidates measured against their nearest pieces between two checks of the deadline."""


@dataclass(frozen=True)
class Pieces:
    """A shape of many vertices cut into pieces of at most `PIECE_VERTICES` vertices (runs of a
    line or ring, neighbouring points), indexed in the metric frame of the whole shape: a
    feature is measured against its nearest piece only, so a search costs its candidates times
    a piece, not times all the shape's vertices. The nearest point of the shape to a feature
    lies on its nearest piece, so the distances are the same as measured against the whole
    shape. Each piece also has a lon/lat box holding everything within the search distance of
    it (`folds` counts how often they meet: how costly a buffer is to draw)."""

    geometry: shapely.Geometry
    parts: np.ndarray
    projected: np.ndarray
    """The parts in the metric frame of the whole shape (`frame`)."""
    boxes: np.ndarray
    vertices: np.ndarray
    fwd: CoordMap
    inv: CoordMap

    @classmethod
    def cut(cls, geometry: shapely.Geometry, distance_m: float) -> Pieces | None:
        """The pieces of `geometry` for a search `distance_m` around it; None when a box would
        reach a pole or cross the antimeridian (such a shape is searched whole)."""
        parts = shapely.get_parts(geometry)
        types = shapely.get_type_id(parts)
        pieces: list[Any] = []
        points = shapely.get_coordinates(parts[types == 0])
        if len(points):
            points = points[np.lexsort((points[:, 1], points[:, 0]))]
            groups = np.arange(len(points)) // PIECE_VERTICES
            pieces.extend(shapely.multipoints(points, indices=groups))
        lines = list(parts[(types == 1) | (types == 2)])
        if _POLYGONAL[types].any():
            lines.extend(shapely.get_rings(parts[_POLYGONAL[types]]))
        for line in lines:
            c = shapely.get_coordinates(line)
            for start in range(0, max(len(c) - 1, 1), PIECE_VERTICES - 1):
                pieces.append(shapely.linestrings(c[start : start + PIECE_VERTICES]))
        if not pieces:
            return None
        arr = np.array(pieces, dtype=object)
        b = shapely.bounds(arr)
        dlat = distance_m / _M_PER_DEG_LAT_MIN * (1 + 1e-9) + 1e-6
        top = max(abs(b[:, 1].min() - dlat), abs(b[:, 3].max() + dlat))
        if top >= 89.0:
            return None
        dlon = distance_m / (_M_PER_DEG_LON_EQ * math.cos(math.radians(top))) * (1 + 1e-9) + 1e-6
        x0, x1 = b[:, 0] - dlon, b[:, 2] + dlon
        if x0.min() < -180 or x1.max() > 180:
            return None
        boxes = shapely.box(x0, b[:, 1] - dlat, x1, b[:, 3] + dlat)
        fwd, inv = frame(geometry)
        projected = shapely.transform(arr, fwd)
        return cls(geometry, arr, projected, boxes, shapely.get_num_coordinates(arr), fwd, inv)

    @property
    def polygonal(self) -> bool:
        """Whether the shape covers ground (what meets it lies at 0 m, however far inside)."""
        return bool(_POLYGONAL[shapely.get_type_id(shapely.get_parts(self.geometry))].any())

    @property
    def folds(self) -> float:
        """How often the shape comes back within the search distance of itself: for each piece,
        the pieces other than itself and its neighbours whose boxes meet its own, on average."""
        a, b = shapely.STRtree(self.boxes).query(self.boxes)
        return float((np.abs(a - b) > 1).sum()) / len(self.boxes)

    def near(self, layer: Layer, cand: np.ndarray, most: int) -> np.ndarray | None:
        """The `cand` rows whose boxes meet a piece's box (the others lie farther than the
        search distance from every piece), looked up a few pieces at a time; None as soon as
        more than `most` (piece, feature) pairs have met."""
        met: list[np.ndarray] = []
        pairs = 0
        for start in range(0, len(self.boxes), _PIECES_AT_ONCE):
            rows = layer.tree.query(self.boxes[start : start + _PIECES_AT_ONCE])[1]
            pairs += len(rows)
            if pairs > most:
                return None
            met.append(rows)
        return np.intersect1d(cand, np.concatenate(met)) if met else cand[:0]

    @property
    def tree(self) -> shapely.STRtree:
        """The pieces in the metric frame, indexed."""
        return shapely.STRtree(self.projected)

    def within(
        self, layer: Layer, cand: np.ndarray, distance_m: float, tree: shapely.STRtree | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of `layer` among `cand` (those `near` the pieces) within `distance_m` metres of
        the shape, and their distances, nearest first (ties by row): each measured against its
        nearest piece on the frame's plane (found through the pieces' tree), the plane on
        which `within` measures against the whole shape, so the same distances; what lies
        inside a polygonal shape at 0, however far from its rings. In chunks, between which
        the request's deadline is checked."""
        tree = tree if tree is not None else self.tree
        if self.polygonal and len(cand):
            inside = layer.tree.query(self.geometry, predicate="intersects")
            cand = np.union1d(cand, inside.astype(np.int64))
        best = np.full(len(cand), np.inf)
        step = _NEAREST_AT_ONCE
        for start in range(0, len(cand), step):
            budget.check("measuring distances")
            part = shapely.transform(layer.geometry[cand[start : start + step]], self.fwd)
            which, piece = tree.query_nearest(part, all_matches=False)
            lines = shapely.shortest_line(part[which], self.projected[piece])
            c = self.inv(shapely.get_coordinates(lines))
            best[start + which] = geodesic_m(c[0::2, 0], c[0::2, 1], c[1::2, 0], c[1::2, 1])
        if self.polygonal and len(cand):
            shapely.prepare(self.geometry)
            best[shapely.intersects(layer.geometry[cand], self.geometry)] = 0.0
        keep = best <= distance_m
        rows, best = cand[keep], best[keep]
        order = np.lexsort((rows, best))
        return rows[order], best[order]


# -- shapes made fit for their work -----------------------------------------------------------


def reduced(geometry: shapely.Geometry, tolerance_m: float) -> shapely.Geometry:
    """`geometry` with detail finer than `tolerance_m` metres taken out: points of a MultiPoint
    merged on a grid of that size, lines and rings simplified (topology kept), so that nothing
    of it moves by more than `tolerance_m`. A shape of a few vertices, or a tolerance of 0, is
    returned as it is."""
    if tolerance_m <= 0 or shapely.get_num_coordinates(geometry) <= _FEW_VERTICES:
        return geometry
    # A degree is at least this many metres along either axis, for the grid and the tolerance to
    # stay within `tolerance_m` on the ground (longitude degrees shrink towards the poles).
    _, bottom, _, top = shapely.bounds(geometry).tolist()
    lat = min(max(abs(bottom), abs(top)), 89.9)
    per_deg = max(min(_M_PER_DEG_LAT_MIN, _M_PER_DEG_LON_EQ * math.cos(math.radians(lat))), 1.0)
    tol_deg = tolerance_m / per_deg
    if shapely.get_type_id(geometry) in (0, 4):  # Point, MultiPoint
        # Snapped to cells of `tol_deg / sqrt 2` across, a point moves by at most `tol_deg / 2`.
        out = shapely.set_precision(geometry, tol_deg / math.sqrt(2))
        return shapely.extract_unique_points(out) if not out.is_empty else geometry
    # Polygons keep their topology (valid in, valid out); lines need none, and without it a line
    # folding onto itself is simplified ten times faster.
    polygonal = bool(_POLYGONAL[shapely.get_type_id(geometry)])
    out = shapely.simplify(geometry, tol_deg, preserve_topology=polygonal)
    return geometry if out.is_empty else out


_FEW_VERTICES = 64
"""Shapes up to this many vertices are used as they are: reducing them saves nothing."""
DRAWN_VERTICES = 128
"""Most vertices of a shape a buffer is drawn around (`drawable`): GEOS nodes every offset
curve against those it meets, so a shape folding back on itself within the buffer (a zig-zag,
a line back and forth, dense points) costs the square of its vertices."""


def folds(geometry: shapely.Geometry, distance_m: float) -> float:
    """`Pieces.folds` of the shape for a search of `distance_m` (0 for a shape of few vertices,
    infinite for one whose pieces cannot be boxed)."""
    if shapely.get_num_coordinates(geometry) <= PIECE_VERTICES:
        return 0.0
    pieces = Pieces.cut(geometry, distance_m)
    return math.inf if pieces is None else pieces.folds


_FOLDS_DRAWN_WHOLE = 2.0
"""A shape coming back near itself at most this often (per piece) is buffered as it is."""


def drawable(geometry: shapely.Geometry, distance_m: float) -> tuple[shapely.Geometry, float]:
    """`geometry` as it is when it does not fold back on itself within `distance_m` (drawing the
    buffer of a long winding road costs about its vertices), else reduced (`reduced`) until a
    buffer around it is cheap to draw: a thousandth of the distance first, then coarser, up to
    a tenth of it; with the tolerance used. `LimitExceeded` when even that leaves more than
    `DRAWN_VERTICES` vertices."""
    if folds(geometry, distance_m) <= _FOLDS_DRAWN_WHOLE:
        return geometry, 0.0
    tolerance = distance_m / 1000
    while True:
        out = reduced(geometry, tolerance)
        n = shapely.get_num_coordinates(out)
        if n <= DRAWN_VERTICES:
            return out, tolerance if out is not geometry else 0.0
        if tolerance >= distance_m / 10:
            raise LimitExceeded(
                f"a buffer of {distance_m:g} m cannot be drawn around this shape: it keeps {n} "
                f"vertices when simplified by {tolerance:g} m, more than {DRAWN_VERTICES}; "
                "send a simpler shape or a smaller buffer"
            )
        tolerance = min(tolerance * 4, distance_m / 10)


# -- buffers, lengths, areas ------------------------------------------------------------------


def buffer(geometry: shapely.Geometry, distance_m: float, quad_segs: int = 16) -> shapely.Geometry:
    """The lon/lat polygon of everything within `distance_m` metres of `geometry`, drawn in the
    place's transverse Mercator zone at its scale factor there."""
    distance_m = check_distance(distance_m)
    geometry = check_geometry(geometry)
    lon0, lat0 = _centre(geometry)
    p = projection(zone_epsg(lon0, lat0))
    grown = shapely.buffer(
        p.forward(geometry), distance_m * p.scale(lon0, lat0), quad_segs=quad_segs
    )
    out = p.inverse(grown)
    return out if out.is_valid else shapely.make_valid(out)


def _lines_of(geoms: np.ndarray) -> np.ndarray:
    """Polygons as their boundaries; other shapes unchanged."""
    out = geoms.copy()
    types = shapely.get_type_id(geoms)
    poly = (types == 3) | (types == 6)
    if poly.any():
        out[poly] = shapely.boundary(geoms[poly])
    return out


def length_m(geoms: Any) -> Any:
    """Geodesic length in metres of lines (perimeter of polygons, 0 for points); one value per
    shape for an array, a float for one shape."""
    arr = np.asarray(geoms, dtype=object)
    one = arr.ndim == 0
    arr = np.atleast_1d(arr)
    parts, part_of = shapely.get_parts(_lines_of(arr), return_index=True)
    coords, coord_of = shapely.get_coordinates(parts, return_index=True)
    same = coord_of[1:] == coord_of[:-1]
    a, b = coords[:-1][same], coords[1:][same]
    seg = geodesic_m(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
    per_part = np.bincount(coord_of[:-1][same], weights=seg, minlength=len(parts))
    out = np.bincount(part_of, weights=per_part, minlength=len(arr)).astype(np.float64)
    return float(out[0]) if one else out


def area_m2(geoms: Any) -> Any:
    """Area in square metres on the ellipsoid (0 for points and lines); one value per shape for
    an array, a float for one shape."""
    arr = np.asarray(geoms, dtype=object)
    one = arr.ndim == 0
    arr = np.atleast_1d(arr)
    tr = _equal_area()

    def fwd(c: Coords) -> Coords:
        x, y = tr.transform(c[:, 0], c[:, 1])
        return np.column_stack([x, y])

    out = np.nan_to_num(shapely.area(shapely.transform(arr, fwd)), nan=0.0)
    return float(out[0]) if one else out
