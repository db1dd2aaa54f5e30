"""Helpers for importer tests: small messy files written at test time, and one-call imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Geod

from importers.options import ImportOptions
from importers.pipeline import import_file
from importers.report import ImportReport
from layers.layer import Layer
from layers.models import Access

GEOD = Geod(ellps="WGS84")


def run_import(store, collection: str, path: Path | str, **options: Any) -> ImportReport:
    """Import `path` into `collection` with `ImportOptions(**options)`."""
    return import_file(store, collection, path, ImportOptions(**options), user="tester")


def load(store, collection: str) -> Layer:
    return store.load(collection, Access.RESTRICTED)


def by_id(layer: Layer, column: str) -> dict[str, Any]:
    """`{feature id: value of column}`."""
    return dict(zip(layer.ids.tolist(), layer.attrs[column].tolist(), strict=True))


def max_distance_m(a: np.ndarray, b: np.ndarray) -> float:
    """Largest geodesic distance between matching vertices of two geometry arrays."""
    ca, cb = shapely.get_coordinates(a), shapely.get_coordinates(b)
    assert ca.shape == cb.shape
    return float(np.abs(GEOD.inv(ca[:, 0], ca[:, 1], cb[:, 0], cb[:, 1])[2]).max())


def pipes_frame(n: int = 6, *, crs: str | None = "EPSG:4326") -> gpd.GeoDataFrame:
    """A few sewer pipes near Jiangxia with messy attribute values."""
    x = 114.32 + np.arange(n) * 0.001
    geom = [shapely.LineString([(xi, 30.35), (xi + 0.0005, 30.3505)]) for xi in x]
    return gpd.GeoDataFrame(
        {
            "PIPE_ID": [f"P{i}" for i in range(n)],
            "MATERIAL": ["pvc ", "CONC", "UNK", "?", "Di", "PE"][:n] + ["PE"] * max(0, n - 6),
            "DIAMETER": [300, 450, 0, 600, -1, 200][:n] + [100] * max(0, n - 6),
            "INSTALLDATE": [-2524503600000, 315550800000, 0, None, 946684800000, 1600000000000][:n]
            + [None] * max(0, n - 6),
            "SYSTEM": ["Sanitary", "combined", "STORM", "domestic", "xx", None][:n]
            + [None] * max(0, n - 6),
        },
        geometry=geom,
        crs=crs,
    )


@pytest.fixture
def pipes_file(tmp_path: Path) -> Path:
    """A GeoJSON of six pipes with an id column."""
    path = tmp_path / "pipes.geojson"
    pipes_frame().to_file(path, driver="GeoJSON")
    return path
