"""Coordinate reference systems: which CRS a file's numbers are in, and moving them to lon/lat.

The file's declared CRS is used when there is one; `--crs` overrides it (a wrong `.prj` is
common) and supplies it when there is none. With neither, numbers that fit longitude and
latitude are read as WGS84, and anything else is refused with a hint: guessing a projection
would put a city's pipes in the wrong place without a word. CGCS2000 (EPSG:4490) and its
Gauss-Krüger zones (EPSG:4491-4554) are ordinary EPSG codes to pyproj; CGCS2000 and WGS84
agree to a few centimetres, so the datum change between them is the identity.

What the numbers are is judged on the file's core: rows with coordinates no CRS on Earth
holds (infinite, 1e308) and far outliers of the rest are left out, so one broken row is
rejected on its own instead of condemning the file. Numbers that fit only as latitude,
longitude are named as swapped and refused, not swapped silently; `--crs EPSG:4326` (or
another CRS whose EPSG axis order is latitude first) then reads them latitude first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from importers.errors import UnknownCRS

WGS84 = CRS.from_epsg(4326)

# Share of geometries that must fit lon/lat for undeclared numbers to be read as lon/lat;
# the few that do not are rejected one by one instead of refusing the file.
_LONLAT_SHARE = 0.99
# No CRS on Earth has numbers this large (Gauss-Krüger eastings with a zone prefix stay below
# 1e8): rows holding one are rejected whatever the CRS, and never judge it.
MAX_COORDINATE = 1e9
# Rows whose centre lies further than this many median absolute deviations from the median
# (on either axis) are outliers left out when judging what the numbers are.
_OUTLIER_MADS = 20.0


@dataclass(frozen=True)
class CRSChoice:
    """The CRS the coordinates were read in, and how it was decided."""

    crs: CRS
    how: str  # "declared", "given", "given, overriding the declared X", "assumed lon/lat"
    swapped: bool = False
    """The numbers are read latitude first (the given CRS's own axis order)."""

    @property
    def label(self) -> str:
        """`EPSG:n` when the CRS has an EPSG code, else its name."""
        code = self.crs.to_epsg(min_confidence=70)
        return f"EPSG:{code}" if code else self.crs.name


def parse_crs(text: str) -> CRS:
    """A CRS from what a user typed (`EPSG:4547`, `4547`, a WKT or PROJ string)."""
    value = text.strip()
    try:
        return CRS.from_user_input(int(value) if value.isdigit() else value)
    except CRSError:
        raise UnknownCRS(
            f"--crs {text!r} is not a coordinate reference system pyproj knows"
        ) from None


def _earthly(bounds: np.ndarray) -> np.ndarray:
    """Rows of `bounds` whose numbers are finite and small enough for some CRS on Earth."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(bounds).all(axis=1) & (np.abs(bounds) <= MAX_COORDINATE).all(axis=1)


def _core(bounds: np.ndarray) -> np.ndarray:
    """The rows of `bounds` that judge what the numbers are: earthly, and not far outliers.

    Outliers are judged on the boxes' centres with the median and the median absolute
    deviation, which one wild row (or a few) cannot move.
    """
    b = bounds[_earthly(bounds)]
    if len(b) < 3:
        return b
    keep = np.ones(len(b), dtype=bool)
    for lo, hi in ((0, 2), (1, 3)):
        centre = (b[:, lo] + b[:, hi]) / 2
        median = np.median(centre)
        spread = np.abs(centre - median)
        keep &= spread <= _OUTLIER_MADS * np.median(spread)
    return b[keep] if keep.any() else b


def _share_in_lonlat(bounds: np.ndarray, *, swapped: bool = False) -> float:
    if not len(bounds):
        return 0.0
    b = bounds[:, [1, 0, 3, 2]] if swapped else bounds
    inside = (b[:, 0] >= -180) & (b[:, 2] <= 180) & (b[:, 1] >= -90) & (b[:, 3] <= 90)
    return float(inside.mean())


def _fits(core: np.ndarray, *, swapped: bool = False) -> bool:
    """Whether the core rows are longitude/latitude (latitude/longitude when `swapped`)."""
    return _share_in_lonlat(core, swapped=swapped) >= _LONLAT_SHARE


def _lat_first(crs: CRS) -> bool:
    """Whether `crs` is geographic with latitude as its first axis, as EPSG:4326 is."""
    axes = crs.axis_info
    return crs.is_geographic and bool(axes) and axes[0].direction.lower() in ("north", "south")


def _swapped(bounds: np.ndarray, said: str = "") -> UnknownCRS:
    """The refusal of numbers that fit only latitude first, with the two ways to import them."""
    return UnknownCRS(
        f"the coordinates look like latitude, longitude (swapped){said}: {_extent(bounds)} "
        "fit only as latitude then longitude, so nothing was imported. If the file holds "
        "latitude before longitude, import it again with --crs EPSG:4326 (whose axis order is "
        "latitude first) or swap the two coordinates in the file"
    )


def _hint(bounds: np.ndarray) -> str:
    """A suggestion for --crs from the size of the numbers (Gauss-Krüger zone prefixes)."""
    core = _core(bounds)
    if not len(core):
        return "give it with --crs EPSG:n"
    x = float(np.median(core[:, 0]))
    y = float(np.median(core[:, 1]))
    zone = int(x // 1_000_000)
    if 25 <= zone <= 45 and 0 < y < 10_000_000:
        return (
            f"the eastings carry zone prefix {zone}: CGCS2000 3-degree Gauss-Kruger zone {zone} "
            f"is EPSG:{4513 + zone - 25}; give it with --crs"
        )
    if 13 <= zone <= 23 and 0 < y < 10_000_000:
        return (
            f"the eastings carry zone prefix {zone}: CGCS2000 6-degree Gauss-Kruger zone {zone} "
            f"is EPSG:{4491 + zone - 13}; give it with --crs"
        )
    if 0 < x < 1_000_000 and 0 < y < 10_000_000:
        return (
            "they look like metres of a transverse Mercator zone: give it with --crs, e.g. "
            "EPSG:4547 for CGCS2000 Gauss-Kruger CM 114E or EPSG:326nn for UTM zone nn"
        )
    return "give it with --crs EPSG:n"


def choose_crs(declared: CRS | None, given: str | None, geometry: np.ndarray) -> CRSChoice:
    """Decide the CRS of `geometry`'s numbers; `UnknownCRS` when it cannot be known."""
    bounds = shapely.bounds(geometry) if len(geometry) else np.empty((0, 4))
    core = _core(bounds)
    if given:
        crs = parse_crs(given)
        how = "given"
        if declared is not None and not declared.equals(crs, ignore_axis_order=True):
            how = f"given, overriding the declared {_label(declared)}"
        choice = CRSChoice(crs, how)
    elif declared is not None:
        choice = CRSChoice(declared, "declared")
        if not declared.is_geographic and len(core):
            # Metres of a real projection never all fit within +-180/+-90 of its origin.
            if _share_in_lonlat(core) == 1.0:
                raise UnknownCRS(
                    f"the file declares {choice.label}, in metres, but its numbers look like "
                    f"longitude/latitude ({_extent(bounds)}); if they are, say so with "
                    "--crs EPSG:4326"
                )
            if _share_in_lonlat(core, swapped=True) == 1.0:
                raise _swapped(bounds, f", not metres of the declared {choice.label}")
    else:
        if not len(core):  # no coordinates to judge by
            return CRSChoice(WGS84, "assumed lon/lat: the file has no usable coordinates")
        if _fits(core):
            return CRSChoice(WGS84, "assumed lon/lat: the file declares no CRS")
        if _fits(core, swapped=True):
            raise _swapped(bounds)
        raise UnknownCRS(
            "the file declares no coordinate reference system and its numbers are not "
            f"longitude/latitude ({_extent(bounds)}); {_hint(bounds)}"
        )
    if choice.crs.is_geographic and len(core) and not _fits(core):
        if _fits(core, swapped=True):
            if given and _lat_first(choice.crs):
                return CRSChoice(choice.crs, f"{how}, read latitude first", swapped=True)
            raise _swapped(bounds)
        raise UnknownCRS(
            f"the coordinates are said to be in {choice.label} ({choice.how}) but are not "
            f"longitude/latitude ({_extent(bounds)}); {_hint(bounds)}"
        )
    return choice


def _label(crs: CRS) -> str:
    code = crs.to_epsg(min_confidence=70)
    return f"EPSG:{code}" if code else crs.name


def _extent(bounds: np.ndarray) -> str:
    """`x 114.3 to 114.5, y 30.2 to 30.6`, over the rows with earthly numbers."""
    b = bounds[_earthly(bounds)]
    if not len(b):
        return "no usable coordinates"
    return (
        f"x {np.min(b[:, 0]):.6g} to {np.max(b[:, 2]):.6g}, "
        f"y {np.min(b[:, 1]):.6g} to {np.max(b[:, 3]):.6g}"
    )


@lru_cache(maxsize=32)
def _transformer(wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(wkt), WGS84, always_xy=True)


def to_wgs84(geometry: np.ndarray, choice: CRSChoice) -> np.ndarray:
    """`geometry` moved from `choice.crs` to lon/lat WGS84 (a no-op for WGS84 itself)."""
    crs = choice.crs
    if choice.swapped:
        geometry = shapely.transform(np.asarray(geometry, dtype=object), lambda xy: xy[:, ::-1])
    if crs.equals(WGS84, ignore_axis_order=True) or len(geometry) == 0:
        return geometry
    try:
        transformer = _transformer(crs.to_wkt())
    except (CRSError, ProjError) as exc:
        raise UnknownCRS(
            f"cannot convert from {choice.label} to longitude/latitude: {exc}"
        ) from None

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1], errcheck=False)
        return np.column_stack([x, y])

    out = shapely.transform(np.asarray(geometry, dtype=object), move)
    core = _core(shapely.bounds(out)) if len(out) else np.empty((0, 4))
    if len(core) and not _fits(core):
        raise UnknownCRS(
            f"the coordinates do not fit {choice.label} ({choice.how}): converted, they fall "
            f"outside longitude/latitude; {_hint(shapely.bounds(geometry))}"
        )
    return out
