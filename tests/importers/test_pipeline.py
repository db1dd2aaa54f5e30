"""The two entry points: `ingest` for data already read, and `import_file` into custom layers."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Geod, Transformer

from importers.errors import InvalidOption, NothingImported
from importers.options import ImportOptions
from importers.pipeline import ingest
from layers.errors import UnknownCollection
from layers.models import Access, FieldType, GeometryFamily
from layers.schemas import LIGHTS, PARKS
from tests.importers.conftest import load, max_distance_m, run_import

ODBL = {"attribution": "© OpenStreetMap contributors, ODbL"}


def test_ingest_writes_meta_reprojects_and_keeps_a_named_index(store):
    t = Transformer.from_crs(4326, 32650, always_xy=True)
    lonlat = np.array([(114.32, 30.35), (114.33, 30.36)])
    frame = gpd.GeoDataFrame(
        {"lamp": ["LED", "HPS"], "status": ["on", "Fault"]},
        geometry=shapely.points(np.column_stack(t.transform(lonlat[:, 0], lonlat[:, 1]))),
        crs="EPSG:32650",
        index=pd.Index([5017, 5018], name="osm_id"),
    )
    report = ingest(
        store, LIGHTS, frame, ImportOptions(id_prefix="osm"), source="helsinki", user="u", meta=ODBL
    )
    assert report.added == 2 and report.crs == "EPSG:32650 (declared)"
    assert store.meta("lights", Access.PUBLIC)["attribution"] == ODBL["attribution"]
    layer = load(store, "lights")
    assert sorted(layer.ids) == ["osm:5017", "osm:5018"]
    assert max_distance_m(layer.geometry, shapely.points(lonlat)) < 0.01
    assert layer.attrs["status"].tolist() == ["on", "fault"]
    assert store.history("lights")[0].source == "helsinki"


def test_ingest_computes_park_areas_on_the_ground(store):
    square = shapely.box(114.30, 30.30, 114.31, 30.31)
    frame = gpd.GeoDataFrame(
        {"name": ["A", "B"], "area_m2": [None, 123.0], "park_id": ["a", "b"]},
        geometry=[square, square],
        crs="EPSG:4326",
    )
    ingest(store, PARKS, frame, ImportOptions(), source="s", user="u")
    areas = dict(zip(load(store, "parks").ids, load(store, "parks").attrs["area_m2"], strict=True))
    geodesic = abs(Geod(ellps="WGS84").geometry_area_perimeter(square)[0])
    assert areas["s:a"] == pytest.approx(geodesic, rel=1e-9)
    assert 1.0e6 < geodesic < 1.1e6  # about 0.96 km x 1.11 km
    assert areas["s:b"] == 123.0  # the file's own value is kept


def test_a_new_custom_layer_takes_its_fields_from_the_file(store, tmp_path):
    path = tmp_path / "poles.geojson"
    gpd.GeoDataFrame(
        {
            "Pole ID": ["p1", "p2"],
            "Voltage kV": [10.5, 0.4],
            "Phases": [3, 1],
            "Owner": ["State Grid", "国家电网"],
        },
        geometry=[shapely.Point(114.32, 30.35), shapely.Point(114.33, 30.35)],
        crs="EPSG:4326",
    ).to_file(path, driver="GeoJSON")
    report = run_import(store, "power_poles", path, id_column="Pole ID", classification="internal")
    assert report.added == 2
    schema = store.schema("power_poles", Access.INTERNAL)
    assert schema.geometry is GeometryFamily.POINT
    types = {f.name: f.type for f in schema.fields}
    assert types == {
        "pole_id": FieldType.STRING,
        "voltage_kv": FieldType.FLOAT,
        "phases": FieldType.INTEGER,
        "owner": FieldType.STRING,
    }
    with pytest.raises(UnknownCollection):
        store.load("power_poles", Access.PUBLIC)
    layer = store.load("power_poles", Access.INTERNAL)
    assert sorted(layer.attrs["owner"]) == sorted(["State Grid", "国家电网"])
    again = run_import(store, "power_poles", path, id_column="Pole ID")
    assert again.unchanged == 2  # the stored schema maps the same columns again


def test_a_custom_layer_from_a_schema_file(store, tmp_path):
    toml = tmp_path / "poles.toml"
    toml.write_text(
        'title = "Power poles"\ngeometry = "point"\n'
        "[fields]\n"
        'voltage_kv = { type = "float", aliases = ["volts_kv", "kv"], minimum = 0 }\n'
        'operator = { type = "string", aliases = ["owner"] }\n',
        encoding="utf-8",
    )
    path = tmp_path / "poles.csv"
    path.write_text("id,lon,lat,KV,OWNER\n1,114.32,30.35,10,SGCC\n2,114.33,30.35,-1,SGCC\n")
    report = run_import(store, "poles", path, schema_file=toml)
    assert report.fields == {"voltage_kv": "KV", "operator": "OWNER"}
    layer = load(store, "poles")
    assert dict(zip(layer.ids, layer.attrs["voltage_kv"], strict=True))["poles:1"] == 10.0
    assert pd.isna(dict(zip(layer.ids, layer.attrs["voltage_kv"], strict=True))["poles:2"])
    with pytest.raises(InvalidOption, match="built-in"):
        run_import(store, "pipes", path, schema_file=toml)


def test_nothing_imported_when_every_record_is_rejected(store, tmp_path):
    path = tmp_path / "nowhere.csv"
    path.write_text("id,lon,lat\n1,,\n2,x,y\n")
    with pytest.raises(NothingImported, match="no geometry"):
        run_import(store, "lights", path)
    assert "lights" not in store.layers(Access.RESTRICTED)


def test_bad_collection_name_is_refused(store, tmp_path):
    path = tmp_path / "a.geojson"
    gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.Point(114.3, 30.3)], crs="EPSG:4326").to_file(
        path, driver="GeoJSON"
    )
    with pytest.raises(InvalidOption, match="must start with a letter"):
        run_import(store, "Bad Name", path)
