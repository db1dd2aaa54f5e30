"""Reading any vector file GDAL reads, through pyogrio, into one frame in file order.

GeoPackage, Shapefile (zipped too), GeoJSON (a FeatureCollection, a bare array of features,
with or without a byte-order mark), FlatGeobuf, KML/KMZ, Esri JSON, CSV with lon/lat or WKT
columns, and whatever else the GDAL build holds. Damage GDAL would read past silently (a
truncated shapefile) is refused here, before anything is imported, and damage GDAL or SQLite
stumbles on (a GeoPackage cut short, a GeoJSON that stops mid-way, a zip without its
directory) is said in words. A shapefile without its .dbf is read for its geometries, with a
warning that no attributes came.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyogrio.errors
from pyproj import CRS

from importers.encoding import codec_name, describe, fix_text
from importers.errors import EmptySource, UnknownLayer, UnreadableFile, damaged

# Names GDAL's CSV driver looks for (case-insensitive) to build points or read WKT.
CSV_X_NAMES = "lon,lng,long,longitude,x,point_x,easting,经度,*_lon,*_lng,lon_*,lng_*"
CSV_Y_NAMES = "lat,latitude,y,point_y,northing,纬度,*_lat,lat_*"
CSV_GEOM_NAMES = "wkt,geom,geometry,the_geom,shape,wkt_geom,geom_wkt"

# Members of a zip archive that are datasets on their own (sidecar files are not).
_DATASET_SUFFIXES = {
    ".shp",
    ".gpkg",
    ".geojson",
    ".json",
    ".fgb",
    ".kml",
    ".csv",
    ".gml",
    ".tab",
    ".mif",
    ".sqlite",
}
# Read text "raw": one character per byte; iconv (under GDAL) and Python both know this name.
RAW = "ISO-8859-1"
# Formats that hold one layer: no need to open them once more just to list it.
_SINGLE_LAYER = {".geojson", ".json", ".csv", ".tsv", ".fgb", ".shp"}
# Binary formats read through Arrow (text formats gain little, and some do not fit it).
_ARROW = {".gpkg", ".fgb"}
# What a file of each suffix is called when GDAL finds it damaged.
_KINDS = {
    ".gpkg": "GeoPackage",
    ".geojson": "GeoJSON",
    ".json": "JSON file",
    ".fgb": "FlatGeobuf",
    ".shp": "shapefile",
    ".kml": "KML file",
}
# Words of GDAL and SQLite errors that mean the bytes are damaged, not the request.
_DAMAGE = (
    "malformed",
    "not a database",
    "failed to read geojson",
    "not recognized as being in a supported file format",
    "unexpected end",
    "truncated",
    "corrupt",
)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_GDAL_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    pyogrio.errors.FieldError,
    pyogrio.errors.GeometryError,
    pyogrio.errors.CRSError,
    pyogrio.errors.FeatureError,
)


@dataclass
class SourceFrame:
    """What was read from a file: features in file order, and what is known about them."""

    frame: gpd.GeoDataFrame
    """One row per source record, on a 0..n-1 index; `geometry` may hold None."""
    path: str
    driver: str
    layer: str | None
    crs: CRS | None
    """The CRS the file declares, or None."""
    fid: np.ndarray | None = None
    """The format's own stored feature ids (a GeoPackage primary key), when it has them."""
    fid_column: str | None = None
    warnings: list[str] = field(default_factory=list)
    """What the import should warn of: a part of the file that is missing (the .dbf)."""
    notes: list[str] = field(default_factory=list)


def _gdal_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # pyogrio adds advice about driver prefixes that means nothing to a city GIS user.
    return text.split("; It might help")[0].rstrip(".")


def _unreadable(name: str, suffix: str, exc: BaseException) -> UnreadableFile:
    """The error for a file GDAL could not read: damage in words where the error means it."""
    text = _gdal_message(exc)
    kind = _KINDS.get(suffix)
    if kind is None or not any(word in text.lower() for word in _DAMAGE):
        return UnreadableFile(f"cannot read {name}: {text}")
    if "not recognized" in text:
        return UnreadableFile(
            f"the {kind} {name} is damaged or truncated, or not a {kind} at all "
            "(GDAL does not recognise its format)"
        )
    # The last clause says what was wrong; earlier ones repeat it or quote SQL.
    return damaged(f"the {kind} {name}", text.split(";")[-1].strip().split(" failed: ")[-1])


# -- where the dataset is -------------------------------------------------------------------


@dataclass
class _Location:
    """A dataset inside the file the user named: a path GDAL opens, or bytes held in memory."""

    gdal: str | io.BytesIO
    suffix: str
    size: Callable[[str], int | None]
    head: Callable[[str, int], bytes]
    sidecars: set[str]


def _locate(path: Path, layer: str | None) -> tuple[_Location, str | None]:
    """Where GDAL should read; for zip archives, which member (and the layer left to choose)."""
    if path.suffix.lower() != ".zip":
        folder = path.parent
        names = {p.name.lower(): p for p in folder.iterdir()} if folder.is_dir() else {}
        stem = path.stem.lower()

        def size(ext: str) -> int | None:
            p = names.get(stem + ext)
            return p.stat().st_size if p is not None else None

        def head(ext: str, n: int) -> bytes:
            with open(names[stem + ext], "rb") as f:
                return f.read(n)

        sidecars = {n[len(stem) :] for n in names if n.startswith(stem + ".")}
        return _Location(str(path), path.suffix.lower(), size, head, sidecars), layer
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise damaged(f"the zip archive {path}", str(exc)) from None
    members = {
        i.filename: i
        for i in archive.infolist()
        if not i.is_dir() and not i.filename.startswith("__MACOSX/")
    }
    datasets = [m for m in members if Path(m).suffix.lower() in _DATASET_SUFFIXES]
    gdbs = sorted({m.split(".gdb/")[0] + ".gdb" for m in members if ".gdb/" in m.lower()})
    datasets += gdbs
    if not datasets:
        raise UnreadableFile(f"{path} holds no dataset GDAL reads (no .shp, .gpkg, .geojson, ...)")
    chosen = datasets[0]
    if len(datasets) > 1:
        wanted = [m for m in datasets if layer and Path(m).stem.lower() == layer.lower()]
        if not wanted:
            listing = ", ".join(Path(m).stem for m in datasets)
            raise UnknownLayer(
                f"{path} holds several datasets ({listing}); choose one with --layer"
            )
        chosen = wanted[0]
        layer = None  # the layer named the member; inside it, the usual rules apply
    stem = chosen[: -len(Path(chosen).suffix)] if Path(chosen).suffix else chosen
    lower = {m.lower(): m for m in members}

    def zsize(ext: str) -> int | None:
        m = lower.get((stem + ext).lower())
        return members[m].file_size if m else None

    def zhead(ext: str, n: int) -> bytes:
        with archive.open(lower[(stem + ext).lower()]) as f:
            return f.read(n)

    sidecars = {m[len(stem) :].lower() for m in members if m.lower().startswith(stem.lower() + ".")}
    gdal = f"/vsizip/{path.resolve()}/{chosen}"
    return _Location(gdal, Path(chosen).suffix.lower(), zsize, zhead, sidecars), layer


def _json_buffer(loc: _Location) -> _Location:
    """GeoJSON GDAL cannot open as is: a bare array of features becomes a FeatureCollection."""
    size = loc.size(loc.suffix) or 0
    head = loc.head(loc.suffix, 64).lstrip(b"\xef\xbb\xbf").lstrip()
    if not head.startswith(b"["):
        return loc
    data = loc.head(loc.suffix, size).lstrip(b"\xef\xbb\xbf")
    wrapped = b'{"type":"FeatureCollection","features":' + data + b"}"
    return _Location(io.BytesIO(wrapped), loc.suffix, loc.size, loc.head, loc.sidecars)


def _check_shapefile(loc: _Location, name: str) -> None:
    """Refuse a shapefile whose parts are missing or shorter than their headers say.

    GDAL reads past such damage silently (records beyond the cut come back without
    geometry or attributes), so an incomplete copy would otherwise import half a layer.
    """
    if loc.size(".shx") is None:
        raise UnreadableFile(
            f"{name} has no .shx index beside it; copy the .shx, .dbf and .prj too"
        )
    for ext in (".shp", ".shx"):
        size = loc.size(ext) or 0
        head = loc.head(ext, 100)
        if len(head) < 100 or struct.unpack(">i", head[:4])[0] != 9994:
            raise UnreadableFile(f"{name}: the {ext} file is damaged (no shapefile header)")
        declared = struct.unpack(">i", head[24:28])[0] * 2
        if size < declared:
            raise UnreadableFile(
                f"{name} is truncated: its {ext} file holds {size:,} of the {declared:,} bytes "
                "its header declares; copy the complete file"
            )
    dbf = loc.size(".dbf")
    if dbf is not None:
        head = loc.head(".dbf", 12)
        if len(head) < 12:
            raise UnreadableFile(f"{name}: the .dbf file is damaged (no header)")
        records, header_len, record_len = struct.unpack("<IHH", head[4:12])
        expected = header_len + records * record_len
        if dbf < expected:
            raise UnreadableFile(
                f"{name} is truncated: its .dbf file holds {dbf:,} of the {expected:,} bytes "
                f"its {records:,} records need; copy the complete file"
            )


def _check_geopackage(loc: _Location, name: str) -> None:
    """Refuse a GeoPackage shorter than its SQLite header says, in words, before GDAL opens it.

    SQLite would only say "database disk image is malformed" (or, cut in its first page,
    "file is not a database"); the header's page size and page count tell how long it is.
    """
    size = loc.size(loc.suffix) or 0
    head = loc.head(loc.suffix, 100)
    if not head.startswith(_SQLITE_MAGIC):
        return  # not SQLite at all: GDAL says what it is not
    if len(head) < 100:
        raise damaged(f"the GeoPackage {name}", f"it holds {size:,} bytes, not even a header")
    page = struct.unpack(">H", head[16:18])[0]
    page = 65536 if page == 1 else page
    pages, counted, valid_for = struct.unpack(">I", head[28:32])[0], head[24:28], head[92:96]
    declared = page * pages
    if counted == valid_for and size < declared:  # the page count is trusted when these match
        raise damaged(
            f"the GeoPackage {name}",
            f"it holds {size:,} of the {declared:,} bytes its header declares",
        )


def _missing_parts(loc: _Location) -> list[str]:
    """Warnings for a shapefile read without its attribute table."""
    if loc.suffix != ".shp" or loc.size(".dbf") is not None:
        return []
    return ["no .dbf beside the .shp: features were imported without attributes"]


# -- layers ---------------------------------------------------------------------------------


def _choose_layers(loc: _Location, name: str, layer: str | None) -> list[str | None]:
    """The layer(s) to read: the one asked for, the only one, or every layer of a KML file."""
    src = loc.gdal
    try:
        listed = pyogrio.list_layers(src)
    except _GDAL_ERRORS as exc:
        raise _unreadable(name, loc.suffix, exc) from None
    finally:
        if isinstance(src, io.BytesIO):
            src.seek(0)
    layers = [(str(n), g) for n, g in listed.tolist()]
    if not layers:
        raise EmptySource(f"{name} holds no layers")
    if layer is not None:
        match = [n for n, _ in layers if n == layer] or [
            n for n, _ in layers if n.lower() == layer.lower()
        ]
        if not match:
            listing = ", ".join(n for n, _ in layers)
            raise UnknownLayer(f"{name} has no layer {layer!r}; its layers are: {listing}")
        return [match[0]]
    if len(layers) == 1:
        return [None]
    spatial = [n for n, g in layers if g is not None]
    if len(spatial) == 1:
        return [spatial[0]]
    if str(name).lower().endswith((".kml", ".kmz")):
        return list(spatial or [n for n, _ in layers])
    listing = ", ".join(f"{n} ({g or 'no geometry'})" for n, g in layers)
    raise UnknownLayer(f"{name} holds several layers: {listing}; choose one with --layer")


def _read_layer(
    loc: _Location,
    name: str,
    layer: str | None,
    raw: bool,
    options: dict[str, str],
    *,
    arrow: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any], bool]:
    """One layer read; returns the frame, GDAL's description of it, and whether it is raw.

    Raw means every byte of text was read as the Latin-1 character of the same number, to be
    decoded by `importers.encoding`; a normal read falls back to it when GDAL's text is not
    valid in the encoding the file declares.
    """
    src = loc.gdal

    def read(enc: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
        if isinstance(src, io.BytesIO):
            src.seek(0)
        info = pyogrio.read_info(src, layer=layer, encoding=enc, **options)
        if isinstance(src, io.BytesIO):
            src.seek(0)
        with warnings.catch_warnings():
            # Unparsable WKT or WKB becomes a missing geometry, rejected with its row later;
            # JSON-typed fields that do not parse stay text.
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", "Could not parse column", UserWarning)
            kwargs = dict(layer=layer, encoding=enc, fid_as_index=True, on_invalid="ignore")
            if enc is None and arrow:
                try:  # Arrow reads large binary files twice as fast
                    return pyogrio.read_dataframe(src, use_arrow=True, **kwargs, **options), info
                except ValueError:
                    pass  # a layout the Arrow path does not take (fid also a column, ...)
            frame = pyogrio.read_dataframe(src, **kwargs, **options)
        return frame, info

    try:
        try:
            frame, info = read(RAW if raw else None)
        except UnicodeDecodeError:
            raw = True
            frame, info = read(RAW)
    except (*_GDAL_ERRORS, OSError, ValueError) as exc:
        raise _unreadable(name, loc.suffix, exc) from None
    return frame, info, raw


def read_file(
    path: str | Path, *, layer: str | None = None, encoding: str | None = None
) -> SourceFrame:
    """Read a vector file (any format GDAL reads) with its declared CRS and real feature ids.

    `encoding` overrides the attribute encoding; without it, undeclared shapefile text is
    detected (UTF-8, GBK or Latin-1) and undecodable text anywhere is recovered. Raises
    `UnreadableFile`, `UnknownLayer` or `EmptySource` with a message for the user.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise UnreadableFile(f"{name}: no such file")
    if p.is_file() and p.stat().st_size == 0:
        raise EmptySource(f"{name} is empty (0 bytes)")
    loc, layer = _locate(p, layer)
    if loc.suffix in (".json", ".geojson"):
        loc = _json_buffer(loc)
    raw = encoding is not None
    if loc.suffix == ".shp":
        _check_shapefile(loc, name)
        raw = raw or (".cpg" not in loc.sidecars and _undeclared_dbf(loc))
    elif loc.suffix == ".gpkg":
        _check_geopackage(loc, name)
    layers: list[str | None] = [layer]
    if layer is not None or loc.suffix not in _SINGLE_LAYER:
        layers = _choose_layers(loc, name, layer)
    options = {}
    if loc.suffix in (".csv", ".tsv", ".txt"):
        options = {
            "X_POSSIBLE_NAMES": CSV_X_NAMES,
            "Y_POSSIBLE_NAMES": CSV_Y_NAMES,
            "GEOM_POSSIBLE_NAMES": CSV_GEOM_NAMES,
            "KEEP_GEOM_COLUMNS": "NO",
        }
    arrow = loc.suffix in _ARROW
    reads = [_read_layer(loc, name, lyr, raw, options, arrow=arrow) for lyr in layers]
    result = _assemble(name, layers, reads, encoding)
    result.warnings = _missing_parts(loc)
    if isinstance(loc.gdal, io.BytesIO):
        result.layer = None  # GDAL names an in-memory dataset after a random buffer
    return result


def _undeclared_dbf(loc: _Location) -> bool:
    """Whether a shapefile without .cpg declares no code page in its .dbf either.

    GDAL then assumes Latin-1, which turns the GBK text of Chinese shapefiles into mojibake.
    A language driver id in the .dbf header (byte 29) other than 0 or 0x57 ("ANSI", whichever
    code page the writing machine had) is a real declaration and is left to GDAL.
    """
    if loc.size(".dbf") is None:
        return False
    head = loc.head(".dbf", 32)
    return (head[29] if len(head) > 29 else 0) in (0, 0x57)


def _nested_as_json(frame: pd.DataFrame) -> pd.DataFrame:
    """Lists and objects GDAL parsed out of JSON-typed fields, as JSON text again."""
    out = frame
    for col in frame.columns:
        s = frame[col]
        if s.dtype != object or col == "geometry":
            continue
        nested = s.map(lambda v: isinstance(v, dict | list | tuple | np.ndarray))
        if nested.any():
            if out is frame:
                out = frame.copy()
            out[col] = s.where(~nested, s[nested].map(_json_text))
    return out


def _json_text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value, ensure_ascii=False, default=str)


def _assemble(
    name: str,
    layers: list[str | None],
    reads: list[tuple[pd.DataFrame, dict[str, Any], bool]],
    preferred: str | None,
) -> SourceFrame:
    infos = [r[1] for r in reads]
    info = infos[0]
    notes: list[str] = []
    fixed = []
    for frame, _, raw in reads:
        f, used = fix_text(_nested_as_json(frame), raw=raw, preferred=preferred)
        fixed.append(f)
        note = describe(used)
        if note and (raw or any(k != "utf-8" for k in used)):
            notes.append(note + (f" (asked for {codec_name(preferred)})" if preferred else ""))
    for frame, inf in zip(fixed, infos, strict=True):
        declared = inf.get("features", -1)
        if declared is not None and declared >= 0 and declared != len(frame):
            raise UnreadableFile(
                f"{name} is truncated or damaged: it declares {declared:,} features "
                f"but {len(frame):,} could be read"
            )
    if not all(isinstance(f, gpd.GeoDataFrame) for f in fixed):
        if info.get("driver") == "CSV":
            raise UnreadableFile(
                f"{name}: found no coordinates; a CSV needs lon/lat (or x/y) columns or a WKT "
                "column"
            )
        raise UnreadableFile(f"{name}: the layer has no geometry")
    fid_column = info.get("fid_column") or None
    fid = None
    if fid_column and len(fixed) == 1:
        fid = np.asarray(fixed[0].index)
    if len(fixed) > 1:
        for f, lyr in zip(fixed, layers, strict=True):
            f["layer"] = lyr
        frame = pd.concat(fixed, ignore_index=True)
        frame = gpd.GeoDataFrame(frame, geometry="geometry", crs=fixed[0].crs)
        notes.append(f"read {len(layers)} layers: " + ", ".join(str(x) for x in layers))
    else:
        frame = fixed[0].reset_index(drop=True)
    if len(frame) == 0:
        raise EmptySource(f"{name} holds no features")
    crs = frame.crs
    layer_name = (layers[0] or info.get("layer_name")) if len(layers) == 1 else None
    return SourceFrame(
        frame=frame,
        path=name,
        driver=str(info.get("driver") or ""),
        layer=str(layer_name) if layer_name else None,
        crs=CRS.from_user_input(crs) if crs is not None else None,
        fid=fid,
        fid_column=fid_column,
        notes=notes,
    )
