"""The demo city as ordinary files, the same bytes for the same seed.

- `streets.osm`: OpenStreetMap XML of the street network (pyosmium), bridges tagged with
  their inspection data, as a city's OSM extract would be;
- one GeoPackage per asset layer (pyogrio), in the city's survey CRS (EPSG:4547), with
  GDAL's clock pinned (`OGR_CURRENT_DATE`) so nothing in them depends on the day;
- `dem.tif`: the terrain as a GeoTIFF (rasterio), float32 metres, EPSG:4547.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import osmium
import pyogrio
import rasterio

from importers.demo_assets import REFERENCE_DATE, Assets
from importers.demo_city import CRS, PRIMARY, RESIDENTIAL, SECONDARY, TERTIARY, City, rng

PINNED_DATE = "2025-01-01T00:00:00Z"
"""GDAL's notion of "now" while the GeoPackages are written."""
NODATA = -9999.0
_LANES = {PRIMARY: "6", SECONDARY: "4", TERTIARY: "2", RESIDENTIAL: "2"}
_SPEED = {PRIMARY: "60", SECONDARY: "50", TERTIARY: "40", RESIDENTIAL: "30"}
_CONDITION = ("good", "good", "good", "fair", "fair", "poor")


@contextlib.contextmanager
def pinned_gdal_clock() -> Iterator[None]:
    """GDAL writes today's date into GeoPackages unless told otherwise; tell it a fixed one."""
    before = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": PINNED_DATE})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": before})


def _runs(city: City) -> list[tuple[int, np.ndarray]]:
    """Edges grouped into OSM ways: consecutive edges of one street with one bridge state."""
    s = city.streets
    order = np.lexsort([s.position, s.line])
    runs: list[tuple[int, np.ndarray]] = []
    start = 0
    for k in range(1, len(order) + 1):
        if k == len(order):
            cut = True
        else:
            a, b = order[k - 1], order[k]
            cut = (
                s.line[a] != s.line[b]
                or s.position[b] != s.position[a] + 1
                or s.bridge[a] != s.bridge[b]
            )
        if cut:
            runs.append((int(s.line[order[start]]), order[start:k]))
            start = k
    return runs


def write_streets(city: City, path: Path) -> dict[str, int]:
    """The street network as OpenStreetMap XML; returns node and way counts."""
    s = city.streets
    slots = s.osm_vertices
    vertex = s.edges[:, slots]
    used = np.unique(vertex)
    lon, lat = city.to_lonlat.transform(s.xy[used, 0], s.xy[used, 1])
    lon, lat = np.round(lon, 7), np.round(lat, 7)
    node_id = np.zeros(len(s.xy), dtype=np.int64)
    node_id[used] = np.arange(1, len(used) + 1)
    g = rng(city.seed, "osm-tags")
    header = osmium.io.Header()
    header.set("generator", "twin demo")
    path.unlink(missing_ok=True)
    n_ways = 0
    with osmium.SimpleWriter(str(path), header=header) as writer:
        for i, (x, y) in enumerate(zip(lon.tolist(), lat.tolist(), strict=True), start=1):
            writer.add_node(osmium.osm.mutable.Node(id=i, location=(x, y)))
        for line, edges in _runs(city):
            nodes = [int(node_id[vertex[edges[0], 0]])]
            for e in edges.tolist():
                nodes.extend(int(n) for n in node_id[vertex[e, 1:]])
            kind = str(s.kind[edges[0]])
            name = s.line_names[line]
            oneway = bool(s.oneway[edges[0]])
            tags = {
                "highway": kind,
                "name": name,
                "lanes": "1" if oneway else _LANES[kind],
                "maxspeed": _SPEED[kind],
                "surface": "asphalt",
            }
            if oneway:
                tags["oneway"] = "yes"
            if s.bridge[edges[0]]:
                river = bool(s.over_river[edges[0]])
                length = len(edges) * city.spec.block_m
                tags.update(
                    {
                        "bridge": "yes",
                        "layer": "1",
                        "bridge:name": f"{name}{'金水河桥' if river else '跨湖桥'}",
                        "bridge:structure": "beam" if length < 300 else "arch",
                        "bridge:spans": str(max(1, round(length / 35))),
                        "condition": _CONDITION[int(g.integers(len(_CONDITION)))],
                        "check_date": (
                            REFERENCE_DATE - dt.timedelta(days=int(g.integers(30, 900)))
                        ).isoformat(),
                    }
                )
            n_ways += 1
            writer.add_way(osmium.osm.mutable.Way(id=n_ways, nodes=nodes, tags=tags))
    return {"nodes": len(used), "ways": n_ways}


def write_layer(frame: gpd.GeoDataFrame, path: Path, layer: str) -> None:
    """One layer as a GeoPackage, replacing any older file."""
    path.unlink(missing_ok=True)
    with pinned_gdal_clock():
        pyogrio.write_dataframe(frame, path, layer=layer, driver="GPKG")


def write_dem(city: City, path: Path) -> None:
    """The terrain as a tiled, compressed float32 GeoTIFF in the survey CRS."""
    path.unlink(missing_ok=True)
    h, w = city.dem.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype="float32",
        crs=CRS,
        transform=city.dem_transform,
        nodata=NODATA,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        predictor=3,
    ) as dst:
        dst.write(city.dem, 1)
        dst.update_tags(AREA_OR_POINT="Area", TIFFTAG_IMAGEDESCRIPTION="Jiangxia demo terrain")
        dst.set_band_unit(1, "metre")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_all(city: City, assets: Assets, directory: Path) -> dict[str, Path]:
    """Every demo file under `directory`, plus `manifest.json` (counts and checksums)."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"streets": directory / "streets.osm"}
    counts: dict[str, int] = dict(write_streets(city, files["streets"]))
    for name, frame in assets.frames().items():
        files[name] = directory / f"jiangxia_{name}.gpkg"
        write_layer(frame, files[name], name)
        counts[name] = len(frame)
    files["dem"] = directory / "dem.tif"
    write_dem(city, files["dem"])
    manifest = {
        "city": "江夏区 (Jiangxia), Wuhan — generated demo",
        "size": city.size,
        "seed": city.seed,
        "crs": CRS,
        "counts": counts,
        "files": {k: {"name": p.name, "sha256": sha256(p)} for k, p in files.items()},
    }
    files["manifest"] = directory / "manifest.json"
    files["manifest"].write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return files
