"""Raster values at points and along lines: nearest and bilinear sampling, ground profiles.

Pure functions over an open rasterio dataset (or a path, opened for the call), or over a
`MemoryRaster`: the same raster read into memory once, sampled with identical results and no
file read per call. Points are lon/lat (CRS84) unless another CRS is named; values come back in
the raster's own units (band scale and offset applied), with nodata, masked and out-of-raster
cells as ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer
from rasterio.coords import BoundingBox
from rasterio.crs import CRS as RasterCRS
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.transform import rowcol
from rasterio.windows import Window

from layers.errors import LayersError, StoreError
from layers.models import Bounds
from layers.transform import transformer

Method = Literal["nearest", "bilinear"]

LONLAT = "OGC:CRS84"
_GEOD = Geod(ellps="WGS84")
# Reading one window is fastest while the points' bounding window stays small; past this many
# cells the needed cells are read block by block instead.
_ONE_WINDOW_CELLS = 4_000_000
_BLOCK = 512


class RasterSampleError(LayersError):
    """A raster that cannot be sampled (no CRS, no such band) or a bad sampling request."""


def copy_remote(uri: str, target: Path) -> None:
    """Copy the raster GDAL reads at `uri` (over the network) into the local file `target`,
    byte for byte; `StoreError` when it cannot be read."""
    from rasterio.shutil import copyfiles

    try:
        copyfiles(uri, str(target))
    except (OSError, RasterioError) as exc:
        raise StoreError(f"cannot read the raster at {uri}: {exc}") from None


def lonlat_bounds(uri: str) -> Bounds | None:
    """The lon/lat bounds of the raster at `uri` (a file or a URL GDAL reads), None when it
    has no CRS; `OSError` or `RasterioError` when it cannot be read."""
    from rasterio.warp import transform_bounds

    with rasterio.open(uri) as src:
        if src.crs is None:
            return None
        b = transform_bounds(src.crs, LONLAT, *src.bounds, densify_pts=21)
    return Bounds(float(b[0]), float(b[1]), float(b[2]), float(b[3]))


@lru_cache(maxsize=256)
def bounds_at(uri: str, version: str) -> Bounds | None:
    """`lonlat_bounds`, read once per `version` of the raster; None when it cannot be read."""
    try:
        return lonlat_bounds(uri)
    except (OSError, RasterioError):
        return None


@dataclass(frozen=True, eq=False)
class MemoryRaster:
    """A raster's bands held in memory with what sampling needs of its dataset (the grid, CRS,
    band scales and offsets): sampled exactly like the file it was read from."""

    name: str
    crs: RasterCRS | None
    transform: Affine
    width: int
    height: int
    bounds: BoundingBox
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    bands: tuple[np.ndarray, ...]
    """Each band's cells in the file's data type."""
    masks: tuple[np.ndarray | None, ...]
    """Each band's mask (True: nodata or masked), None where nothing is masked."""

    @property
    def count(self) -> int:
        """Number of bands."""
        return len(self.bands)

    @property
    def nbytes(self) -> int:
        """Memory held by the cells and masks."""
        return sum(b.nbytes for b in self.bands) + sum(
            m.nbytes for m in self.masks if m is not None
        )

    def cells(self, band: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Values (float64, NaN where masked) of the cells (rows, cols), all inside the raster."""
        out = self.bands[band - 1][rows, cols].astype(np.float64)
        mask = self.masks[band - 1]
        if mask is not None:
            out[mask[rows, cols]] = np.nan
        return out


Dataset: TypeAlias = "DatasetReader | MemoryRaster"
RasterSource: TypeAlias = "str | Path | DatasetReader | MemoryRaster"


def memory_bytes(ds: DatasetReader) -> int:
    """Memory a `MemoryRaster` of `ds` would hold at most (cells, and a byte a cell for masks)."""
    return ds.width * ds.height * sum(np.dtype(t).itemsize + 1 for t in ds.dtypes)


def read_into_memory(src: RasterSource, max_bytes: int | None = None) -> MemoryRaster | None:
    """The raster's bands read into memory, or None when they would need more than
    `max_bytes` (default: no limit)."""
    if isinstance(src, MemoryRaster):
        return src
    with _dataset(src) as ds:
        assert isinstance(ds, DatasetReader)
        if max_bytes is not None and memory_bytes(ds) > max_bytes:
            return None
        bands, masks = [], []
        for b in range(1, ds.count + 1):
            data = ds.read(b, masked=True)
            bands.append(np.ascontiguousarray(np.ma.getdata(data)))
            mask = np.ma.getmaskarray(data)
            masks.append(np.ascontiguousarray(mask) if mask.any() else None)
        return MemoryRaster(
            name=ds.name,
            crs=ds.crs,
            transform=ds.transform,
            width=ds.width,
            height=ds.height,
            bounds=ds.bounds,
            scales=tuple(ds.scales),
            offsets=tuple(ds.offsets),
            bands=tuple(bands),
            masks=tuple(masks),
        )


@dataclass(frozen=True)
class Profile:
    """A ground profile: values sampled along a line at ground distances from its start."""

    distance_m: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    values: list[float | None]

    def __len__(self) -> int:
        return len(self.values)

    def to_json(self) -> list[dict[str, Any]]:
        """One `{distance_m, lon, lat, value}` dict per sample."""
        return [
            {"distance_m": float(d), "lon": float(x), "lat": float(y), "value": v}
            for d, x, y, v in zip(
                self.distance_m.tolist(),
                self.lon.tolist(),
                self.lat.tolist(),
                self.values,
                strict=True,
            )
        ]


@contextmanager
def _dataset(src: RasterSource) -> Iterator[Dataset]:
    if isinstance(src, str | Path):
        with rasterio.open(src) as ds:
            yield ds
    else:
        yield src


@lru_cache(maxsize=64)
def _transformer(src_crs: str, dst_crs: str) -> Transformer:
    return transformer(CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs))


def _to_raster_xy(
    ds: Dataset, x: np.ndarray, y: np.ndarray, crs: str
) -> tuple[np.ndarray, np.ndarray]:
    if ds.crs is None:
        raise RasterSampleError(f"raster {ds.name} has no coordinate reference system")
    tr = _transformer(CRS.from_user_input(crs).to_wkt(), ds.crs.to_wkt())
    return tr.transform(x, y)


def _gather(ds: Dataset, band: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values (float64, NaN where masked) of the cells (rows, cols), all inside the raster."""
    if isinstance(ds, MemoryRaster):
        return ds.cells(band, rows, cols)
    out = np.full(rows.shape, np.nan)
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    if (r1 - r0 + 1) * (c1 - c0 + 1) <= _ONE_WINDOW_CELLS:
        windows = [(r0, r1, c0, c1, np.ones(rows.shape, dtype=bool))]
    else:
        keys = (rows // _BLOCK) * ((ds.width // _BLOCK) + 1) + cols // _BLOCK
        windows = []
        for k in np.unique(keys).tolist():
            sel = keys == k
            windows.append(
                (
                    int(rows[sel].min()),
                    int(rows[sel].max()),
                    int(cols[sel].min()),
                    int(cols[sel].max()),
                    sel,
                )
            )
    for wr0, wr1, wc0, wc1, sel in windows:
        data = ds.read(band, window=Window(wc0, wr0, wc1 - wc0 + 1, wr1 - wr0 + 1), masked=True)
        vals = np.ma.filled(data.astype(np.float64), np.nan)
        out[sel] = vals[rows[sel] - wr0, cols[sel] - wc0]
    return out


def _physical(ds: Dataset, band: int, values: np.ndarray) -> list[float | None]:
    scale = ds.scales[band - 1] if ds.scales else 1.0
    offset = ds.offsets[band - 1] if ds.offsets else 0.0
    if (scale, offset) != (1.0, 0.0):
        values = values * scale + offset
    return [None if v != v else v for v in values.tolist()]


def sample_xy(
    ds: Dataset,
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: Method = "bilinear",
    band: int = 1,
) -> list[float | None]:
    """Values at points given in the raster's own CRS (see `sample` for the rules)."""
    if band < 1 or band > ds.count:
        raise RasterSampleError(f"raster {ds.name} has no band {band} (it has {ds.count})")
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if method == "nearest":
        rows, cols = rowcol(ds.transform, x, y)
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        inside = (rows >= 0) & (rows < ds.height) & (cols >= 0) & (cols < ds.width)
        inside &= np.isfinite(x) & np.isfinite(y)
        values = np.full(x.shape, np.nan)
        values[inside] = _gather(ds, band, rows[inside], cols[inside])
        return _physical(ds, band, values)
    if method != "bilinear":
        raise RasterSampleError(f"unknown sampling method {method!r}: use nearest or bilinear")
    if x.size <= _FEW:
        few = [
            _bilinear_one(ds, band, xi, yi) for xi, yi in zip(x.tolist(), y.tolist(), strict=True)
        ]
        return _physical(ds, band, np.array(few, dtype=np.float64).reshape(x.shape))
    fc, fr = ~ds.transform @ (x, y)
    fc, fr = np.asarray(fc, dtype=np.float64), np.asarray(fr, dtype=np.float64)
    inside = (fr >= 0) & (fr <= ds.height) & (fc >= 0) & (fc <= ds.width) & np.isfinite(fc + fr)
    values = np.full(x.shape, np.nan)
    if inside.any():
        # Interpolate between cell centres; within the outer half cell the edge cells repeat.
        u = np.clip(fc[inside] - 0.5, 0, ds.width - 1)
        v = np.clip(fr[inside] - 0.5, 0, ds.height - 1)
        c0 = np.minimum(np.floor(u).astype(np.int64), max(ds.width - 2, 0))
        r0 = np.minimum(np.floor(v).astype(np.int64), max(ds.height - 2, 0))
        c1 = np.minimum(c0 + 1, ds.width - 1)
        r1 = np.minimum(r0 + 1, ds.height - 1)
        fx, fy = u - c0, v - r0
        own_r = np.clip(np.floor(fr[inside]).astype(np.int64), 0, ds.height - 1)
        own_c = np.clip(np.floor(fc[inside]).astype(np.int64), 0, ds.width - 1)
        rows = np.concatenate([r0, r0, r1, r1, own_r])
        cols = np.concatenate([c0, c1, c0, c1, own_c])
        z = _gather(ds, band, rows, cols).reshape(5, -1)
        own, z = z[4], z[:4]
        w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
        # A point in a nodata cell has no value; nodata neighbours of a valid cell drop out
        # and the others' weights are renormalised, so voids neither spread nor pull.
        valid = ~np.isnan(z)
        wsum = np.where(valid, w, 0).sum(axis=0)
        acc = np.where(valid, w * np.nan_to_num(z), 0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            values[inside] = np.where((wsum > 0) & ~np.isnan(own), acc / wsum, np.nan)
    return _physical(ds, band, values)


# Up to this many points are interpolated one by one in Python floats: the same operations in
# the same order as the array code below (so the very same values), without the cost of some
# forty array operations on tiny arrays (`at` samples one point per query).
_FEW = 4


@lru_cache(maxsize=256)
def _inverse(transform: Affine) -> tuple[float, ...]:
    """The six coefficients of `~transform` (inverted once per grid, not once per point)."""
    return tuple((~transform)[:6])


def _bilinear_one(ds: Dataset, band: int, x: float, y: float) -> float:
    """`sample_xy`'s bilinear value (before scale and offset; NaN: none) at one point."""
    sa, sb, sc, sd, se, sf = _inverse(ds.transform)
    fc, fr = x * sa + y * sb + sc, x * sd + y * se + sf  # as `~transform @ (x, y)` does it
    w, h = ds.width, ds.height
    if not (0 <= fr <= h and 0 <= fc <= w and math.isfinite(fc + fr)):
        return math.nan
    u = min(max(fc - 0.5, 0), w - 1)
    v = min(max(fr - 0.5, 0), h - 1)
    c0 = min(math.floor(u), max(w - 2, 0))
    r0 = min(math.floor(v), max(h - 2, 0))
    c1 = min(c0 + 1, w - 1)
    r1 = min(r0 + 1, h - 1)
    fx, fy = u - c0, v - r0
    own_r = min(max(math.floor(fr), 0), h - 1)
    own_c = min(max(math.floor(fc), 0), w - 1)
    z = _gather(
        ds, band, np.array([r0, r0, r1, r1, own_r]), np.array([c0, c1, c0, c1, own_c])
    ).tolist()
    if z[4] != z[4]:
        return math.nan
    weights = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)
    wsum = acc = 0.0
    for wi, zi in zip(weights, z[:4], strict=True):
        if zi == zi:
            wsum += wi
            acc += wi * zi
    return acc / wsum if wsum > 0 else math.nan


def sample(
    src: RasterSource,
    lon: Sequence[float] | np.ndarray | float,
    lat: Sequence[float] | np.ndarray | float,
    *,
    method: Method = "bilinear",
    band: int = 1,
    crs: str = LONLAT,
) -> list[float | None]:
    """Raster values at points (lon/lat unless `crs` says otherwise), one per point.

    `nearest` takes the cell holding the point (as rasterio's `sample` does); `bilinear`
    interpolates between the four nearest cell centres, leaving out nodata neighbours
    (their weight goes to the others). A point in a nodata, masked or outside cell is
    ``None``.
    """
    with _dataset(src) as ds:
        x, y = _to_raster_xy(
            ds,
            np.atleast_1d(np.asarray(lon, dtype=np.float64)),
            np.atleast_1d(np.asarray(lat, dtype=np.float64)),
            crs,
        )
        return sample_xy(ds, x, y, method=method, band=band)


def sample_point(
    src: RasterSource, lon: float, lat: float, *, method: Method = "bilinear", band: int = 1
) -> float | None:
    """The raster value at one lon/lat point (ground elevation from a DEM), or None."""
    return sample(src, [lon], [lat], method=method, band=band)[0]


def ground_step_m(ds: Dataset) -> float:
    """The raster's cell size on the ground, in metres (the smaller side, at its centre)."""
    if ds.crs is None:
        raise RasterSampleError(f"raster {ds.name} has no coordinate reference system")
    cx, cy = (ds.bounds.left + ds.bounds.right) / 2, (ds.bounds.bottom + ds.bounds.top) / 2
    rx, ry = abs(ds.transform.a), abs(ds.transform.e)
    tr = _transformer(ds.crs.to_wkt(), CRS.from_user_input(LONLAT).to_wkt())
    lon, lat = tr.transform([cx, cx + rx, cx], [cy, cy, cy + ry])
    dx = _GEOD.inv(lon[0], lat[0], lon[1], lat[1])[2]
    dy = _GEOD.inv(lon[0], lat[0], lon[2], lat[2])[2]
    return float(min(dx, dy))


def profile(
    src: RasterSource,
    line: shapely.LineString | Sequence[Sequence[float]],
    *,
    step_m: float | None = None,
    max_samples: int = 10_000,
    method: Method = "bilinear",
    band: int = 1,
) -> Profile:
    """A ground profile along a lon/lat line, sampled every `step_m` metres along the ground.

    The step defaults to the raster's cell size and grows when the line would need more
    than `max_samples` samples. The line's vertices are always sampled; distances are
    geodesic (WGS84) from the start.
    """
    coords = np.asarray(
        line.coords if isinstance(line, shapely.LineString) else line, dtype=np.float64
    )
    if coords.ndim != 2 or coords.shape[0] < 2 or coords.shape[1] < 2:
        raise RasterSampleError("a profile needs a line of at least two lon/lat positions")
    if not np.isfinite(coords[:, :2]).all():
        raise RasterSampleError("a profile line holds a non-finite coordinate")
    if max_samples < 2:
        raise RasterSampleError("max_samples must be at least 2")
    lon0, lat0, lon1, lat1 = coords[:-1, 0], coords[:-1, 1], coords[1:, 0], coords[1:, 1]
    az, _, seg = _GEOD.inv(lon0, lat0, lon1, lat1)
    seg = np.asarray(seg, dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = float(cum[-1])
    with _dataset(src) as ds:
        step = float(step_m) if step_m is not None else ground_step_m(ds)
        if not step > 0:
            raise RasterSampleError("step_m must be a positive number of metres")
        if total / step + len(coords) > max_samples:
            step = total / max(max_samples - len(coords), 1)
        d = np.union1d(np.arange(0.0, total, step) if total > 0 else [0.0], cum)
        i = np.clip(np.searchsorted(cum, d, side="right") - 1, 0, len(seg) - 1)
        lon, lat, _ = _GEOD.fwd(lon0[i], lat0[i], np.asarray(az)[i], d - cum[i])
        lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
        # Vertices exactly where the line says, not where the forward solution lands.
        at_vertex = np.isin(d, cum)
        vi = np.searchsorted(cum, d[at_vertex])
        lon[at_vertex], lat[at_vertex] = coords[vi, 0], coords[vi, 1]
        values = sample(ds, lon, lat, method=method, band=band)
    return Profile(d, lon, lat, values)
