"""The benchmark kit's generated city (`gen_city.py` GeoPackage) as twin layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio

from layers.layer import SOURCE, Layer, coerce, empty_attrs
from layers.schemas import LIGHTS, PARKS, PIPES

# twin field <- city column (None: left empty)
_COLUMNS = {
    "pipes": (
        PIPES,
        {
            "material": "material",
            "diameter_mm": "diameter_mm",
            "install_year": "install_year",
            "pressure_zone": "pressure_zone",
        },
    ),
    "lights": (
        LIGHTS,
        {
            "lamp_type": "lamp_type",
            "wattage_w": "power_w",
            "height_m": "height_m",
            "status": "status",
        },
    ),
    "parks": (PARKS, {"name": "name", "kind": "kind", "area_m2": "area_m2"}),
}


def load_city(gpkg: str | Path, name: str) -> Layer:
    """One layer of the generated city, ids = the GeoPackage fids (as tipg serves them)."""
    schema, mapping = _COLUMNS[name]
    df = pyogrio.read_dataframe(gpkg, layer=name, fid_as_index=True)
    attrs = empty_attrs(schema, len(df))
    for field, column in mapping.items():
        attrs[field] = coerce(df[column].to_numpy(), schema.field(field).type).to_numpy()
    if name == "pipes":
        attrs["network"] = pd.array(["water"] * len(df), dtype="string")
        attrs["status"] = pd.array(["in_service"] * len(df), dtype="string")
    if name == "lights":
        attrs["status"] = attrs["status"].replace({"ok": "on"})
    attrs[SOURCE] = pd.array(["gen_city"] * len(df), dtype="string")
    ids = np.array([str(i) for i in df.index], dtype=object)
    return Layer(schema, ids, df.geometry.to_numpy(), attrs)
