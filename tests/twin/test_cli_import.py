"""`twin import`, `twin layers` and `twin export` through typer's runner and the real script."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from pyproj import Transformer
from typer.testing import CliRunner

from layers.gpkg import GeoPackageStore
from layers.layer import UPDATED, VERSION
from layers.models import Access
from twin.cli import app

runner = CliRunner()


def twin(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def pipes(n: int = 5, shift: float = 0.0) -> gpd.GeoDataFrame:
    x = 114.32 + np.arange(n) * 0.001 + shift
    return gpd.GeoDataFrame(
        {
            "FACILITYID": [f"SL{i}" for i in range(n)],
            "MATERIAL": ["PVC", "CI", "UNK", "PE", "DI"][:n],
            "DIAMETER": [300, 150, 200, 100, 450][:n],
            "INSTALLDATE": [-2524503600000, 315550800000, None, 946684800000, 0][:n],
            "WATERTYPE": ["Storm", "Combined", "Sanitary", "Storm", "Storm"][:n],
            "NOTE": ["江夏", "", None, "x", "y"][:n],
        },
        geometry=[shapely.LineString([(xi, 30.35), (xi + 0.0005, 30.351)]) for xi in x],
        crs="EPSG:4326",
    )


@pytest.fixture
def store_with_pipes(tmp_path: Path) -> Path:
    path = tmp_path / "mains.geojson"
    pipes().to_file(path, driver="GeoJSON")
    store = tmp_path / "store"
    result = twin("import", "pipes", path, "--store", store, "--user", "alice")
    assert result.exit_code == 0, result.output
    return store


def snapshot(store: Path) -> tuple:
    db = GeoPackageStore(store, create=False)
    try:
        layer = db.load("pipes", Access.RESTRICTED)
        history = len(db.history())
    finally:
        db.close()
    wkb = shapely.to_wkb(layer.geometry).tolist()
    return layer.ids.tolist(), wkb, layer.attrs.to_dict("list"), history


# -- bad files: non-zero exit, one clear message, the earlier layer unchanged ---------------


def truncated_shapefile(tmp: Path) -> Path:
    path = tmp / "cut.shp"
    pipes(5, shift=0.01).to_file(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size * 2 // 3)
    return path


def points_file(tmp: Path) -> Path:
    path = tmp / "valves.geojson"
    gpd.GeoDataFrame(
        {"VALVE_ID": ["v1", "v2"]},
        geometry=[shapely.Point(114.32, 30.35), shapely.Point(114.33, 30.35)],
        crs="EPSG:4326",
    ).to_file(path, driver="GeoJSON")
    return path


def metres_without_prj(tmp: Path) -> Path:
    path = tmp / "gk.shp"
    t = Transformer.from_crs(4326, 4547, always_xy=True)
    frame = pipes(3, shift=0.02)
    frame.geometry = shapely.transform(
        np.asarray(frame.geometry.array), lambda xy: np.column_stack(t.transform(*xy.T))
    )
    frame.set_crs(None, allow_override=True).to_file(path)
    return path


def empty_file(tmp: Path) -> Path:
    path = tmp / "empty.geojson"
    path.write_bytes(b"")
    return path


BAD = [
    (truncated_shapefile, "is truncated"),
    (points_file, "holds Point geometries, but the pipes layer takes lines"),
    (metres_without_prj, "declares no coordinate reference system"),
    (empty_file, "is empty"),
]


@pytest.mark.filterwarnings("ignore:'crs' was not provided", "ignore:Column names longer")
@pytest.mark.filterwarnings("ignore:Normalized/laundered field name")
@pytest.mark.parametrize("make, message", BAD, ids=["truncated", "wrong-type", "no-crs", "empty"])
def test_bad_file_exits_non_zero_with_one_message_and_keeps_the_layer(
    store_with_pipes, tmp_path, make, message
):
    before = snapshot(store_with_pipes)
    bad = make(tmp_path)
    result = twin("import", "pipes", bad, "--store", store_with_pipes)
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twin: ") and message in lines[0]
    assert "Traceback" not in result.output
    assert snapshot(store_with_pipes) == before


def test_the_real_script_exits_1_with_one_line_and_no_traceback(store_with_pipes, tmp_path):
    script = shutil.which("twin", path=str(Path(sys.executable).parent))
    assert script is not None
    bad = subprocess.run(
        [script, "import", "pipes", str(empty_file(tmp_path)), "--store", str(store_with_pipes)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "is empty" in bad.stderr


# -- reports, re-imports, layers ------------------------------------------------------------


def test_import_report_and_reimport(tmp_path):
    path = tmp_path / "mains.geojson"
    pipes().to_file(path, driver="GeoJSON")
    store = tmp_path / "store"
    first = twin("import", "pipes", path, "--store", store, "--json")
    assert first.exit_code == 0
    report = json.loads(first.stdout)
    assert (report["read"], report["added"], report["rejected"]) == (5, 5, [])
    assert report["fields"]["install_year"] == "INSTALLDATE"
    assert report["extra_columns"] == {"FACILITYID": "FACILITYID", "NOTE": "NOTE"}
    again = twin("import", "pipes", path, "--store", store)
    assert again.exit_code == 0
    assert "imported    5: 0 added, 0 updated, 5 unchanged" in again.stdout

    newer = pipes(5).iloc[1:].copy()
    newer.loc[newer["FACILITYID"] == "SL2", "DIAMETER"] = 250
    newer.to_file(path, driver="GeoJSON")
    replaced = twin("import", "pipes", path, "--store", store, "--replace", "--json")
    r = json.loads(replaced.stdout)
    assert (r["added"], r["updated"], r["unchanged"], r["removed"]) == (0, 1, 3, 1)


def test_set_map_and_bad_options(tmp_path):
    path = tmp_path / "mains.geojson"
    pipes().to_file(path, driver="GeoJSON")
    store = tmp_path / "store"
    ok = twin(
        "import", "pipes", path, "--store", store, "--map", "NOTE=pressure_zone",
        "--set", "status=active", "--json",
    )  # fmt: skip
    assert ok.exit_code == 0
    db = GeoPackageStore(store, create=False)
    layer = db.load("pipes", Access.PUBLIC)
    db.close()
    assert set(layer.attrs["status"]) == {"in_service"}
    assert layer.attrs["pressure_zone"].tolist()[:1] == ["江夏"]
    for args, message in [
        (["--set", "network=lava"], "'lava' is not one of water, sewer"),
        (["--map", "NOPE=material"], "no column 'NOPE'"),
        (["--coords", "mars"], "--coords 'mars'"),
        (["--map", "broken"], "write it as NAME=VALUE"),
    ]:
        bad = twin("import", "pipes", path, "--store", store, *args)
        assert bad.exit_code == 1 and message in bad.stderr and bad.stdout == ""


def test_layers_lists_counts_bounds_and_last_import(store_with_pipes, tmp_path):
    result = twin("layers", "--store", store_with_pipes, "--json")
    assert result.exit_code == 0
    (row,) = json.loads(result.stdout)
    info = pyogrio.read_info(store_with_pipes / "twin.gpkg", layer="pipes")
    assert row["name"] == "pipes" and row["features"] == info["features"] == 5
    np.testing.assert_allclose(row["bounds"], info["total_bounds"])
    last = row["last_import"]
    assert (last["user"], last["source"], last["added"]) == ("alice", "mains", 5)
    assert dt.datetime.fromisoformat(last["time"]) <= dt.datetime.now(dt.UTC)
    text = twin("layers", "--store", store_with_pipes)
    assert text.exit_code == 0
    assert "pipes  5 features  line  public" in text.stdout and "by alice: mains" in text.stdout
    missing = twin("layers", "--store", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "no store" in missing.stderr


# -- export -------------------------------------------------------------------------------


def test_export_geopackage_round_trips_geometry_and_attributes(store_with_pipes, tmp_path):
    out = tmp_path / "out.gpkg"
    result = twin("export", "pipes", out, "--store", store_with_pipes)
    assert result.exit_code == 0 and "wrote 5 features" in result.stdout
    db = GeoPackageStore(store_with_pipes, create=False)
    layer = db.load("pipes", Access.RESTRICTED)
    db.close()
    back = pyogrio.read_dataframe(out, layer="pipes")
    assert back.crs.to_epsg() == 4326
    assert back["id"].tolist() == layer.ids.tolist()
    assert shapely.equals_exact(np.asarray(back.geometry.array), layer.geometry, 0).all()
    for name in [*layer.schema.field_names, "source"]:
        want = layer.attrs[name].astype(object).where(layer.attrs[name].notna(), None).tolist()
        got = back[name].astype(object).where(back[name].notna(), None).tolist()
        assert got == want, name
    assert layer.attrs["install_year"].notna().sum() == 3
    info = pyogrio.read_info(out, layer="pipes")
    types = dict(zip(info["fields"], info["ogr_types"], strict=True))
    assert types["install_year"] == "OFTInteger64" and types["diameter_mm"] == "OFTReal"


def test_export_keeps_dates_booleans_and_multi_parts(tmp_path):
    store = tmp_path / "store"
    db = GeoPackageStore(store)
    from layers.layer import Layer, coerce, empty_attrs
    from layers.schemas import BRIDGES, ROADS

    attrs = empty_attrs(BRIDGES, 2)
    attrs["last_inspection"] = coerce(["2021-05-04", None], BRIDGES.field("last_inspection").type)
    attrs["name"] = coerce(["长江大桥", None], BRIDGES.field("name").type)
    geoms = np.array(
        [
            shapely.MultiPolygon([shapely.box(114.28, 30.54, 114.29, 30.55), shapely.box(114.3, 30.54, 114.31, 30.55)]),
            shapely.LineString([(114.3, 30.5), (114.31, 30.51)]),
        ],
        dtype=object,
    )  # fmt: skip
    db.write(
        Layer(BRIDGES, np.array(["b1", "b2"], dtype=object), geoms, attrs), source="s", user="t"
    )
    road_attrs = empty_attrs(ROADS, 1)
    road_attrs["oneway"] = coerce([True], ROADS.field("oneway").type)
    roads = Layer(ROADS, np.array(["r1"], dtype=object), geoms[1:], road_attrs)
    db.write(roads, source="s", user="t")
    db.close()
    for collection in ("bridges", "roads"):
        out = tmp_path / f"{collection}.gpkg"
        assert twin("export", collection, out, "--store", store).exit_code == 0
    back = pyogrio.read_dataframe(tmp_path / "bridges.gpkg")
    assert back["last_inspection"].iloc[0] == pd.Timestamp("2021-05-04")
    assert back["name"].tolist()[0] == "长江大桥"
    assert shapely.equals_exact(np.asarray(back.geometry.array), geoms, 0).all()
    info = pyogrio.read_info(tmp_path / "bridges.gpkg")
    assert dict(zip(info["fields"], info["ogr_types"], strict=True))["last_inspection"] == "OFTDate"
    roads_info = pyogrio.read_info(tmp_path / "roads.gpkg")
    i = list(roads_info["fields"]).index("oneway")
    assert roads_info["ogr_subtypes"][i] == "OFSTBoolean"
    assert bool(pyogrio.read_dataframe(tmp_path / "roads.gpkg")["oneway"].iloc[0]) is True


@pytest.mark.parametrize("suffix", [".geojson", ".fgb"])
def test_export_other_formats(store_with_pipes, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    assert twin("export", "pipes", out, "--store", store_with_pipes).exit_code == 0
    back = pyogrio.read_dataframe(out).set_index("id")
    db = GeoPackageStore(store_with_pipes, create=False)
    layer = db.load("pipes", Access.RESTRICTED)
    db.close()
    got = np.asarray(back.loc[layer.ids].geometry.array)
    assert shapely.equals_exact(got, layer.geometry, 1e-7).all()  # GeoJSON keeps 7 decimals


def test_export_refuses_unknown_formats_and_collections(store_with_pipes, tmp_path):
    bad = twin("export", "pipes", tmp_path / "out.dxf", "--store", store_with_pipes)
    assert bad.exit_code == 1 and ".gpkg" in bad.stderr and not (tmp_path / "out.dxf").exists()
    unknown = twin("export", "nothing", tmp_path / "out.gpkg", "--store", store_with_pipes)
    assert unknown.exit_code == 1 and "unknown collection 'nothing'" in unknown.stderr


def test_system_columns_are_not_exported(store_with_pipes, tmp_path):
    out = tmp_path / "out.gpkg"
    twin("export", "pipes", out, "--store", store_with_pipes)
    assert VERSION not in pyogrio.read_info(out)["fields"]
    assert UPDATED not in pyogrio.read_info(out)["fields"]
