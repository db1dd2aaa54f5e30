"""Writing a stored layer out to a file GIS tools open: GeoPackage, GeoJSON or FlatGeobuf.

The export carries the feature `id`, every schema field with its type (dates as dates,
booleans as booleans), the `source` dataset, and the geometry in lon/lat (EPSG:4326). The
file is written beside its destination and moved into place, so a failed export never leaves
half a file under the name asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import pyogrio.errors

from importers.errors import ImporterError
from layers.errors import UnknownCollection
from layers.layer import SOURCE, Layer
from layers.models import Access, FieldType
from layers.policy import View
from layers.store import Store

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}


class ExportError(ImporterError):
    """The layer could not be written to the file asked for; nothing was left there."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    driver: str
    features: int


def layer_frame(layer: Layer) -> gpd.GeoDataFrame:
    """A layer as a GeoDataFrame: `id`, the schema fields, `source`, geometry (EPSG:4326)."""
    cols: dict[str, pd.Series] = {"id": pd.Series(layer.ids, dtype=object)}
    for f in layer.schema.fields:
        s = layer.attrs[f.name]
        if f.type is FieldType.DATE:
            # datetime.date objects become Arrow date32, which GDAL writes as a Date field.
            s = pd.Series(s.dt.date.where(s.notna(), None), dtype=object)
        elif f.type is FieldType.STRING:
            s = s.astype(object).where(s.notna(), None)
        cols[f.name] = s.reset_index(drop=True)
    cols[SOURCE] = layer.attrs[SOURCE].astype(object).where(layer.attrs[SOURCE].notna(), None)
    return gpd.GeoDataFrame(
        pd.DataFrame(cols), geometry=gpd.GeoSeries(layer.geometry, crs="EPSG:4326")
    )


def export_layer(
    store: Store,
    collection: str,
    path: str | Path,
    *,
    scope: Access = Access.RESTRICTED,
    view: View | None = None,
) -> ExportResult:
    """Write `collection` (as `scope`, and `view` when given, may see it) to `path`; the format
    follows the suffix."""
    target = Path(path)
    driver = DRIVERS.get(target.suffix.lower())
    if driver is None:
        raise ExportError(
            f"{target}: export to .gpkg (GeoPackage), .geojson (GeoJSON) or .fgb (FlatGeobuf)"
        )
    if not target.parent.exists():
        raise ExportError(f"{target}: the folder {target.parent} does not exist")
    layer = store.load(collection, scope)
    if view is not None:
        if not view.sees(collection, layer.schema.classification):
            raise UnknownCollection(collection)
        layer, _ = view.sift(layer)
    frame = layer_frame(layer)
    staged = target.with_name(f".{target.stem}.partial{target.suffix}")
    try:
        staged.unlink(missing_ok=True)
        options = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
        pyogrio.write_dataframe(
            frame,
            staged,
            layer=collection,
            driver=driver,
            promote_to_multi=False,  # one source record is one feature, as stored
            use_arrow=True,  # through Arrow, dates are written as Date fields, not text
            layer_options=options or None,
        )
        os.replace(staged, target)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        staged.unlink(missing_ok=True)
        raise ExportError(f"cannot write {target}: {exc}") from None
    return ExportResult(target, driver, len(layer))
