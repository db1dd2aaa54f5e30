"""Hostile files: absurd coordinates, swapped lat/lon, a shapefile without .dbf, truncated files.

Each file is built here from a good one. A bad row is rejected with its number and reason
while the others land; a file that cannot be imported says why in words, `twin import` exits
non-zero with that one line, and the layer already stored is left exactly as it was.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Transformer
from typer.testing import CliRunner

from importers.errors import UnknownCRS, UnreadableFile
from importers.files import read_file
from importers.repair import repair
from layers.gpkg import GeoPackageStore
from layers.models import Access, GeometryFamily
from tests.importers.conftest import load, max_distance_m, run_import
from twin.cli import app

# Valves along a Jiangxia street, true WGS84 lon/lat.
LONLAT = np.array([(114.3216 + i * 0.0004, 30.3750 + i * 0.0002) for i in range(6)])
IDS = [f"V{i}" for i in range(len(LONLAT))]
SWAPPED = (
    "the coordinates look like latitude, longitude (swapped): x 30.375 to 30.376, "
    "y 114.322 to 114.324 fit only as latitude then longitude, so nothing was imported. "
    "If the file holds latitude before longitude, import it again with --crs EPSG:4326 "
    "(whose axis order is latitude first) or swap the two coordinates in the file"
)
NO_DBF = "no .dbf beside the .shp: features were imported without attributes"


def valves(xy: np.ndarray = LONLAT, crs: str | None = "EPSG:4326") -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"VALVE_ID": IDS[: len(xy)], "DIAMETER": [100 + 50 * i for i in range(len(xy))]},
        geometry=shapely.points(xy),
        crs=crs,
    )


def geojson(path: Path, coordinates: list[tuple[float, float]]) -> Path:
    """A FeatureCollection of points; NaN and infinity are written as JSON5 `NaN`, `Infinity`."""
    features = [
        {
            "type": "Feature",
            "properties": {"VALVE_ID": IDS[i]},
            "geometry": {"type": "Point", "coordinates": list(xy)},
        }
        for i, xy in enumerate(coordinates)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = ["valve_id,lon,lat"] + [f"{IDS[i]},{x},{y}" for i, (x, y) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def true_xy(i: int) -> list[str]:
    return [f"{LONLAT[i, 0]:.6f}", f"{LONLAT[i, 1]:.6f}"]


def with_row(bad: int, value: tuple[str, str]) -> list[tuple[str, str]]:
    """The six valves' lon/lat as text, row `bad` (0-based) replaced by `value`."""
    rows = [(x, y) for x, y in (true_xy(i) for i in range(len(LONLAT)))]
    rows[bad] = value
    return rows


def stored_ids(store, collection: str = "valves") -> list[str]:
    return sorted(load(store, collection).ids.tolist())


# -- 1. one absurd row is rejected alone; the CRS is judged without it -----------------------


def geojson_with(value: tuple[str, str]) -> Callable[[Path], Path]:
    rows = [(float(x), float(y)) for x, y in with_row(2, value)]
    return lambda tmp: geojson(tmp / "v.geojson", rows)


def csv_with(value: tuple[str, str]) -> Callable[[Path], Path]:
    return lambda tmp: csv(tmp / "v.csv", with_row(2, value))


def gauss_kruger_with_1e308(tmp: Path) -> Path:
    t = Transformer.from_crs(4326, 4547, always_xy=True)
    xy = np.column_stack(t.transform(LONLAT[:, 0], LONLAT[:, 1]))
    xy[2, 0] = 1e308
    path = tmp / "gk.shp"
    valves(xy, crs="EPSG:4547").to_file(path)
    return path


ONE_BAD_ROW = {
    "geojson lon 1e308": (geojson_with(("1e308", "30.375")), "coordinate 1e+308 is out of range"),
    "geojson lat -1e308": (geojson_with(("114.3", "-1e308")), "coordinate -1e+308 is out of range"),
    "geojson NaN": (geojson_with(("NaN", "30.375")), "coordinate nan is not a finite number"),
    "geojson Infinity": (geojson_with(("Infinity", "30")), "coordinate inf is not a finite number"),
    "geojson lon 1000": (geojson_with(("1000", "30.375")), "longitude 1000 is outside -180..180"),
    "geojson lat 95": (geojson_with(("114.3", "95")), "latitude 95 is outside -90..90"),
    "csv lon 1e308": (csv_with(("1e308", "30.375")), "coordinate 1e+308 is out of range"),
    "csv lon 1e999": (csv_with(("1e999", "30.375")), "coordinate inf is not a finite number"),
    "csv lon 1000": (csv_with(("1000", "30.375")), "longitude 1000 is outside -180..180"),
    "gauss-kruger 1e308": (gauss_kruger_with_1e308, "coordinate 1e+308 is out of range"),
}


@pytest.mark.parametrize("case", ONE_BAD_ROW)
def test_one_absurd_row_is_rejected_alone_and_the_others_land(store, tmp_path, case):
    make, reason = ONE_BAD_ROW[case]
    report = run_import(store, "valves", make(tmp_path))
    assert (report.read, report.added) == (6, 5)
    assert [(r.row, r.source_id, r.words) for r in report.rejected] == [
        (3, f"{report.id_column} V2", reason)
    ]
    assert f"    record 3 ({report.id_column} V2): {reason}" in report.text().splitlines()
    assert report.as_dict()["rejected"] == [
        {"row": 3, "reason": reason, "source_id": f"{report.id_column} V2"}
    ]
    prefix = report.source + ":"
    assert stored_ids(store) == [prefix + i for i in IDS if i != "V2"]
    layer = load(store, "valves")
    order = [layer.row(prefix + i) for i in IDS if i != "V2"]
    assert max_distance_m(layer.geometry[order], shapely.points(np.delete(LONLAT, 2, 0))) < 0.5


def test_rejections_are_counted_by_cause_not_by_number(store, tmp_path):
    rows = with_row(1, ("1e308", "30.375"))
    rows[4] = ("-5e300", "30.375")
    report = run_import(store, "valves", csv(tmp_path / "two.csv", rows))
    assert [(r.row, r.words) for r in report.rejected] == [
        (2, "coordinate 1e+308 is out of range"),
        (5, "coordinate -5e+300 is out of range"),
    ]
    assert report.rejected_by_reason() == {"coordinates outside longitude/latitude": 2}


def test_a_file_of_only_absurd_rows_imports_nothing_and_says_why(store, tmp_path):
    path = csv(tmp_path / "all.csv", [("1e308", "30"), ("2e308", "30")])
    with pytest.raises(Exception, match="every record was rejected") as caught:
        run_import(store, "valves", path)
    assert "coordinates" in str(caught.value) and "transverse" not in str(caught.value)


def test_metres_with_one_absurd_row_are_still_refused_with_the_zone_hint(store, tmp_path):
    path = gauss_kruger_with_1e308(tmp_path)
    for ext in (".prj", ".cpg"):
        path.with_suffix(ext).unlink(missing_ok=True)
    with pytest.raises(UnknownCRS) as caught:
        run_import(store, "valves", path)
    message = str(caught.value)
    assert message.startswith(
        "the file declares no coordinate reference system and its numbers are not "
        "longitude/latitude (x 53"
    )
    assert "1e+308" not in message and "transverse Mercator zone" in message


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_line_vertex_faults_name_the_first_number_at_fault():
    geoms = np.array(
        [
            shapely.LineString([(114.3, 30.3), (114.31, 30.31)]),
            shapely.LineString([(114.3, 30.3), (np.inf, 30.31), (1e308, 30.0)]),
            shapely.LineString([(114.3, 30.3), (181.5, 30.31), (114.2, -91.0)]),
            shapely.LineString([(114.3, 30.3), (114.3, 30.4), (np.nan, 30.5)]),
        ],
        dtype=object,
    )
    check = repair(geoms, GeometryFamily.LINE)
    assert check.keep.tolist() == [True, False, False, False]
    assert check.details == {
        1: "coordinate inf is not a finite number",
        2: "longitude 181.5 is outside -180..180",
        3: "coordinate nan is not a finite number",
    }


# -- 2. swapped latitude and longitude: named, refused, and read with --crs EPSG:4326 ----------


def swapped_geojson(tmp: Path) -> Path:
    return geojson(tmp / "swapped.geojson", [(y, x) for x, y in LONLAT.tolist()])


def swapped_csv(tmp: Path) -> Path:
    return csv(tmp / "swapped.csv", [(f"{y}", f"{x}") for x, y in LONLAT.tolist()])


@pytest.mark.parametrize("make", [swapped_geojson, swapped_csv], ids=["geojson", "csv"])
def test_swapped_coordinates_are_named_and_refused(store, tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(UnknownCRS) as caught:
        run_import(store, "valves", path)
    assert str(caught.value) == SWAPPED
    with pytest.raises(UnknownCRS, match=r"look like latitude, longitude \(swapped\)"):
        run_import(store, "valves", path, crs="OGC:CRS84")  # longitude first: still swapped
    assert "valves" not in store.layers(Access.RESTRICTED)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:4490"])
@pytest.mark.parametrize("make", [swapped_geojson, swapped_csv], ids=["geojson", "csv"])
def test_a_latitude_first_crs_reads_swapped_coordinates(store, tmp_path, make, crs):
    report = run_import(store, "valves", make(tmp_path), crs=crs)
    assert report.added == 6 and report.rejected == []
    assert report.crs.endswith(", read latitude first)")
    layer = load(store, "valves")
    order = [layer.row(f"{report.source}:{i}") for i in IDS]
    assert max_distance_m(layer.geometry[order], shapely.points(LONLAT)) < 0.5


def test_lon_lat_numbers_with_crs_4326_stay_longitude_first(store, tmp_path):
    path = geojson(tmp_path / "plain.geojson", [(x, y) for x, y in LONLAT.tolist()])
    report = run_import(store, "valves", path, crs="EPSG:4326")
    assert report.crs == "EPSG:4326 (given)"
    layer = load(store, "valves")
    order = [layer.row(f"plain:{i}") for i in IDS]
    assert max_distance_m(layer.geometry[order], shapely.points(LONLAT)) < 0.5


def test_swapped_degrees_labelled_as_metres_are_named(store, tmp_path):
    path = tmp_path / "gk_swapped.shp"
    valves(LONLAT[:, ::-1], crs="EPSG:4547").to_file(path)
    with pytest.raises(UnknownCRS) as caught:
        run_import(store, "valves", path)
    assert str(caught.value).startswith(
        "the coordinates look like latitude, longitude (swapped), not metres of the declared "
        "EPSG:4547: x 30.375 to 30.376"
    )


# -- 3. a shapefile without its .dbf ---------------------------------------------------------


def shapefile_without_dbf(tmp: Path) -> Path:
    path = tmp / "nodbf.shp"
    valves().to_file(path)
    path.with_suffix(".dbf").unlink()
    return path


def zipped_without_dbf(tmp: Path) -> Path:
    shapefile_without_dbf(tmp)
    path = tmp / "nodbf.zip"
    with zipfile.ZipFile(path, "w") as z:
        for part in sorted(tmp.glob("nodbf.*")):
            if part != path:
                z.write(part, part.name)
    return path


@pytest.mark.parametrize("make", [shapefile_without_dbf, zipped_without_dbf], ids=["shp", "zip"])
def test_a_shapefile_without_dbf_lands_geometries_with_a_warning(store, tmp_path, make):
    report = run_import(store, "valves", make(tmp_path))
    assert (report.read, report.added, report.rejected) == (6, 6, [])
    assert report.warnings == [NO_DBF]
    assert report.as_dict()["warnings"] == [NO_DBF]
    lines = report.text().splitlines()
    assert lines[3] == f"  warning     {NO_DBF}"  # right under what was imported
    layer = load(store, "valves")
    assert layer.attrs["diameter_mm"].isna().all()
    landed = shapely.get_coordinates(layer.geometry)
    assert (
        max_distance_m(shapely.points(landed[np.lexsort(landed.T)]), shapely.points(LONLAT)) < 0.5
    )


def test_a_complete_shapefile_has_no_warning(store, tmp_path):
    path = tmp_path / "full.shp"
    valves().to_file(path)
    assert read_file(path).warnings == []
    assert run_import(store, "valves", path).warnings == []


# -- 4. truncated and damaged files ----------------------------------------------------------


def gpkg_bytes(tmp: Path) -> bytes:
    path = tmp / "source.gpkg"
    valves().to_file(path, layer="valves")
    return path.read_bytes()


def cut_gpkg(tmp: Path) -> tuple[Path, str]:
    data = gpkg_bytes(tmp)
    path = tmp / "half.gpkg"
    path.write_bytes(data[: len(data) // 2])
    return path, (
        f"the GeoPackage {path} is damaged or truncated (it holds {len(data) // 2:,} of the "
        f"{len(data):,} bytes its header declares); copy the complete file"
    )


def cut_gpkg_without_page_count(tmp: Path) -> tuple[Path, str]:
    """Half a GeoPackage whose header does not vouch for its page count (older SQLite)."""
    data = bytearray(gpkg_bytes(tmp))
    data[92:96] = b"\0\0\0\0"
    path = tmp / "old.gpkg"
    path.write_bytes(bytes(data[: len(data) // 2]))
    return path, (
        f"the GeoPackage {path} is damaged or truncated (database disk image is malformed); "
        "copy the complete file"
    )


def gpkg_header_only(tmp: Path) -> tuple[Path, str]:
    path = tmp / "tiny.gpkg"
    path.write_bytes(gpkg_bytes(tmp)[:60])
    return path, (
        f"the GeoPackage {path} is damaged or truncated (it holds 60 bytes, not even a "
        "header); copy the complete file"
    )


def gpkg_of_text(tmp: Path) -> tuple[Path, str]:
    path = tmp / "text.gpkg"
    path.write_text("pipes of Jiangxia\n")
    return path, (
        f"the GeoPackage {path} is damaged or truncated, or not a GeoPackage at all "
        "(GDAL does not recognise its format)"
    )


def cut_geojson(tmp: Path) -> tuple[Path, str]:
    path = tmp / "cut.geojson"
    full = json.dumps(json.loads(valves().to_json()))
    path.write_text(full[: full.index('"V3"') + 3])
    return path, f"the GeoJSON {path} is damaged or truncated (At line 1, character "


def cut_zip(tmp: Path) -> tuple[Path, str]:
    shp = tmp / "v.shp"
    valves().to_file(shp)
    whole = tmp / "whole.zip"
    with zipfile.ZipFile(whole, "w") as z:
        for part in tmp.glob("v.*"):
            z.write(part, part.name)
    path = tmp / "cut.zip"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return path, (
        f"the zip archive {path} is damaged or truncated (File is not a zip file); "
        "copy the complete file"
    )


def cut_shapefile(tmp: Path) -> tuple[Path, str]:
    path = tmp / "cut.shp"
    valves().to_file(path)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 20])
    return path, (
        f"{path} is truncated: its .shp file holds {size - 20:,} of the {size:,} bytes its "
        "header declares; copy the complete file"
    )


DAMAGED = {
    "gpkg cut in half": cut_gpkg,
    "gpkg cut, no page count": cut_gpkg_without_page_count,
    "gpkg header only": gpkg_header_only,
    "gpkg of text": gpkg_of_text,
    "geojson cut": cut_geojson,
    "zip cut": cut_zip,
    "shapefile cut": cut_shapefile,
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_files_say_so_in_words(tmp_path, case):
    path, message = DAMAGED[case](tmp_path)
    with pytest.raises(UnreadableFile) as caught:
        read_file(path)
    assert str(caught.value).startswith(message)
    assert "sqlite3_" not in str(caught.value) and "SELECT" not in str(caught.value)


# -- through `twin import`: exit codes, one line, the stored layer untouched -----------------


def twin(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def stored(store_dir: Path) -> tuple[list[str], list[bytes], dict, int]:
    """Everything of the stored valves layer and the length of the import history."""
    db = GeoPackageStore(store_dir, create=False)
    try:
        layer = load(db, "valves")
        return (
            layer.ids.tolist(),
            shapely.to_wkb(layer.geometry).tolist(),
            layer.attrs.to_dict("list"),
            len(db.history()),
        )
    finally:
        db.close()


@pytest.fixture
def store_with_valves(tmp_path: Path) -> Path:
    path = tmp_path / "before.geojson"
    valves().to_file(path, driver="GeoJSON")
    store_dir = tmp_path / "store"
    assert twin("import", "valves", path, "--store", store_dir).exit_code == 0
    return store_dir


REFUSED = {
    "swapped": (swapped_geojson, SWAPPED),
    "gpkg cut in half": (lambda tmp: cut_gpkg(tmp)[0], "is damaged or truncated (it holds"),
    "gpkg header only": (lambda tmp: gpkg_header_only(tmp)[0], "not even a header"),
    "geojson cut": (lambda tmp: cut_geojson(tmp)[0], "is damaged or truncated (At line 1"),
    "zip cut": (lambda tmp: cut_zip(tmp)[0], "zip archive"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_cli_refuses_with_one_line_and_keeps_the_stored_layer(store_with_valves, tmp_path, case):
    make, message = REFUSED[case]
    before = stored(store_with_valves)
    bad = tmp_path / "bad"
    bad.mkdir()
    result = twin("import", "valves", make(bad), "--store", store_with_valves, "--replace")
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("twin: ") and message in line
    assert "Traceback" not in result.output
    assert stored(store_with_valves) == before


def test_cli_imports_the_good_rows_and_lists_the_bad_one(store_with_valves, tmp_path):
    before = stored(store_with_valves)
    path = geojson_with(("1e308", "30.375"))(tmp_path)
    result = twin("import", "valves", path, "--store", store_with_valves, "--source", "before")
    assert result.exit_code == 0, result.output
    assert "    record 3 (VALVE_ID V2): coordinate 1e+308 is out of range" in result.stdout
    assert "imported    5: 0 added, 5 updated, 0 unchanged" in result.stdout  # no DIAMETER
    after = stored(store_with_valves)
    v2 = before[0].index("before:V2")
    assert after[0] == before[0] and after[3] == before[3] + 1
    assert after[1][v2] == before[1][v2]  # the rejected row left the stored V2 alone


def test_cli_warns_of_a_missing_dbf_and_exits_zero(tmp_path):
    result = twin("import", "valves", shapefile_without_dbf(tmp_path), "--store", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert f"  warning     {NO_DBF}" in result.stdout.splitlines()
    report = json.loads(
        twin("import", "valves", tmp_path / "nodbf.shp", "--store", tmp_path / "s", "--json").stdout
    )
    assert report["warnings"] == [NO_DBF] and report["unchanged"] == 6
