"""Rasters into the store: any raster GDAL reads (GeoTIFF, SRTM `.hgt`, zipped) as a COG.

The source keeps its CRS, cells and nodata; it is rewritten as a Cloud-Optimised GeoTIFF
(tiled, compressed, with overviews) beside the store's GeoPackage and registered in one
step, so a failed import leaves the store as it was.
"""

from __future__ import annotations

import math
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.warp import transform_bounds

from importers.errors import EmptySource, InvalidOption, UnknownCRS, UnreadableFile, damaged
from layers.errors import InvalidSchema
from layers.models import Access
from layers.schemas import BUILTIN, check_name
from layers.store import RasterInfo, Store

# Members of a zip archive tried in this order when the archive holds several files.
_RASTER_SUFFIXES = (".tif", ".tiff", ".hgt", ".dem", ".img", ".asc", ".vrt", ".jp2", ".png")
# Whole-band statistics are read at full resolution up to this many cells, else decimated.
_STATS_CELLS = 16_000_000

COG_OPTIONS: dict[str, str] = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",
    "BLOCKSIZE": "256",
    "OVERVIEWS": "IGNORE_EXISTING",
    "OVERVIEW_RESAMPLING": "AVERAGE",
    "BIGTIFF": "IF_SAFER",
}
"""GDAL COG driver options: 256-cell tiles, lossless DEFLATE, averaged overviews."""


@dataclass(frozen=True)
class RasterReport:
    """What an import put in the store."""

    collection: str
    source: str
    path: str | Path
    """Where the store keeps the raster: its file, or the URL it is read at."""
    driver: str
    width: int
    height: int
    bands: int
    dtype: str
    crs: str
    nodata: float | None
    overviews: list[int]
    bounds: tuple[float, float, float, float]
    minimum: float | None
    maximum: float | None
    meta: dict[str, Any] = field(default_factory=dict)
    linked: bool = False
    """Registered where it is (read over the network), not copied into the store."""

    def lines(self) -> list[str]:
        """The report as printed by `twin import-raster`."""
        lo = "-" if self.minimum is None else f"{self.minimum:g}"
        hi = "-" if self.maximum is None else f"{self.maximum:g}"
        done = (
            f"registered {self.source} ({self.driver}) where it is"
            if self.linked
            else f"imported {self.source} ({self.driver}) as a COG"
        )
        return [
            f"{self.collection}: {done}",
            f"  {self.width} x {self.height} cells, {self.bands} band(s) of {self.dtype}, "
            f"CRS {self.crs}, nodata {self.nodata}",
            f"  values {lo} .. {hi}; overviews {self.overviews or 'none (small raster)'}",
            "  bounds (lon/lat) " + ", ".join(f"{b:.6f}" for b in self.bounds),
        ]


def gdal_path(path: Path) -> str:
    """The GDAL name of a raster file: `zip://archive!member` for zipped rasters."""
    if path.suffix.lower() != ".zip":
        return str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise damaged(f"the zip archive {path.name}", str(exc)) from None
    for suffix in _RASTER_SUFFIXES:
        for name in names:
            if name.lower().endswith(suffix):
                return f"zip://{path.resolve()}!{name}"
    raise UnreadableFile(
        f"{path.name} holds no raster file (looked for {', '.join(_RASTER_SUFFIXES)})"
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UnreadableFile(f"no such file: {path}")
    if path.is_dir():
        raise UnreadableFile(f"{path} is a directory, not a raster file")
    if path.stat().st_size == 0:
        raise EmptySource(f"{path.name} is empty (0 bytes)")


def _statistics(ds: rasterio.DatasetReader) -> tuple[float | None, float | None]:
    """Minimum and maximum of band 1's valid cells (decimated for very large rasters)."""
    cells = ds.width * ds.height
    if cells <= _STATS_CELLS:
        data = ds.read(1, masked=True)
    else:
        f = math.sqrt(cells / _STATS_CELLS)
        shape = (max(1, int(ds.height / f)), max(1, int(ds.width / f)))
        data = ds.read(1, masked=True, out_shape=shape)
    values = np.ma.masked_invalid(data.astype(np.float64)) if data.dtype.kind == "f" else data
    if values.count() == 0:
        return None, None
    return float(values.min()), float(values.max())


def _with_crs(ds: rasterio.DatasetReader, crs: CRS, workdir: Path) -> Path:
    """A GeoTIFF copy of `ds` with `crs` assigned (the source declares none)."""
    fixed = workdir / "with_crs.tif"
    rasterio.shutil.copy(
        ds, fixed, driver="GTiff", TILED="YES", COMPRESS="DEFLATE", BIGTIFF="IF_SAFER"
    )
    with rasterio.open(fixed, "r+") as out:
        out.crs = crs
    return fixed


def _parse_crs(crs: str) -> CRS:
    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        raise InvalidOption(f"--crs {crs!r} is not a coordinate reference system: {exc}") from None


def _usable(src: rasterio.DatasetReader, path: Path, given_crs: CRS | None) -> None:
    """Refuse a raster whose cells cannot be placed on the ground, or that holds none."""
    if src.crs is None and given_crs is None:
        raise UnknownCRS(
            f"{path.name} declares no coordinate reference system; give one with --crs EPSG:n"
        )
    if src.transform.is_identity and not src.gcps[0]:
        raise UnknownCRS(
            f"{path.name} is not georeferenced (no geotransform): "
            "cell positions on the ground are unknown"
        )
    if src.count == 0 or src.width == 0 or src.height == 0:
        raise EmptySource(f"{path.name} holds no raster cells")


def check_raster(path: str | Path, *, crs: str | None = None) -> str:
    """Check that `path` is a raster the store can take; its GDAL name, else `ImporterError`."""
    path = Path(path)
    _check_file(path)
    name = gdal_path(path)
    given_crs = _parse_crs(crs) if crs else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(name) as src:
                _usable(src, path, given_crs)
    except (RasterioError, CRSError) as exc:
        raise UnreadableFile(f"cannot read {path.name} as a raster: {_first_line(exc)}") from None
    return name


def _convert(name: str, path: Path, cog: Path, given_crs: CRS | None, resampling: str) -> str:
    """Write the raster `name` as a COG at `cog`; returns the source's GDAL driver."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(name) as src:
            _usable(src, path, given_crs)
            options = {**COG_OPTIONS, "OVERVIEW_RESAMPLING": resampling}
            if src.crs is not None:
                rasterio.shutil.copy(src, cog, driver="COG", **options)
            else:
                assert given_crs is not None
                with rasterio.open(_with_crs(src, given_crs, cog.parent)) as fixed:
                    rasterio.shutil.copy(fixed, cog, driver="COG", **options)
            return str(src.driver)


def _describe(cog: str | Path, path: Path, driver: str) -> dict[str, Any]:
    """The collection metadata of the finished COG."""
    with rasterio.open(cog) as out:
        minimum, maximum = _statistics(out)
        bounds = transform_bounds(out.crs, "EPSG:4326", *out.bounds, densify_pts=21)
        epsg = out.crs.to_epsg()
        return {
            "kind": "raster",
            "source": path.name,
            "driver": driver,
            "crs": f"EPSG:{epsg}" if epsg else out.crs.to_wkt(),
            "width": out.width,
            "height": out.height,
            "bands": out.count,
            "dtype": out.dtypes[0],
            "nodata": out.nodata,
            "resolution": [float(r) for r in out.res],
            "units": [u or None for u in out.units],
            "bounds": [float(b) for b in bounds],
            "native_bounds": [float(b) for b in out.bounds],
            "minimum": minimum,
            "maximum": maximum,
            "overviews": list(out.overviews(1)),
        }


def import_raster(
    store: Store,
    collection: str,
    path: str | Path,
    *,
    user: str,
    title: str | None = None,
    crs: str | None = None,
    classification: Access = Access.PUBLIC,
    resampling: str = "AVERAGE",
    attribution: str | None = None,
) -> RasterReport:
    """Convert the raster at `path` into a COG and register it as collection `collection`.

    `crs` is only used when the file declares none. Raises an `ImporterError` (store
    unchanged) for a missing, empty or unreadable file, a raster without a CRS or
    georeferencing, or a collection name that cannot be used.
    """
    path = Path(path)
    _check_collection(collection)
    name = check_raster(path, crs=crs)
    given_crs = _parse_crs(crs) if crs else None
    # Staging beside the store's rasters lets the store move the file in instead of copying.
    stage = getattr(store, "staging_dir", None)  # a store keeping raster files offers one
    staging: Path | None = stage() if callable(stage) else None
    with tempfile.TemporaryDirectory(prefix=".import-", dir=staging) as tmp:
        cog = Path(tmp) / f"{collection}.tif"
        try:
            driver = _convert(name, path, cog, given_crs, resampling)
            meta = _describe(cog, path, driver)
        except (RasterioError, CRSError) as exc:
            raise UnreadableFile(
                f"cannot read {path.name} as a raster: {_first_line(exc)}"
            ) from None
        if attribution:
            meta["attribution"] = attribution
        info = store.put_raster(
            RasterInfo(collection, title or collection, cog, classification, meta),
            user=user,
            source=path.name,
        )
    return _report(collection, path.name, info, driver, meta)


def link_raster(
    store: Store,
    collection: str,
    uri: str,
    *,
    user: str,
    title: str | None = None,
    classification: Access = Access.PUBLIC,
    attribution: str | None = None,
) -> RasterReport:
    """Register the Cloud-Optimised GeoTIFF at `uri` (`https://...`, `s3://...`, read over the
    network by GDAL) as collection `collection` without converting it: a PostGIS store refers
    to it where it is (every server reads it there), the embedded store copies it in. Raises
    an `ImporterError` (store unchanged) for a raster that cannot be read or placed."""
    _check_collection(collection)
    named = Path(urlsplit(uri).path or uri)  # what messages call it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(uri) as src:
                _usable(src, named, None)
                driver = str(src.driver)
                tiled = src.profile.get("tiled", False)
            if not tiled:
                raise InvalidOption(
                    f"{uri} is not tiled: a raster read over the network must be a "
                    "Cloud-Optimised GeoTIFF (import a copy with a local path instead)"
                )
            meta = _describe(uri, named, driver)
    except (RasterioError, CRSError) as exc:
        raise UnreadableFile(f"cannot read {uri} as a raster: {_first_line(exc)}") from None
    if attribution:
        meta["attribution"] = attribution
    info = store.put_raster(
        RasterInfo(collection, title or collection, uri, classification, meta),
        user=user,
        source=uri,
    )
    return _report(collection, uri, info, driver, meta)


def _check_collection(collection: str) -> None:
    """`InvalidOption` for a name a raster collection cannot have."""
    try:
        check_name(collection)
    except InvalidSchema as exc:
        raise InvalidOption(str(exc)) from None
    if collection in BUILTIN:
        raise InvalidOption(
            f"{collection!r} is a built-in vector layer; name the raster otherwise (e.g. dem)"
        )


def _report(
    collection: str, source: str, info: RasterInfo, driver: str, meta: dict[str, Any]
) -> RasterReport:
    return RasterReport(
        collection=collection,
        source=source,
        path=info.uri,
        driver=driver,
        width=meta["width"],
        height=meta["height"],
        bands=meta["bands"],
        dtype=meta["dtype"],
        crs=meta["crs"] if meta["crs"].startswith("EPSG:") else "custom (WKT in meta)",
        nodata=meta["nodata"],
        overviews=meta["overviews"],
        bounds=tuple(meta["bounds"]),
        minimum=meta["minimum"],
        maximum=meta["maximum"],
        meta=meta,
        linked=info.remote,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
