"""`twin tiles export`: a PMTiles archive the pmtiles library reads, with render_tile's tiles."""

from __future__ import annotations

import gzip
import json

import mapbox_vector_tile
import numpy as np
import pytest
import shapely
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import Compression, TileType
from typer.testing import CliRunner

from layers.gpkg import GeoPackageStore
from layers.models import Access
from layers.schemas import LIGHTS, PIPES
from tests.tiles.conftest import make_layer
from tiles.grid import TMS, Tile
from tiles.render import render_tile
from tiles.settings import TileSettings
from twin.cli import app

LON, LAT = 114.32, 30.35


def _store(path) -> None:
    rng = np.random.default_rng(5)
    n = 120
    start = np.array([LON, LAT]) + rng.uniform(-0.01, 0.01, (n, 2))
    pipes = shapely.linestrings(np.stack([start, start + rng.normal(0, 0.002, (n, 2))], axis=1))
    lights = shapely.points(np.array([LON, LAT]) + rng.uniform(-0.01, 0.01, (200, 2)))
    store = GeoPackageStore(path)
    store.write(
        make_layer(PIPES, list(pipes), diameter_mm=rng.choice([100.0, 300.0], n)),
        source="t",
        user="t",
    )
    store.write(make_layer(LIGHTS, list(lights), status=["on"] * 200), source="t", user="t")
    store.close()


def test_export_writes_the_tiles_render_tile_serves(tmp_path) -> None:
    store_dir = tmp_path / "store"
    _store(store_dir)
    out = tmp_path / "city.pmtiles"
    result = CliRunner().invoke(
        app,
        [
            "tiles",
            "export",
            str(out),
            "--store",
            str(store_dir),
            "--minzoom",
            "10",
            "--maxzoom",
            "15",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output

    store = GeoPackageStore(store_dir)
    layers = [(store.load(n, Access.PUBLIC), None) for n in ("lights", "pipes")]
    store.close()
    with open(out, "rb") as f:
        src = MmapSource(f)
        reader = Reader(src)
        header = reader.header()
        assert (
            header["tile_type"] == TileType.MVT and header["tile_compression"] == Compression.GZIP
        )
        assert (header["min_zoom"], header["max_zoom"]) == (10, 15)
        meta = reader.metadata()
        assert {v["id"] for v in meta["vector_layers"]} == {"lights", "pipes"}
        stored = {(z, x, y): gzip.decompress(data) for (z, x, y), data in all_tiles(src)}

    # Every non-empty tile over the data is in the archive, byte for byte as served.
    settings = TileSettings(_env_file=None)
    expected = {}
    for t in TMS.tiles(LON - 0.02, LAT - 0.02, LON + 0.02, LAT + 0.02, zooms=list(range(10, 16))):
        raw = render_tile(layers, Tile(t.x, t.y, t.z), settings)
        if raw:
            expected[(t.z, t.x, t.y)] = raw
    assert stored.keys() == expected.keys()
    assert all(stored[k] == expected[k] for k in expected)
    z15 = [k for k in stored if k[0] == 15]
    decoded = [mapbox_vector_tile.decode(stored[k]) for k in z15]
    assert sum(len(d.get("lights", {"features": []})["features"]) for d in decoded) >= 200
    assert json.dumps(meta)  # plain JSON metadata


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("x.mbtiles", [], ".pmtiles"),
        ("x.pmtiles", ["--collections", "nope"], "nope"),
        ("x.pmtiles", ["--minzoom", "9", "--maxzoom", "3"], "minzoom"),
        ("x.pmtiles", ["--scope", "secret"], "unknown access level"),
    ],
)
def test_export_refuses_bad_input(tmp_path, name: str, extra: list[str], message: str) -> None:
    store_dir = tmp_path / "store"
    _store(store_dir)
    out = tmp_path / name
    r = CliRunner().invoke(app, ["tiles", "export", str(out), "--store", str(store_dir), *extra])
    assert r.exit_code != 0 and message in r.output
    assert not out.exists()


def test_export_without_a_store(tmp_path) -> None:
    out = tmp_path / "x.pmtiles"
    r = CliRunner().invoke(app, ["tiles", "export", str(out), "--store", str(tmp_path / "none")])
    assert r.exit_code != 0 and "no store" in r.output
