"""Coordinate reference systems on the wire (OGC API Features Part 2).

Features are held in lon/lat (CRS84). A request may name another CRS for its answer (`crs`),
for its bbox (`bbox-crs`) or for the geometries of its filter (`filter-crs`). Coordinates
follow the axis order the CRS defines, as Part 2 requires: CRS84 is lon/lat, EPSG:4326 and
EPSG:4490 are lat/lon, the CGCS2000 Gauss–Krüger zones (EPSG:4491–4554) are northing/easting
and EPSG:3857 is easting/northing. Transformers are built once per CRS and reused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyproj
import shapely
from pyproj.exceptions import CRSError

from layers.models import Bounds
from layers.transform import transformer
from twin.errors import InvalidParameter

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
CRS84H = "http://www.opengis.net/def/crs/OGC/0/CRS84h"
EPSG_URI = "http://www.opengis.net/def/crs/EPSG/0/{}"
CORE_EPSG: tuple[int, ...] = (4326, 4490, 3857, *range(4491, 4555))
"""EPSG codes every server offers: WGS 84, CGCS2000, Web Mercator, the CGCS2000 GK zones."""

_EPSG_FORMS = (
    re.compile(r"^https?://www\.opengis\.net/def/crs/EPSG/[^/]+/(\d+)$", re.I),
    re.compile(r"^urn:ogc:def:crs:EPSG:[^:]*:(\d+)$", re.I),
    re.compile(r"^\[?EPSG:(\d+)\]?$", re.I),
)
_CRS84_FORMS = frozenset(
    s.lower()
    for s in (
        CRS84,
        "https://www.opengis.net/def/crs/OGC/1.3/CRS84",
        "urn:ogc:def:crs:OGC:1.3:CRS84",
        "urn:ogc:def:crs:OGC::CRS84",
        "OGC:CRS84",
        "[OGC:CRS84]",
        "CRS84",
    )
)


@dataclass(frozen=True)
class CrsRef:
    """One CRS a request may name: its URI and EPSG code (None for CRS84)."""

    uri: str
    epsg: int | None

    @property
    def is_crs84(self) -> bool:
        """Whether this is the storage CRS (lon/lat), so no transformation is needed."""
        return self.epsg is None

    @property
    def header(self) -> str:
        """Value of the `Content-Crs` header."""
        return f"<{self.uri}>"


WGS84_LONLAT = CrsRef(CRS84, None)


class CrsSet:
    """The CRSs a server offers, with cached transformers to and from CRS84."""

    def __init__(self, extra_epsg: Iterable[int] = ()) -> None:
        codes = list(dict.fromkeys([*CORE_EPSG, *extra_epsg]))
        for code in codes:
            try:
                pyproj.CRS.from_epsg(code)
            except CRSError:
                raise ValueError(f"EPSG:{code} is not a CRS pyproj knows") from None
        self.refs: dict[int | None, CrsRef] = {None: WGS84_LONLAT}
        self.refs.update({c: CrsRef(EPSG_URI.format(c), c) for c in codes})
        self._to: dict[int, _Transform] = {}
        self._from: dict[int, _Transform] = {}

    @cached_property
    def uris(self) -> list[str]:
        """URIs of every offered CRS, CRS84 first (the collection's `crs` list)."""
        return [r.uri for r in self.refs.values()]

    def parse(self, value: str | None, what: str = "crs") -> CrsRef:
        """The offered CRS that `value` names (URI, URN, `EPSG:n` or CRS84), else `InvalidParameter`."""
        if value is None or not value.strip():
            return WGS84_LONLAT
        text = value.strip()
        if text.lower() in _CRS84_FORMS:
            return WGS84_LONLAT
        for form in _EPSG_FORMS:
            m = form.match(text)
            if m:
                ref = self.refs.get(int(m.group(1)))
                if ref is None:
                    break
                return ref
        raise InvalidParameter(
            f"{what} {value!r} is not offered: use {CRS84} or "
            f"{EPSG_URI.format('<code>')} with one of the codes listed in the collection's crs"
        )

    def _transform(self, ref: CrsRef, forward: bool) -> _Transform:
        assert ref.epsg is not None
        cache = self._to if forward else self._from
        t = cache.get(ref.epsg)
        if t is None:
            other = pyproj.CRS.from_epsg(ref.epsg)
            src, dst = ("OGC:CRS84", other) if forward else (other, "OGC:CRS84")
            t = cache[ref.epsg] = _Transform(pyproj.Transformer.from_crs(src, dst), src, dst)
        return t

    def to_crs(self, geoms: np.ndarray, ref: CrsRef) -> np.ndarray:
        """Geometries (lon/lat) in `ref`, in its axis order."""
        if ref.is_crs84 or len(geoms) == 0:
            return geoms
        out = self._transform(ref, True).geometries(geoms)
        coords = shapely.get_coordinates(out)
        if not np.isfinite(coords).all():
            raise InvalidParameter(f"some features lie outside the area where {ref.uri} is defined")
        return out

    def from_crs(self, geom: shapely.Geometry, ref: CrsRef) -> shapely.Geometry:
        """One geometry given in `ref` (its axis order) as lon/lat."""
        if ref.is_crs84:
            return geom
        out = self._transform(ref, False).geometries(np.array([geom], dtype=object))[0]
        if not np.isfinite(shapely.get_coordinates(out)).all():
            raise InvalidParameter(f"a geometry lies outside the area where {ref.uri} is defined")
        return out

    def bbox_to_crs84(self, values: Sequence[float], ref: CrsRef) -> Bounds:
        """A bbox given in `ref` (first axis min, second axis min, first max, second max) in lon/lat."""
        if ref.is_crs84:
            return Bounds(*values)
        t = self._transform(ref, False).transformer
        x0, y0, x1, y1 = (float(v) for v in values)
        b = t.transform_bounds(x0, y0, x1, y1, densify_pts=21)
        if not np.isfinite(b).all():
            raise InvalidParameter(f"bbox lies outside the area where {ref.uri} is defined")
        return Bounds(*(float(v) for v in b))

    def bounds_to_crs(self, bounds: Bounds, ref: CrsRef) -> list[float]:
        """Lon/lat bounds in `ref`, axis order of `ref` (for a FeatureCollection's `bbox`)."""
        if ref.is_crs84:
            return list(bounds)
        t = self._transform(ref, True).transformer
        return [float(v) for v in t.transform_bounds(*bounds, densify_pts=21)]


class _Transform:
    """A pyproj transformer applied to whole shapely arrays at once."""

    def __init__(self, searched: pyproj.Transformer, src: Any, dst: Any) -> None:
        self.transformer = searched
        """For bounds (a pipeline has no CRSs to tell `transform_bounds` what is geographic)."""
        self.points = transformer(src, dst, always_xy=False)
        """For coordinates: cheap to use from every thread."""

    def _xy(self, xy: np.ndarray) -> np.ndarray:
        x, y = self.points.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    def geometries(self, geoms: np.ndarray) -> np.ndarray:
        return shapely.transform(geoms, self._xy)
