"""Reading every format GDAL reads: each file made here, imported, compared with its source."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

from importers.errors import EmptySource, UnknownLayer, UnreadableFile
from importers.files import read_file
from tests.conftest import shared
from tests.importers.conftest import by_id, load, run_import

NAMES = ["江夏区路灯", "Main St", "Rue Sainte-Catherine"]


def lights(n: int = 3) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "POLEID": [f"L{i}" for i in range(n)],
            "NAME": (NAMES * n)[:n],
            "WATTAGE": [100.0, 150.5, 70.0][:n],
        },
        geometry=[shapely.Point(114.32 + i * 0.001, 30.35 + i * 0.0005) for i in range(n)],
        crs="EPSG:4326",
    )


def assert_lights_landed(store, src: gpd.GeoDataFrame, source: str) -> None:
    layer = load(store, "lights")
    want_ids = [f"{source}:{p}" for p in src["POLEID"]]
    assert sorted(layer.ids.tolist()) == sorted(want_ids)
    watts = by_id(layer, "wattage_w")
    assert [watts[i] for i in want_ids] == src["WATTAGE"].tolist()
    rows = [layer.row(i) for i in want_ids]
    assert shapely.equals_exact(layer.geometry[rows], np.asarray(src.geometry.array), 1e-9).all()


@pytest.mark.parametrize(
    "suffix, driver", [(".gpkg", "GPKG"), (".fgb", "FlatGeobuf"), (".geojson", "GeoJSON")]
)
def test_common_formats_land_whole(store, tmp_path, suffix, driver):
    src = lights()
    path = tmp_path / f"poles{suffix}"
    src.to_file(path, driver=driver)
    report = run_import(store, "lights", path)
    assert (report.read, report.added, len(report.rejected)) == (3, 3, 0)
    assert report.fields["wattage_w"] == "WATTAGE"
    assert_lights_landed(store, src, "poles")


def test_zipped_shapefile_in_a_subfolder(store, tmp_path):
    src = lights()
    folder = tmp_path / "shp"
    folder.mkdir()
    src.to_file(folder / "poles.shp", encoding="utf-8")
    archive = tmp_path / "poles.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for part in folder.iterdir():
            z.write(part, f"export/{part.name}")
    report = run_import(store, "lights", archive)
    assert report.added == 3 and report.driver == "ESRI Shapefile"
    assert_lights_landed(store, src, "poles")
    names = set(load(store, "lights").attrs["lamp_type"].dropna())
    assert names == set()  # NAME is no lamp type; it is kept as an extra attribute
    assert "NAME" in report.extra_columns


def test_zip_with_two_datasets_needs_a_layer(store, tmp_path):
    lights().to_file(tmp_path / "a.geojson")
    lights(2).to_file(tmp_path / "b.geojson")
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tmp_path / "a.geojson", "a.geojson")
        z.write(tmp_path / "b.geojson", "b.geojson")
    with pytest.raises(UnknownLayer, match="a, b"):
        read_file(archive)
    assert len(read_file(archive, layer="b").frame) == 2


def test_geojson_bare_array_with_a_byte_order_mark(store, tmp_path):
    src = lights()
    features = json.loads(src.to_json())["features"]
    path = tmp_path / "bare.geojson"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(features, ensure_ascii=False).encode("utf-8"))
    with pytest.raises(pyogrio.errors.DataSourceError):
        pyogrio.read_dataframe(path)  # what GDAL alone makes of it
    report = run_import(store, "lights", path)
    assert report.added == 3
    assert_lights_landed(store, src, "bare")


def test_geopackage_ids_come_from_its_primary_key(store, tmp_path):
    src = lights().drop(columns=["POLEID"])
    path = tmp_path / "noid.gpkg"
    src.to_file(path, driver="GPKG", layer="poles")
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM poles WHERE fid = 1")
    report = run_import(store, "lights", path)
    assert report.id_column == "fid"
    assert sorted(load(store, "lights").ids) == ["noid:2", "noid:3"]


def test_geopackage_with_several_layers_asks_which(store, tmp_path):
    path = tmp_path / "many.gpkg"
    lights().to_file(path, layer="poles", driver="GPKG")
    lights(2).to_file(path, layer="more", driver="GPKG")
    with pytest.raises(UnknownLayer, match="choose one with --layer"):
        run_import(store, "lights", path)
    assert run_import(store, "lights", path, layer="more").added == 2


def test_kml_placemarks(store, tmp_path):
    src = lights()
    path = tmp_path / "poles.kml"
    src[["NAME", "geometry"]].rename(columns={"NAME": "Name"}).to_file(path, driver="KML")
    report = run_import(store, "lights", path)
    assert report.added == 3
    got = np.asarray(load(store, "lights").geometry)
    got = got[np.argsort(shapely.get_x(got))]
    assert shapely.equals_exact(got, np.asarray(src.geometry.array), 1e-9).all()
    assert "Name" in report.extra_columns  # a placemark's name is no lamp type
    assert report.layer == "poles"


def test_csv_with_lon_lat_columns_rejects_rows_without_numbers(store, tmp_path):
    path = tmp_path / "poles.csv"
    path.write_text(
        "pole_id,name,Longitude,Latitude,wattage\n"
        "A1,江夏,114.32,30.35,100\n"
        "A2,no coords,,,100\n"
        "A3,bad,abc,30.1,100\n"
        "A4,ok,114.33,30.36,150 W\n",
        encoding="utf-8",
    )
    report = run_import(store, "lights", path)
    assert (report.read, report.added) == (4, 2)
    assert [(r.row, r.reason) for r in report.rejected] == [
        (2, "no geometry (missing or unreadable)"),
        (3, "no geometry (missing or unreadable)"),
    ]
    layer = load(store, "lights")
    assert by_id(layer, "wattage_w") == {"poles:A1": 100.0, "poles:A4": 150.0}
    p = layer.geometry[layer.row("poles:A4")]
    assert (p.x, p.y) == (114.33, 30.36)


def test_csv_with_a_wkt_column(store, tmp_path):
    path = tmp_path / "mains.csv"
    path.write_text(
        'id,WKT,material\n1,"LINESTRING (114.3 30.3, 114.31 30.31)",PE\n2,"LINESTRING (bad",PE\n',
        encoding="utf-8",
    )
    report = run_import(store, "pipes", path)
    assert (report.added, [r.row for r in report.rejected]) == (1, [2])
    assert (
        load(store, "pipes")
        .geometry[0]
        .equals(shapely.LineString([(114.3, 30.3), (114.31, 30.31)]))
    )


def test_csv_without_coordinates_is_refused(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(UnreadableFile, match="no coordinates"):
        read_file(path)


def test_esri_json_reads_like_the_geojson_of_the_same_pipes(store):
    raw = shared("canada_sewers/london/raw_arcgis_mains_query.json")
    geo = gpd.read_file(shared("canada_sewers/london/mains.geojson")).set_index("Asset_ID")
    report = run_import(store, "pipes", raw, source="london")
    assert (report.driver, report.read, report.added) == ("ESRIJSON", 5, 5)
    layer = load(store, "pipes")
    for fid, diameter in by_id(layer, "diameter_mm").items():
        assert diameter == geo.loc[fid.removeprefix("london:"), "Diameter"]
    years = by_id(layer, "install_year")
    want = {
        f"london:{k}": v.year
        for k, v in gpd.read_file(raw).set_index("Asset_ID")["ConstructionDate"].items()
    }
    assert years == want


def test_truncated_shapefile_is_refused_not_half_read(tmp_path):
    path = tmp_path / "mains.shp"
    gpd.GeoDataFrame(
        {"n": np.arange(50)},
        geometry=[shapely.LineString([(114 + i * 1e-3, 30), (114.1, 30.1)]) for i in range(50)],
        crs="EPSG:4326",
    ).to_file(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    assert pyogrio.read_dataframe(path).geometry.isna().sum() > 0  # GDAL reads past the cut
    with pytest.raises(UnreadableFile, match="truncated"):
        read_file(path)


def test_empty_inputs(tmp_path):
    zero = tmp_path / "zero.geojson"
    zero.write_bytes(b"")
    with pytest.raises(EmptySource, match="empty"):
        read_file(zero)
    nothing = tmp_path / "nothing.geojson"
    nothing.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(EmptySource, match="no features"):
        read_file(nothing)


def test_garbage_is_unreadable(tmp_path):
    path = tmp_path / "notes.geojson"
    path.write_text("this is not json")
    with pytest.raises(UnreadableFile, match="is damaged or truncated, or not a GeoJSON at all"):
        read_file(path)
    with pytest.raises(UnreadableFile, match="no such file"):
        read_file(Path(tmp_path / "missing.shp"))


def test_nested_json_properties_become_text(store, tmp_path):
    path = tmp_path / "nested.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [114.3, 30.3]},
                        "properties": {"POLEID": "n1", "tags": {"lamp": "LED"}, "list": [1, 2]},
                    },
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [114.4, 30.3]},
                        "properties": {"POLEID": "n2", "tags": "plain", "list": None},
                    },
                ],
            }
        )
    )
    report = run_import(store, "street_furniture", path, id_column="POLEID")
    assert report.added == 2
    layer = load(store, "street_furniture")
    tags = dict(zip(layer.ids, layer.attrs["tags"], strict=True))
    assert json.loads(tags["nested:n1"]) == {"lamp": "LED"} and tags["nested:n2"] == "plain"
