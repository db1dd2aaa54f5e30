"""The real files of ../shared/data imported as a city GIS user would, checked against each raw
file read independently with geopandas (skipped when the data is absent)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from layers.layer import Layer
from tests.conftest import shared
from tests.importers.conftest import load, run_import

pytestmark = pytest.mark.shared_data

UNKNOWN = {"", "UNK", "UNKNOWN", "?"}


def raw(relative: str) -> gpd.GeoDataFrame:
    return gpd.read_file(shared(relative))


def of_source(layer: Layer, source: str, id_column: pd.Series) -> pd.DataFrame:
    """The rows of `source`, in the order of the raw file's id column."""
    rows = [layer.row(f"{source}:{str(v).strip()}") for v in id_column]
    return layer.attrs.iloc[rows].reset_index(drop=True).assign(_geom=layer.geometry[rows])


def values(s: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in s]


def year_from_ms(ms: pd.Series) -> pd.Series:
    years = pd.to_datetime(ms, unit="ms").dt.year.astype("Float64")
    return years.where(years.between(1700, 2100))


def assert_counts(report, source: gpd.GeoDataFrame) -> None:
    assert report.read == len(source)
    assert report.added + report.updated + report.unchanged == len(source) - len(report.rejected)


def assert_same_geometry(got: pd.Series, source: gpd.GeoDataFrame) -> None:
    want = np.asarray(source.geometry.array)
    same = shapely.equals(np.asarray(got), want)
    assert same.all(), f"{(~same).sum()} geometries moved"


# -- Canadian sewer mains -> pipes ----------------------------------------------------------

SEWERS = [
    # (file, --set, id column, expected network, install year column -> expected years)
    ("toronto/mains.geojson", {}, "FACILITYID", "WATERTYPE", "INSTALLDATE"),
    ("toronto/sanitary_mains.geojson", {}, "FACILITYID", "WATERTYPE", "INSTALLDATE"),
    ("ottawa/storm_pipes.geojson", {}, "STRUCT_ID", "STRUCT_TYPE", "INSTALL_YEAR"),
    ("ottawa/sanitary_pipes.geojson", {}, "STRUCT_ID", "STRUCT_TYPE", None),
    ("ottawa/combined_pipes.geojson", {}, "STRUCT_ID", "STRUCT_TYPE", "INSTALL_YEAR"),
    ("regina/storm_pipes.geojson", {"network": "storm"}, "GISID", None, "INSTALLATIONDATE"),
    ("regina/domestic_pipes.geojson", {"network": "domestic"}, "GISID", None, "INSTALLATIONDATE"),
    ("london/mains.geojson", {}, "Asset_ID", "FlowType", "ConstructionDate"),
    ("london/sanitary_mains.geojson", {}, "OBJECTID", "FlowType", None),
]
NETWORK_CODES = {
    "Combined": "sewer",
    "Storm": "storm",
    "SAN": "sewer",
    "STMP": "storm",
    "SANP": "sewer",
    "COMP": "sewer",
    "STM": "storm",
}


def expected_years(src: gpd.GeoDataFrame, column: str | None) -> pd.Series:
    if column is None:
        return pd.Series([np.nan] * len(src), dtype="Float64")
    s = src[column]
    if column == "INSTALL_YEAR":  # Ottawa: 0 means unknown
        return s.astype("Float64").where(s != 0)
    if column == "INSTALLATIONDATE":  # Regina: year strings, a few yyyymmdd
        return s.str[:4].astype("Float64")
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.year.astype("Float64")
    return year_from_ms(s)


@pytest.mark.parametrize("relative, constants, id_col, network_col, year_col", SEWERS)
def test_sewer_mains_become_pipes(store, relative, constants, id_col, network_col, year_col):
    src = raw(f"canada_sewers/{relative}")
    source = relative.replace("/", "-").removesuffix(".geojson")
    report = run_import(
        store, "pipes", shared(f"canada_sewers/{relative}"), source=source, constants=constants
    )
    assert_counts(report, src)
    assert report.rejected == []
    got = of_source(load(store, "pipes"), source, src[id_col])
    assert_same_geometry(got["_geom"], src)

    if network_col is not None:
        want_network = src[network_col].map(NETWORK_CODES).tolist()
    else:
        want_network = [{"storm": "storm", "domestic": "sewer"}[constants["network"]]] * len(src)
    assert values(got["network"]) == want_network

    material = src[next(c for c in src.columns if c.lower() == "material")].str.strip()
    want_material = [None if pd.isna(m) or m.upper() in UNKNOWN else m.upper() for m in material]
    assert values(got["material"]) == want_material

    diameter_col = {"ottawa": "WIDTH"}.get(relative.split("/")[0]) or next(
        c for c in src.columns if c.lower() == "diameter"
    )
    want_diameter = src[diameter_col].astype(float)
    assert values(got["diameter_mm"]) == values(
        want_diameter.where(want_diameter.between(0, 10_000))
    )

    assert values(got["install_year"]) == values(expected_years(src, year_col))
    if year_col is not None:
        assert got["install_year"].notna().sum() > len(src) // 2  # filled where the source has them


def test_all_four_cities_share_the_pipes_layer(store):
    reads = {}
    for relative, constants, *_ in SEWERS:
        source = relative.replace("/", "-").removesuffix(".geojson")
        path = shared(f"canada_sewers/{relative}")
        report = run_import(store, "pipes", path, source=source, constants=constants)
        assert report.added == report.read
        reads[source] = report.read
    layer = load(store, "pipes")
    assert layer.attrs.groupby("source").size().to_dict() == reads
    assert reads["ottawa-storm_pipes"] == 400 and reads["toronto-mains"] == 307
    assert set(layer.attrs["network"].dropna()) == {"sewer", "storm"}


# -- Cambridge, MA --------------------------------------------------------------------------


def test_street_lights(store):
    src = raw("cambridge_ma/INFRA_StreetLights.geojson")
    report = run_import(store, "lights", shared("cambridge_ma/INFRA_StreetLights.geojson"))
    assert_counts(report, src)
    assert (report.added, report.id_column) == (6117, "PoleID")
    got = of_source(load(store, "lights"), "INFRA_StreetLights", src["PoleID"])
    assert_same_geometry(got["_geom"], src)
    fixture = src["FixtureType"].str.strip()
    want = [None if pd.isna(v) or v in ("`", "?", "") else v for v in fixture]
    assert values(got["lamp_type"]) == want
    assert "`" not in set(got["lamp_type"].dropna())


def test_open_space_becomes_parks_with_area_on_the_ground(store):
    src = raw("cambridge_ma/RECREATION_OpenSpace.geojson")
    report = run_import(store, "parks", shared("cambridge_ma/RECREATION_OpenSpace.geojson"))
    assert_counts(report, src)
    assert report.computed["area_m2"].startswith("276 features")
    got = of_source(load(store, "parks"), "RECREATION_OpenSpace", src["JOIN_ID"])
    assert_same_geometry(got["_geom"], src)
    assert shapely.get_num_geometries(np.asarray(got["_geom"])).max() > 1  # multi-parts kept
    # Independent reference: an equal-area projection of the WGS84 ellipsoid (EASE-Grid 2.0).
    equal_area = src.geometry.to_crs("EPSG:6933").area.to_numpy()
    np.testing.assert_allclose(got["area_m2"].to_numpy(float), equal_area, rtol=1e-3)
    # And the city's own acreage, given to 0.1 acre, for the parks of an acre or more.
    acres = src["Acres"].to_numpy()
    big = acres >= 1
    np.testing.assert_allclose(
        got["area_m2"].to_numpy(float)[big] / 4046.8564224, acres[big], atol=0.051, rtol=0.01
    )
    names = src["NAME"].str.strip()
    assert values(got["name"]) == [n if n else None for n in names]


def test_bridges(store):
    src = raw("cambridge_ma/BASEMAP_Bridges.geojson")
    report = run_import(store, "bridges", shared("cambridge_ma/BASEMAP_Bridges.geojson"))
    assert_counts(report, src)
    layer = load(store, "bridges")
    assert len(layer) == 52
    assert sorted(layer.geometry_types) == ["MultiPolygon", "Polygon"]
    assert sorted(layer.attrs["name"].dropna()) == sorted(src["BridgeDetails"].str.strip().dropna())
    assert shapely.equals(
        shapely.union_all(layer.geometry), shapely.union_all(np.asarray(src.geometry.array))
    )


def test_centre_lines_become_roads(store):
    src = raw("cambridge_ma/TRANS_Centerlines.geojson")
    report = run_import(store, "roads", shared("cambridge_ma/TRANS_Centerlines.geojson"))
    assert_counts(report, src)
    assert report.id_column == "ID"
    got = of_source(load(store, "roads"), "TRANS_Centerlines", src["ID"])
    assert_same_geometry(got["_geom"], src)
    assert values(got["name"]) == values(src["Street"].str.strip())
    assert (np.asarray(got["_geom"]) != None).all()  # noqa: E711


def test_parcel_map_index_becomes_grid_cells(store):
    path = shared("cambridge_ma/ASSESSING_ParcelMapIndexFY2026.geojson")
    src = gpd.read_file(path)
    report = run_import(store, "grids", path, constants={"level": "cell"})
    assert_counts(report, src)
    got = of_source(load(store, "grids"), path.stem, src["GlobalID"])
    assert_same_geometry(got["_geom"], src)
    assert values(got["code"]) == src["PCIX_NO"].tolist()
    assert set(got["level"]) == {"cell"}


def test_hydrants_become_valves(store):
    path = shared("cambridge_ma/INFRA_Hydrants.geojson")
    src = gpd.read_file(path)
    report = run_import(store, "valves", path, constants={"kind": "hydrant", "network": "water"})
    assert_counts(report, src)
    assert any("HYDRANT_ID" in n for n in report.notes)  # 36 empty, so not the id
    got = of_source(load(store, "valves"), path.stem, src["GlobalID"])
    assert_same_geometry(got["_geom"], src)
    years = year_from_ms(src["INSTALLDATE"]).where(src["INSTALLDATE"] != 0)
    assert values(got["install_year"]) == values(years)
    status = src["LIFECYCLESTATUS"].map({"ACT": "in_service", "ABN": "abandoned"})
    assert values(got["status"]) == values(status)
    assert set(got["kind"]) == {"hydrant"}
