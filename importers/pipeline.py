"""The import pipeline: read, place, map, clean, repair, identify, write, report.

Two entry points, stable for other importers to call:

- `import_file(store, collection, path, options, *, user)` reads any file GDAL reads and
  imports it into `collection`;
- `ingest(store, schema, frame, options, *, source, user, meta=None)` does everything after
  reading, for data already in a GeoDataFrame (the OSM importer, the demo city): coordinates
  to WGS84, mapping and cleaning, geometry repair, ids, the atomic write, the report.

Both write once, through `store.write`, which lands everything or nothing; every problem
found before it is either a per-record rejection in the report or one `ImporterError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from importers.coords import undo_offsets
from importers.crs import choose_crs, to_wgs84
from importers.errors import EmptySource, NothingImported, WrongGeometryType
from importers.extras import keep_extras
from importers.files import read_file
from importers.ids import CONTENT, IdChoice, choose_ids
from importers.mapping import build_attrs, plan_mapping
from importers.measure import geodesic_area_m2
from importers.options import ImportOptions
from importers.repair import GeometryCheck, repair
from importers.report import ImportReport, RowNote
from importers.schema import infer_schema, schema_for, with_classification
from layers.errors import UnknownCollection
from layers.layer import SOURCE, UPDATED, VERSION, Layer, coerce, dtype_of
from layers.models import Access, FieldType, GeometryFamily, LayerSchema
from layers.schemas import RESERVED
from layers.store import Store

# Fields computed on the ground where a file leaves them empty, for polygon layers.
AREA_FIELD = "area_m2"


@dataclass
class _Context:
    """What reading the file found out, for the report (empty for `ingest`)."""

    path: str | None = None
    driver: str | None = None
    layer: str | None = None
    declared: CRS | None = None
    fid: np.ndarray | None = None
    fid_column: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def import_file(
    store: Store, collection: str, path: str | Path, options: ImportOptions, *, user: str
) -> ImportReport:
    """Import the vector file at `path` into `collection` of `store`, atomically.

    The collection is a built-in layer (pipes, valves, ...), a custom one already in the
    store, one described by `options.schema_file`, or a new custom layer whose schema is
    inferred from the file's columns. Raises an `ImporterError` (nothing written) when the
    file cannot be imported at all; otherwise returns the report of what landed.
    """
    schema = schema_for(
        store, collection, schema_file=options.schema_file, classification=options.classification
    )
    src = read_file(path, layer=options.layer, encoding=options.encoding)
    ctx = _Context(
        path=str(path),
        driver=src.driver,
        layer=src.layer,
        declared=src.crs,
        fid=src.fid,
        fid_column=src.fid_column,
        warnings=list(src.warnings),
        notes=list(src.notes),
    )
    if schema is None:
        schema = infer_schema(
            collection,
            src.frame,
            geometry=_family_of(src.frame),
            skip=(*options.mapping, *options.drop),
        )
        schema = with_classification(schema, options.classification)
        ctx.notes.append(f"new custom layer: {len(schema.fields)} fields from the file's columns")
    source = options.source or Path(path).stem
    return _ingest(store, schema, src.frame, options, source=source, user=user, meta=None, ctx=ctx)


def ingest(
    store: Store,
    schema: LayerSchema,
    frame: gpd.GeoDataFrame,
    options: ImportOptions,
    *,
    source: str,
    user: str,
    meta: dict[str, Any] | None = None,
    files: Mapping[str, bytes] | None = None,
) -> ImportReport:
    """Import features already read into `frame` (one row per source record) as `schema`.

    `frame.crs` is the coordinates' CRS (None: lon/lat, or `options.crs`); `meta` (for
    example `{"attribution": "© OpenStreetMap contributors, ODbL"}`) is stored with the
    layer, and `files` (a road graph) kept with it in the same write. Row numbers in the
    report are positions in `frame`, counted from 1.
    """
    crs = frame.crs
    ctx = _Context(declared=CRS.from_user_input(crs) if crs is not None else None)
    schema = with_classification(schema, options.classification)
    return _ingest(
        store, schema, frame, options, source=source, user=user, meta=meta, ctx=ctx, files=files
    )


def _stored_schema(store: Store, name: str) -> LayerSchema | None:
    """The layer's schema as stored, extras included; None for a new layer."""
    try:
        return store.schema(name, Access.RESTRICTED)
    except UnknownCollection:
        return None


def _family_of(frame: gpd.GeoDataFrame) -> GeometryFamily:
    """The one geometry family of a frame's geometries, or ANY when mixed."""
    types = set(frame.geometry.dropna().geom_type.unique())
    for family in (GeometryFamily.POINT, GeometryFamily.LINE, GeometryFamily.POLYGON):
        if types and all(family.accepts(t) for t in types):
            return family
    return GeometryFamily.ANY


def _row_notes(
    by_reason: dict[str, np.ndarray],
    frame: pd.DataFrame,
    ids: IdChoice,
    details: dict[int, str] | None = None,
) -> list[RowNote]:
    """Rejected or repaired rows as report notes, naming each record by its source id.

    `details` gives some rows (0-based) their own wording of the reason."""
    details = details or {}
    column = ids.column if ids.column != CONTENT and ids.column in frame.columns else None
    values = frame[column] if column is not None else None
    out = []
    for reason, rows in by_reason.items():
        for r in np.asarray(rows).tolist():
            source_id = None
            if values is not None and pd.notna(values.iloc[r]):
                source_id = f"{column} {values.iloc[r]}"
            out.append(RowNote(r + 1, reason, source_id, details.get(r)))
    return sorted(out, key=lambda x: x.row)


def _fill_area(schema: LayerSchema, attrs: pd.DataFrame, geometry: np.ndarray) -> int:
    """Compute `area_m2` on the ground where the file left it empty; how many were filled."""
    if AREA_FIELD not in schema.field_names or schema.field(AREA_FIELD).type is not FieldType.FLOAT:
        return 0
    missing = attrs[AREA_FIELD].isna().to_numpy()
    polygonal = np.isin(shapely.get_type_id(geometry), [3, 6])
    todo = np.flatnonzero(missing & polygonal)
    if len(todo):
        values = attrs[AREA_FIELD].to_numpy(dtype=float, na_value=np.nan, copy=True)
        values[todo] = geodesic_area_m2(geometry[todo])
        attrs[AREA_FIELD] = coerce(values, FieldType.FLOAT)
    return len(todo)


def _refuse_wrong_family(check: GeometryCheck, schema: LayerSchema, name: str) -> None:
    """One clear error when every geometry is of another family (a points file into pipes)."""
    usable = len(check.geometry) - sum(
        len(rows) for reason, rows in check.rejected.items() if " layer" not in reason
    )
    if check.wrong_family and check.wrong_family >= usable:
        kinds = sorted({r.split(" geometry in")[0] for r in check.rejected if r.endswith(" layer")})
        wanted = {
            GeometryFamily.POINT: "points (Point, MultiPoint)",
            GeometryFamily.LINE: "lines (LineString, MultiLineString)",
            GeometryFamily.POLYGON: "polygons (Polygon, MultiPolygon)",
            GeometryFamily.ANY: "points, lines or polygons",
        }[schema.geometry]
        raise WrongGeometryType(
            f"{name} holds {', '.join(kinds)} geometries, but the {schema.name} layer takes "
            f"{wanted}; import it into another layer"
        )


def _ingest(
    store: Store,
    schema: LayerSchema,
    frame: gpd.GeoDataFrame,
    options: ImportOptions,
    *,
    source: str,
    user: str,
    meta: dict[str, Any] | None,
    ctx: _Context,
    files: Mapping[str, bytes] | None = None,
) -> ImportReport:
    name = ctx.path or "the data"
    n = len(frame)
    if n == 0:
        raise EmptySource(f"{name} holds no features")
    named = [level for level in frame.index.names if level is not None]
    # A named index (an OSM element id, say) is data: keep it as columns, unless they exist.
    keep_index = bool(named) and not set(named) & set(frame.columns)
    frame = frame.reset_index(drop=not keep_index)
    report = ImportReport(
        collection=schema.name,
        source=source,
        user=user,
        path=ctx.path,
        driver=ctx.driver,
        layer=ctx.layer,
        coords=options.coords,
        mode=options.mode,
        read=n,
        warnings=list(ctx.warnings),
        notes=list(ctx.notes),
    )
    raw = np.asarray(frame.geometry.array, dtype=object)
    choice = choose_crs(ctx.declared, options.crs, raw)
    geometry = to_wgs84(raw, choice)
    report.crs = f"{choice.label} ({choice.how})"
    if options.coords != "wgs84":
        geometry = undo_offsets(geometry, options.coords)

    attrs_frame = frame.drop(columns=[frame.geometry.name])
    stored = _stored_schema(store, schema.name)
    declared = schema.declared()
    plan = plan_mapping(
        attrs_frame, declared, options.mapping, options.constants, drop=options.drop
    )
    prefix = source if options.id_prefix is None else options.id_prefix
    ids = choose_ids(
        attrs_frame,
        schema,
        geometry,
        prefix=prefix,
        explicit=options.id_column,
        fid=ctx.fid,
        fid_column=ctx.fid_column,
    )
    report.id_column = ids.column
    report.notes += ids.notes
    attrs, report.cleaned = build_attrs(attrs_frame, declared, plan)
    report.fields = dict(plan.columns)
    report.constants = dict(plan.constants)
    # The id column is kept too, unless it is named like the feature id itself.
    used = [ids.column] if ids.column in attrs_frame.columns and ids.column in RESERVED else []
    extras = keep_extras(
        attrs_frame,
        plan.unmapped([str(c) for c in attrs_frame.columns], also_used=used),
        declared,
        stored,
    )
    schema = declared.with_extras(extras.fields)
    attrs = pd.concat([attrs, pd.DataFrame(extras.values, index=attrs.index)], axis=1)
    report.extra_columns = {column: name for name, column in extras.columns.items()}
    report.dropped_columns = list(plan.dropped)

    check = repair(geometry, schema.geometry, raw=raw)
    _refuse_wrong_family(check, schema, name)
    for row, reason in ids.rejected.items():
        check.rejected.setdefault(reason, np.array([], dtype=np.int64))
        check.rejected[reason] = np.append(check.rejected[reason], row)
    keep = check.keep
    report.rejected = _row_notes(check.rejected, attrs_frame, ids, check.details)
    report.repaired = _row_notes(check.repaired, attrs_frame, ids)
    report.normalised = dict(check.normalised)
    if not keep.any():
        reasons = "; ".join(f"{k} ({v:,})" for k, v in report.rejected_by_reason().items())
        raise NothingImported(f"nothing imported from {name}: every record was rejected: {reasons}")

    rows = np.flatnonzero(keep)
    attrs = attrs.iloc[rows].reset_index(drop=True)
    geometry = check.geometry[rows]
    filled = _fill_area(schema, attrs, geometry)
    if filled:
        report.computed[AREA_FIELD] = f"{filled:,} features, geodesic area on the WGS84 ellipsoid"
    attrs[SOURCE] = pd.Series(source, index=attrs.index, dtype=dtype_of(FieldType.STRING))
    attrs[VERSION] = np.ones(len(rows), dtype=np.int64)
    attrs[UPDATED] = pd.Series(
        np.full(len(rows), np.datetime64("NaT"), dtype="datetime64[ms]")
    ).dt.tz_localize("UTC")
    layer = Layer(schema, ids.ids[rows], geometry, attrs, dict(meta or {}))
    result = store.write(
        layer,
        mode=options.mode,
        source=source,
        user=user,
        details=report.summary(),
        meta=meta,
        files=files,
    )
    report.added, report.updated = result.added, result.updated
    report.unchanged, report.removed = result.unchanged, result.removed
    report.landed = True
    return report
