"""Extra attributes: safe names, types read from values, union over re-imports, the store."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from importers.errors import InvalidOption
from importers.extras import infer_type, keep_extras, widen
from layers.gpkg import GeoPackageStore
from layers.models import FieldType
from layers.schemas import GRIDS, LIGHTS
from tests.importers.conftest import load, run_import


def points(n: int, *, squares: bool = False, **columns) -> gpd.GeoDataFrame:
    geoms = shapely.points(114.3 + np.arange(n) * 1e-3, np.full(n, 30.5))
    if squares:
        geoms = shapely.buffer(geoms, 4e-4, cap_style="square")
    return gpd.GeoDataFrame(columns, geometry=geoms, crs="EPSG:4326")


@pytest.mark.parametrize(
    "values, want",
    [
        ([1, 2, None], FieldType.INTEGER),
        ([1.0, 2.0, np.nan], FieldType.INTEGER),
        ([1.5, 2.0], FieldType.FLOAT),
        (["12", "-3", None], FieldType.INTEGER),
        (["0012", "3"], FieldType.STRING),  # leading zeros are a code, not a number
        (["1.5", "2e3"], FieldType.FLOAT),
        (["2020-01-31", None], FieldType.DATE),
        (["2020-02-31"], FieldType.STRING),
        (["True", "false"], FieldType.BOOLEAN),
        ([True, False, None], FieldType.BOOLEAN),
        (["a", 1], FieldType.STRING),
        ([None, None], FieldType.STRING),
        (pd.to_datetime(["2020-01-01", "2021-05-06"]), FieldType.DATE),
        (pd.to_datetime(["2020-01-01 10:00", None]), FieldType.DATETIME),
    ],
)
def test_types_are_read_from_values(values, want):
    assert infer_type(pd.Series(values)) is want


def test_widening():
    assert widen(FieldType.INTEGER, FieldType.FLOAT) is FieldType.FLOAT
    assert widen(FieldType.DATE, FieldType.DATETIME) is FieldType.DATETIME
    assert widen(FieldType.INTEGER, FieldType.DATE) is FieldType.STRING
    assert widen(FieldType.BOOLEAN, FieldType.BOOLEAN) is FieldType.BOOLEAN


def test_names_are_made_safe_only_where_they_must_be():
    frame = pd.DataFrame(
        {
            "Name": ["a"],  # clashes with grids' `name`
            "ID": ["x"],  # reserved
            "": ["blank"],
            "Ward\x00 ": [3],
            "Name_src": ["taken by the file itself"],
            "街道": ["江夏"],
            "geometry_note": ["fine"],
        }
    )
    extras = keep_extras(frame, list(frame.columns), GRIDS, None)
    assert list(extras.columns) == [
        "Name_src2",
        "ID_src",
        "column",
        "Ward",
        "Name_src",
        "街道",
        "geometry_note",
    ]
    assert len({n.casefold() for n in extras.columns}) == len(extras.columns)
    assert all(f.extra for f in extras.fields)


def test_case_insensitive_duplicates_get_distinct_names():
    frame = pd.DataFrame([["a", "b", "c"]], columns=["Owner", "OWNER", "owner"])
    names = list(keep_extras(frame, list(frame.columns), LIGHTS, None).columns)
    assert names[0] == "Owner" and len({n.casefold() for n in names}) == 3


def test_extras_round_trip_through_the_store_and_a_reopen(store_dir, tmp_path):
    path = tmp_path / "lights.geojson"
    points(
        3,
        PoleID=["p1", "p2", "p3"],
        Street=["Main", "Elm", None],
        Lamps=[1, 2, None],
        Ratio=[50.5, 70.0, None],
        Checked=["true", "false", None],
        Built=["2001-02-03", None, "1999-12-31"],
    ).to_file(path, driver="GeoJSON")
    store = GeoPackageStore(store_dir)
    report = run_import(store, "lights", path)
    store.close()
    assert list(report.extra_columns) == ["PoleID", "Street", "Lamps", "Ratio", "Checked", "Built"]
    again = GeoPackageStore(store_dir, create=False)
    layer = load(again, "lights")
    again.close()
    types = {f.name: f.type for f in layer.schema.extras}
    assert types == {
        "PoleID": FieldType.STRING,
        "Street": FieldType.STRING,
        "Lamps": FieldType.INTEGER,
        "Ratio": FieldType.FLOAT,
        "Checked": FieldType.BOOLEAN,
        "Built": FieldType.DATE,
    }
    props = layer.properties(np.arange(3))
    assert [p["Street"] for p in props] == ["Main", "Elm", None]
    assert [p["Lamps"] for p in props] == [1, 2, None]
    assert [p["Ratio"] for p in props] == [50.5, 70, None]
    assert [p["Checked"] for p in props] == [True, False, None]
    assert [p["Built"] for p in props] == ["2001-02-03", None, "1999-12-31"]
    # The layer's own columns in the GeoPackage, as GDAL sees them.
    import pyogrio

    info = pyogrio.read_info(store_dir / "twin.gpkg", layer="lights")
    assert {"Street", "Lamps", "Ratio", "Checked", "Built"} <= set(info["fields"])


def test_a_later_file_widens_types_and_adds_columns(store, tmp_path):
    first = tmp_path / "a.geojson"
    points(2, PoleID=["p1", "p2"], Lamps=[1, 2], Zone=["N", "S"], Code=[10, 11]).to_file(
        first, driver="GeoJSON"
    )
    run_import(store, "lights", first, source="cam")
    later = tmp_path / "b.geojson"
    points(2, PoleID=["p2", "p3"], LAMPS=[2.5, 3.0], Ward=[7, 8], Code=["B-1", None]).to_file(
        later, driver="GeoJSON"
    )
    report = run_import(store, "lights", later, source="cam")
    assert report.extra_columns["LAMPS"] == "Lamps"  # the stored column, case-insensitively
    layer = load(store, "lights")
    types = {f.name: f.type for f in layer.schema.extras}
    assert types["Lamps"] is FieldType.FLOAT and types["Zone"] is FieldType.STRING
    assert types["Code"] is FieldType.STRING and types["Ward"] is FieldType.INTEGER
    props = dict(zip(layer.ids.tolist(), layer.properties(np.arange(len(layer))), strict=True))
    assert props["cam:p1"]["Lamps"] == 1 and props["cam:p1"]["Zone"] == "N"
    assert props["cam:p1"]["Code"] == "10" and props["cam:p2"]["Code"] == "B-1"
    assert props["cam:p2"]["Lamps"] == 2.5 and props["cam:p2"]["Zone"] == "S"
    assert props["cam:p3"]["Zone"] is None and props["cam:p3"]["Ward"] == 8
    # The widened columns are retyped in the GeoPackage too, as GDAL reads them.
    import pyogrio

    info = pyogrio.read_info(store.file, layer="lights")
    dtypes = dict(zip(info["fields"], info["dtypes"], strict=True))
    assert dtypes["Lamps"] == "float64" and dtypes["Code"] == "object"
    codes = pyogrio.read_dataframe(store.file, layer="lights")["Code"].tolist()
    assert [None if pd.isna(c) else c for c in codes] == ["10", "B-1", None]


def test_drop_needs_a_column_the_file_has(store, tmp_path):
    path = tmp_path / "a.geojson"
    points(1, PoleID=["p1"], Zone=["N"]).to_file(path, driver="GeoJSON")
    with pytest.raises(InvalidOption, match="--drop Nope"):
        run_import(store, "lights", path, drop=("Nope",))
    report = run_import(store, "lights", path, drop=("zone",))
    assert report.dropped_columns == ["Zone"] and "Zone" not in report.extra_columns
    assert "kept as extra: PoleID" in report.text() and "ignored" not in report.text()


def test_levels_of_a_name_prefer_the_one_that_tells_features_apart(store, tmp_path):
    path = tmp_path / "grid.geojson"
    points(
        4,
        squares=True,
        NAME=["Wuhan"] * 4,
        NAME_1=["Jiangxia"] * 2 + ["Hongshan"] * 2,
        NAME_2=["A", "B", "C", "D"],
        NAME_3=["a", "b", "c", "d"],
    ).to_file(path, driver="GeoJSON")
    report = run_import(store, "grids", path, constants={"level": "cell"})
    assert report.fields["name"] == "NAME_3"  # 4 distinct, like NAME_2: the finer level
    assert set(report.extra_columns) == {"NAME", "NAME_1", "NAME_2"}
    explicit = run_import(store, "grids", path, mapping={"NAME_1": "name"}, source="x")
    assert explicit.fields["name"] == "NAME_1"  # --map always wins
