"""Small helpers for the query, metric, network and stats tests: layers built at test time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Geod, Transformer

from layers.gpkg import GeoPackageStore
from layers.layer import Layer
from layers.models import Access, LayerSchema
from layers.schemas import custom_schema
from layers.settings import StoreSettings
from layers.store import RasterInfo
from tests.conftest import shared
from tests.twin import serve_fixtures
from twin.settings import QuerySettings, ServerSettings

GEOD = Geod(ellps="WGS84")


def make_layer(
    schema: LayerSchema,
    geometry: Any,
    ids: Any = None,
    **columns: Any,
) -> Layer:
    """A layer of `schema` holding `geometry` (lon/lat), with the given attribute columns; ids
    `<collection>-<n>` unless given."""
    n = len(geometry)
    if ids is None:
        ids = [f"{schema.name}-{i}" for i in range(n)]
    return serve_fixtures.make_layer(schema, geometry, ids, **columns)


def cambridge(name: str) -> gpd.GeoDataFrame:
    """One Cambridge MA layer from ../shared/data (skips when absent)."""
    return gpd.read_file(shared(f"cambridge_ma/{name}.geojson"))


def geodesic_distance_ref(
    geoms: np.ndarray, point: shapely.Point, step_m: float = 0.2
) -> np.ndarray:
    """Brute-force reference: pyproj.Geod distance from `point` to each shape, by densifying
    every boundary (as stored, straight in lon/lat) to `step_m` and taking the nearest vertex;
    0 inside a polygon."""
    out = np.empty(len(geoms))
    step_deg = step_m / 111_320.0 * 0.7
    for i, g in enumerate(geoms):
        if g.geom_type in ("Polygon", "MultiPolygon") and g.covers(point):
            out[i] = 0.0
            continue
        dense = shapely.segmentize(g, step_deg)
        c = shapely.get_coordinates(dense)
        _, _, d = GEOD.inv(np.full(len(c), point.x), np.full(len(c), point.y), c[:, 0], c[:, 1])
        out[i] = d.min()
    return out


# -- a store of real Cambridge layers, a generated DEM and a restricted layer -------------------

CAMBRIDGE_IMPORTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("lights", "INFRA_StreetLights", {}),
    ("parks", "RECREATION_OpenSpace", {}),
    ("roads", "TRANS_Centerlines", {}),
    ("grids", "BOUNDARY_CDDNeighborhoods", {"level": "district"}),
    ("grids", "ASSESSING_ParcelMapIndexFY2026", {"level": "cell"}),
    ("pipes", "INFRA_Drainage", {"network": "storm", "depth_m": "1.5"}),
)
DEM_CRS = 26986  # NAD83 / Massachusetts Mainland, metres: the DEM is not in lon/lat on purpose
SECRET = custom_schema(
    {
        "name": "secret_valves",
        "title": "Secret valves",
        "geometry": "point",
        "classification": "restricted",
        "fields": {"code": "string"},
    }
)


def write_dem(path: Path, lonlat_bounds: tuple[float, float, float, float]) -> Path:
    """A float32 GeoTIFF DEM in EPSG:26986 at 20 m over the box: a tilted, wavy surface
    with a nodata patch in one corner."""
    tr = Transformer.from_crs(4326, DEM_CRS, always_xy=True)
    minx, miny, maxx, maxy = tr.transform_bounds(*lonlat_bounds)
    res = 20.0
    width, height = int((maxx - minx) // res) + 2, int((maxy - miny) // res) + 2
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    z = (
        5.0
        + 0.004 * cols * res
        + 0.002 * rows * res
        + 3.0 * np.sin(cols / 7.0) * np.cos(rows / 11.0)
    )
    z = z.astype(np.float32)
    z[:12, :12] = -9999.0
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "float32",
        "crs": f"EPSG:{DEM_CRS}",
        "transform": Affine(res, 0.0, minx, 0.0, -res, maxy + res),
        "nodata": -9999.0,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(z, 1)
    return path


def secret_layer() -> Layer:
    """A restricted layer near the centre of Cambridge that public callers must never see."""
    pts = shapely.points([[-71.1056, 42.3736], [-71.1100, 42.3770], [-71.0900, 42.3650]])
    return make_layer(SECRET, pts, ids=["k1", "k2", "k3"], code=["A", "B", "C"])


def build_cambridge_store(root: Path) -> Path:
    """A GeoPackage store holding the Cambridge layers (through the real file importer), a
    generated DEM raster and a restricted layer."""
    from importers.options import ImportOptions
    from importers.pipeline import import_file

    store = GeoPackageStore(root / "store")
    try:
        for collection, name, constants in CAMBRIDGE_IMPORTS:
            report = import_file(
                store,
                collection,
                shared(f"cambridge_ma/{name}.geojson"),
                ImportOptions(constants=constants),
                user="tests",
            )
            assert report.landed
        bounds = store.layers(Access.RESTRICTED)["lights"].bounds
        assert bounds is not None
        dem = write_dem(
            root / "dem.tif",
            (bounds[0] - 0.02, bounds[1] - 0.02, bounds[2] + 0.02, bounds[3] + 0.02),
        )
        store.put_raster(RasterInfo("dem", "Ground elevation", dem), user="tests", source="dem.tif")
        store.write(secret_layer(), source="secret", user="tests")
    finally:
        store.close()
    return root / "store"


def query_app(store: Path, scope: str = "public", **query: Any) -> Any:
    """The real app over `store`, anonymous callers at `scope`, with query settings `query`."""
    from twin.app import create_app

    return create_app(
        ServerSettings(_env_file=None, anonymous_access=scope),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=store),  # type: ignore[call-arg]
        query_settings=QuerySettings(_env_file=None, **query),  # type: ignore[call-arg]
        limit_settings=serve_fixtures.NO_LIMITS,
    )


@pytest.fixture(scope="session", name="cambridge_store")
def cambridge_store_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Cambridge store, built once per test session (skips without ../shared/data)."""
    return build_cambridge_store(tmp_path_factory.mktemp("cambridge"))


@pytest.fixture(scope="session", name="demo_store")
def demo_store_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo city (`twin demo --no-serve`), built once per test session."""
    from typer.testing import CliRunner

    from twin.cli import app

    root = tmp_path_factory.mktemp("demo") / "store"
    result = CliRunner().invoke(app, ["demo", "--store", str(root), "--no-serve"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module", name="demo_client")
def demo_client_fixture(demo_store: Path) -> Any:
    """The real app over the demo city, for a caller who may see every layer."""
    from fastapi.testclient import TestClient

    with TestClient(query_app(demo_store, scope="restricted")) as client:
        yield client


def demo_layer(store: Path, name: str) -> Layer:
    """Layer `name` of the store at `store`, as a caller who may see everything."""
    opened = GeoPackageStore(store, create=False)
    try:
        return opened.load(name, Access.RESTRICTED)
    finally:
        opened.close()


@pytest.fixture(scope="module", name="demo_pipes")
def demo_pipes_fixture(demo_store: Path) -> Layer:
    """The demo city's pipes."""
    return demo_layer(demo_store, "pipes")
