"""Geometry checks and repairs, over whole arrays with shapely 2.

What can be saved is repaired and noted (invalid polygons through `make_valid`, geometry
collections of one kind made multi-part, heights dropped, polygon rings turned
counter-clockwise as RFC 7946 asks); what cannot is rejected with its row and a reason
(missing or empty geometry, non-finite or out-of-range coordinates, a geometry of the wrong
family, a line or polygon that collapses). Multi-part geometries stay whole: one source
record is one feature. A row rejected for its coordinates also names the first number at
fault, as the file wrote it (`coordinate 1e+308 is out of range`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import shapely

from importers.crs import MAX_COORDINATE
from layers.models import GeometryFamily

# shapely type ids
_POINT, _LINE, _RING, _POLYGON, _MPOINT, _MLINE, _MPOLYGON, _COLLECTION = range(8)
_ALLOWED = {
    GeometryFamily.POINT: {_POINT, _MPOINT},
    GeometryFamily.LINE: {_LINE, _MLINE},
    GeometryFamily.POLYGON: {_POLYGON, _MPOLYGON},
    GeometryFamily.ANY: {_POINT, _LINE, _POLYGON, _MPOINT, _MLINE, _MPOLYGON},
}
_FAMILY_OF = {
    _POINT: GeometryFamily.POINT,
    _MPOINT: GeometryFamily.POINT,
    _LINE: GeometryFamily.LINE,
    _RING: GeometryFamily.LINE,
    _MLINE: GeometryFamily.LINE,
    _POLYGON: GeometryFamily.POLYGON,
    _MPOLYGON: GeometryFamily.POLYGON,
}
_NAMES = {
    GeometryFamily.POINT: "point",
    GeometryFamily.LINE: "line",
    GeometryFamily.POLYGON: "polygon",
    GeometryFamily.ANY: "any-geometry",
}
_TYPE_NAMES = {
    _POINT: "Point",
    _LINE: "LineString",
    _RING: "LinearRing",
    _POLYGON: "Polygon",
    _MPOINT: "MultiPoint",
    _MLINE: "MultiLineString",
    _MPOLYGON: "MultiPolygon",
    _COLLECTION: "GeometryCollection",
}
_COORDS_IN_REASON = re.compile(r"\s*\[.*\]\s*$")


@dataclass
class GeometryCheck:
    """Repaired geometries and what happened to each row."""

    geometry: np.ndarray
    rejected: dict[str, np.ndarray] = field(default_factory=dict)
    """reason -> row numbers (0-based)"""
    repaired: dict[str, np.ndarray] = field(default_factory=dict)
    """reason -> row numbers (0-based)"""
    normalised: dict[str, int] = field(default_factory=dict)
    """what was made uniform without changing the shape -> how many rows"""
    wrong_family: int = 0
    """rows rejected because their geometry is of another family"""
    details: dict[int, str] = field(default_factory=dict)
    """row (0-based) -> that row's own wording of its rejection, where it has one"""

    @property
    def keep(self) -> np.ndarray:
        """Boolean mask of the rows that survive."""
        mask = np.ones(len(self.geometry), dtype=bool)
        for rows in self.rejected.values():
            mask[rows] = False
        return mask


def _add(d: dict[str, np.ndarray], reason: str, rows: np.ndarray) -> None:
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows):
        d[reason] = np.concatenate([d[reason], rows]) if reason in d else rows


def _of_family(
    geom: shapely.Geometry, family: GeometryFamily, *, strict: bool = False
) -> shapely.Geometry | None:
    """The parts of `geom` of `family` as one (multi-part) geometry, or None if it has none
    (or, when `strict`, if it has parts of another family too)."""
    parts = shapely.get_parts(geom)
    if strict and family is not GeometryFamily.ANY:
        kinds = {_FAMILY_OF.get(int(t)) for t in shapely.get_type_id(parts)}
        if kinds != {family}:
            return None
    if family is GeometryFamily.ANY:
        families = {_FAMILY_OF.get(int(t)) for t in shapely.get_type_id(parts)}
        if len(families) != 1 or None in families:
            return None
        family = families.pop()  # type: ignore[assignment]
    keep = [p for p in parts if _FAMILY_OF.get(int(shapely.get_type_id(p))) is family]
    keep = [p for p in keep if not p.is_empty]
    if not keep:
        return None
    if family is GeometryFamily.POINT:
        return keep[0] if len(keep) == 1 else shapely.multipoints(keep)
    if family is GeometryFamily.LINE:
        keep = [shapely.LineString(p.coords) for p in keep]
        return keep[0] if len(keep) == 1 else shapely.multilinestrings(keep)
    polys = [q for p in keep for q in shapely.get_parts(p)]
    return polys[0] if len(polys) == 1 else shapely.multipolygons(polys)


# Faults of one coordinate, most telling first, and how a rejection words each.
_FAULTS = (
    lambda v: f"coordinate {v} is not a finite number",
    lambda v: f"coordinate {v:g} is out of range",
    lambda v: f"longitude {v:g} is outside -180..180",
    lambda v: f"latitude {v:g} is outside -90..90",
    lambda v: "coordinates fall outside longitude/latitude once converted",
)


def _coordinate_faults(raw: np.ndarray, lonlat: np.ndarray, rows: np.ndarray) -> dict[int, str]:
    """For each of `rows`, its first coordinate at fault, in words (see `_FAULTS`).

    Non-finite and absurd numbers are quoted from `raw`, the geometries as the file holds
    them; longitude and latitude out of range from `lonlat`, the same geometries converted.
    """
    if not len(rows):
        return {}
    xy, owner = shapely.get_coordinates(lonlat[rows], return_index=True)
    src = shapely.get_coordinates(raw[rows])
    if src.shape != xy.shape:  # the conversion changed the vertices: quote lon/lat only
        src = xy
    with np.errstate(invalid="ignore"):
        faults = np.stack(
            [
                ~np.isfinite(src),
                np.abs(src) > MAX_COORDINATE,
                np.column_stack([np.abs(xy[:, 0]) > 180, np.zeros(len(xy), dtype=bool)]),
                np.column_stack([np.zeros(len(xy), dtype=bool), np.abs(xy[:, 1]) > 90]),
                ~np.isfinite(xy),
            ]
        )  # fault kind, vertex, axis
    kind = np.where(faults.any(axis=2), np.arange(len(_FAULTS))[:, None], len(_FAULTS)).min(0)
    faulty = np.flatnonzero(kind < len(_FAULTS))
    # the first faulty vertex of each row with the most telling fault among them
    order = faulty[np.lexsort((faulty, kind[faulty], owner[faulty]))]
    first = order[np.unique(owner[order], return_index=True)[1]]
    out = {}
    for v, k in zip(first.tolist(), kind[first].tolist(), strict=True):
        axis = int(np.argmax(faults[k, v]))
        value = float((src if k < 2 else xy)[v, axis])
        out[int(rows[owner[v]])] = _FAULTS[k](value)
    return out


def repair(
    geometry: np.ndarray, family: GeometryFamily, *, raw: np.ndarray | None = None
) -> GeometryCheck:
    """Check and repair lon/lat geometries for a layer of `family` (see the module docstring).

    `raw` holds the same rows as the file wrote them, before any change of CRS, for
    rejections to quote the file's own numbers (default: `geometry` itself).
    """
    g = np.asarray(geometry, dtype=object).copy()
    source = g if raw is None else np.asarray(raw, dtype=object)
    n = len(g)
    check = GeometryCheck(g)
    rows = np.arange(n)
    alive = ~shapely.is_missing(g)
    _add(check.rejected, "no geometry (missing or unreadable)", rows[~alive])
    if n == 0:
        return check
    z = alive & shapely.has_z(g)
    if z.any():
        g[z] = shapely.force_2d(g[z])
        check.normalised["heights (Z) dropped"] = int(z.sum())
    empty = alive & shapely.is_empty(g)
    _add(check.rejected, "empty geometry", rows[empty])
    alive &= ~empty
    b = shapely.bounds(g)
    finite = np.isfinite(b).all(axis=1)
    fault = alive & ~finite
    _add(check.rejected, "coordinates are not finite numbers", rows[fault])
    alive &= finite
    with np.errstate(invalid="ignore"):
        inside = (b[:, 0] >= -180) & (b[:, 2] <= 180) & (b[:, 1] >= -90) & (b[:, 3] <= 90)
    _add(check.rejected, "coordinates outside longitude/latitude", rows[alive & ~inside])
    check.details.update(_coordinate_faults(source, g, rows[(alive & ~inside) | fault]))
    alive &= inside

    types = shapely.get_type_id(g)
    odd = np.flatnonzero(alive & ((types == _COLLECTION) | (types == _RING)))
    for i in odd.tolist():
        part = _of_family(g[i], family, strict=True)
        if part is None:
            _add(check.rejected, "geometry collection of mixed or wrong kinds", np.array([i]))
            alive[i] = False
        else:
            g[i] = part
            what = f"{part.geom_type} made from a {_TYPE_NAMES[int(types[i])]}"
            _add(check.repaired, what, np.array([i]))
    types = shapely.get_type_id(g)
    allowed = np.isin(types, list(_ALLOWED[family]))
    wrong = alive & ~allowed
    for t in np.unique(types[wrong]).tolist():
        reason = f"{_TYPE_NAMES.get(t, 'other')} geometry in a {_NAMES[family]} layer"
        _add(check.rejected, reason, rows[wrong & (types == t)])
    check.wrong_family = int(wrong.sum())
    alive &= allowed

    idx = np.flatnonzero(alive)
    invalid = idx[~shapely.is_valid(g[idx])]
    if len(invalid):
        reasons = shapely.is_valid_reason(g[invalid])
        fixed = shapely.make_valid(g[invalid], method="structure", keep_collapsed=False)
        for i, reason, new in zip(invalid.tolist(), reasons.tolist(), fixed.tolist(), strict=True):
            why = _COORDS_IN_REASON.sub("", str(reason)) or "invalid"
            if why == "Invalid Coordinate":  # NaN or infinity among the vertices
                _add(check.rejected, "coordinates are not finite numbers", np.array([i]))
                check.details.update(_coordinate_faults(source, g, np.array([i])))
                alive[i] = False
                continue
            target = (
                family
                if family is not GeometryFamily.ANY
                else _FAMILY_OF.get(int(shapely.get_type_id(g[i])), GeometryFamily.ANY)
            )
            part = None if new is None or new.is_empty else _of_family(new, target)
            if part is None or not shapely.is_valid(part):
                what = {
                    GeometryFamily.LINE: "a line with fewer than 2 distinct points",
                    GeometryFamily.POLYGON: "a polygon with no area",
                    GeometryFamily.POINT: "an invalid point",
                }.get(target, "an invalid geometry")
                _add(check.rejected, f"{what} ({why})", np.array([i]))
                alive[i] = False
            else:
                g[i] = part
                _add(check.repaired, f"invalid geometry made valid ({why})", np.array([i]))

    poly = np.flatnonzero(alive & np.isin(shapely.get_type_id(g), [_POLYGON, _MPOLYGON]))
    if len(poly):
        oriented = shapely.orient_polygons(g[poly], exterior_cw=False)
        changed = ~shapely.equals_exact(oriented, g[poly], tolerance=0.0)
        if changed.any():
            g[poly[changed]] = oriented[changed]
            check.normalised["polygon rings turned counter-clockwise"] = int(changed.sum())
    check.geometry = g
    return check
