"""Coordinate systems: declared, given with --crs, refused when unknown; CGCS2000 and its zones."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import CRS, Transformer

from importers.errors import UnknownCRS
from layers.models import Access
from tests.importers.conftest import load, max_distance_m, run_import

# Street lights along a Jiangxia road (true WGS84 lon/lat).
TRUE = np.array([(114.3216 + i * 0.0004, 30.3750 + i * 0.0002) for i in range(8)])
NAMES = [f"纸坊大街{i}号灯" for i in range(len(TRUE))]


def projected(epsg: int) -> np.ndarray:
    t = Transformer.from_crs(4326, epsg, always_xy=True)
    return np.column_stack(t.transform(TRUE[:, 0], TRUE[:, 1]))


def lights_in(epsg: int, *, declare: bool = True) -> gpd.GeoDataFrame:
    xy = projected(epsg)
    return gpd.GeoDataFrame(
        {"LIGHT_ID": [f"J{i}" for i in range(len(xy))], "CIRCUIT": NAMES},
        geometry=shapely.points(xy),
        crs=f"EPSG:{epsg}" if declare else None,
    )


def landed(store) -> np.ndarray:
    layer = load(store, "lights")
    rows = [layer.row(i) for i in sorted(layer.ids, key=lambda s: int(s.rsplit("J", 1)[1]))]
    return layer.geometry[rows], layer.attrs["circuit"].iloc[rows].tolist()


def test_gauss_kruger_cm114_file_lands_within_half_a_metre(store, tmp_path):
    path = tmp_path / "jiangxia_lights.shp"
    lights_in(4547).to_file(path, encoding="utf-8")
    assert CRS.from_epsg(4547).name == "CGCS2000 / 3-degree Gauss-Kruger CM 114E"
    report = run_import(store, "lights", path)
    assert report.crs == "EPSG:4547 (declared)" and report.added == len(TRUE)
    geoms, circuits = landed(store)
    assert max_distance_m(geoms, shapely.points(TRUE)) < 0.5
    assert circuits == NAMES


def test_cgcs2000_geographic_is_read_as_lon_lat(store, tmp_path):
    path = tmp_path / "cgcs.geojson"
    lights_in(4490).to_file(path, driver="GeoJSON")
    report = run_import(store, "lights", path)
    assert report.crs.startswith("EPSG:4490")
    assert max_distance_m(landed(store)[0], shapely.points(TRUE)) < 0.5


def test_undeclared_metres_are_refused_with_a_hint_then_taken_with_crs(store, tmp_path):
    path = tmp_path / "xy.csv"
    xy = projected(4547)
    lines = ["light_id,x,y,circuit"] + [
        f"J{i},{x:.4f},{y:.4f},{n}" for i, ((x, y), n) in enumerate(zip(xy, NAMES, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UnknownCRS, match=r"not longitude/latitude.*--crs"):
        run_import(store, "lights", path)
    assert "lights" not in store.layers(Access.RESTRICTED)
    report = run_import(store, "lights", path, crs="EPSG:4547")
    assert report.crs == "EPSG:4547 (given)"
    geoms, circuits = landed(store)
    assert max_distance_m(geoms, shapely.points(TRUE)) < 0.5  # 4 decimals of a metre
    assert circuits == NAMES


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_zone_prefixed_eastings_get_the_zone_in_the_hint(store, tmp_path):
    path = tmp_path / "zone38.shp"
    lights_in(4526, declare=False).to_file(path)
    assert "zone 38" in CRS.from_epsg(4526).name
    with pytest.raises(UnknownCRS, match="EPSG:4526"):
        run_import(store, "lights", path)
    run_import(store, "lights", path, crs="4526")
    assert max_distance_m(landed(store)[0], shapely.points(TRUE)) < 0.5


def test_a_wrong_declaration_is_caught_and_crs_overrides_it(store, tmp_path):
    path = tmp_path / "wrongprj.geojson"
    frame = lights_in(4547)
    frame = frame.set_crs("EPSG:4326", allow_override=True)  # metres labelled as degrees
    frame.to_file(path, driver="GeoJSON")
    with pytest.raises(UnknownCRS, match="are not longitude/latitude"):
        run_import(store, "lights", path)
    report = run_import(store, "lights", path, crs="EPSG:4547")
    assert report.crs == "EPSG:4547 (given, overriding the declared EPSG:4326)"
    assert max_distance_m(landed(store)[0], shapely.points(TRUE)) < 0.5


def test_degrees_labelled_as_metres_are_caught(store, tmp_path):
    path = tmp_path / "degrees.shp"
    frame = gpd.GeoDataFrame(
        {"LIGHT_ID": ["a"]}, geometry=[shapely.Point(114.32, 30.37)], crs="EPSG:4547"
    )
    frame.to_file(path)
    with pytest.raises(UnknownCRS, match="look like longitude/latitude"):
        run_import(store, "lights", path)


def test_unknown_crs_text_is_refused(store, tmp_path):
    path = tmp_path / "x.geojson"
    lights_in(4326).to_file(path, driver="GeoJSON")
    with pytest.raises(UnknownCRS, match="EPSG:999999"):
        run_import(store, "lights", path, crs="EPSG:999999")
