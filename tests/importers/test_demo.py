"""`twin demo`: the generated Jiangxia district lands whole through the real importers, the
same seed writes the same bytes, and the networks it lays are sound for traces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import osmnx as ox
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import Geod
from typer.testing import CliRunner

from importers.demo import SOURCE_DIR, write_demo_files
from importers.demo_files import sha256
from layers.gpkg import GeoPackageStore
from layers.models import Access
from layers.raster import sample
from layers.schemas import BUILTIN
from tests.twin.serve_fixtures import free_port, wait_healthy
from twin.cli import app
from twin.network import build, isolate

GEOD = Geod(ellps="WGS84")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The small demo built once, by the command a newcomer runs (without serving)."""
    root = tmp_path_factory.mktemp("demo") / "store"
    result = CliRunner().invoke(app, ["demo", "--store", str(root), "--no-serve"])
    assert result.exit_code == 0, result.output
    store = GeoPackageStore(root, create=False)
    yield root, store, result.stdout
    store.close()


def load(store: GeoPackageStore, name: str):
    return store.load(name, Access.RESTRICTED)


def test_demo_imports_every_builtin_layer_and_a_dem(demo):
    root, store, out = demo
    layers = store.layers(Access.RESTRICTED)
    assert set(BUILTIN) <= set(layers)
    source = root / SOURCE_DIR
    for name in ("pipes", "valves", "lights", "parks", "grids", "sites", "water"):
        path = source / f"jiangxia_{name}.gpkg"
        # every record of the source file landed, none rejected
        assert layers[name].count == pyogrio.read_info(path)["features"] > 0, name
        history = store.history(name)[0]
        assert history.rejected == 0 and history.added == layers[name].count
    # roads: exactly the street segments osmnx makes of the OSM file
    G = ox.graph_from_xml(source / "streets.osm", retain_all=True)
    assert layers["roads"].count == len(ox.convert.to_undirected(G).edges)
    assert layers["bridges"].count >= 1
    dem = store.rasters(Access.PUBLIC)["dem"]
    with rasterio.open(dem.path) as ds, rasterio.open(source / "dem.tif") as src:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.crs.to_epsg() == 4547
        assert np.array_equal(ds.read(1), src.read(1))
    assert "pipes" in out and "dem" in out
    # the district sits on Jiangxia
    b = layers["grids"].bounds
    assert b.minx < 114.32 < b.maxx and b.miny < 30.35 < b.maxy


def test_same_seed_same_bytes_other_seed_other_city(tmp_path):
    a = write_demo_files(tmp_path / "a", "small", 7)
    # a separate interpreter with another hash seed must write the same bytes
    code = (
        "import sys; from pathlib import Path; from importers.demo import write_demo_files; "
        "write_demo_files(Path(sys.argv[1]), 'small', 7)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "b")],
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
    )
    b = {p.name: p for p in (tmp_path / "b").iterdir()}
    assert sorted(p.name for p in a.values()) == sorted(b)
    for path in a.values():
        assert sha256(path) == sha256(b[path.name]), path.name
    c = write_demo_files(tmp_path / "c", "small", 8)
    assert sha256(c["pipes"]) != sha256(a["pipes"])
    assert sha256(c["streets"]) != sha256(a["streets"])


def _close(points: np.ndarray, targets: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """How many of `targets` lie within `tol` degrees of each point."""
    tree = shapely.STRtree(shapely.points(targets))
    i, _ = tree.query(shapely.points(points), predicate="dwithin", distance=tol)
    return np.bincount(i, minlength=len(points))


def test_water_network_meets_at_junctions_with_valves_on_the_mains(demo):
    _, store, _ = demo
    pipes, valves = load(store, "pipes"), load(store, "valves")
    water = pipes.attrs["network"].to_numpy() == "water"
    ends = np.concatenate(
        [
            shapely.get_coordinates(shapely.get_point(pipes.geometry[water], 0)),
            shapely.get_coordinates(shapely.get_point(pipes.geometry[water], -1)),
        ]
    )
    kind = valves.attrs["kind"].to_numpy()
    net = valves.attrs["network"].to_numpy()
    v_xy = shapely.get_coordinates(valves.geometry[(kind == "valve") & (net == "water")])
    # each valve splits a main: exactly two pipe ends meet at it
    assert (_close(v_xy, ends) == 2).all()
    # pipe ends are never loose by a few centimetres: they meet others exactly or stand alone
    near = _close(ends, ends, tol=1e-5)  # ~1 m
    exact = _close(ends, ends, tol=1e-9)
    assert (near == exact).all()
    assert (exact >= 3).sum() > 50  # junctions of three or more mains
    # hydrants stand beside a water main, a couple of metres away
    h_xy = shapely.get_coordinates(valves.geometry[kind == "hydrant"])
    mains = shapely.STRtree(pipes.geometry[water])
    _, dist = mains.query_nearest(shapely.points(h_xy), return_distance=True)
    assert np.all(dist * 111_000 < 5)
    water_len = sum(GEOD.geometry_length(g) for g in pipes.geometry[water])
    assert 80 < water_len / len(h_xy) < 130  # one hydrant about every 100 m of main


def test_isolating_a_main_closes_the_two_valves_around_it(demo):
    _, store, _ = demo
    pipes, valves = load(store, "pipes"), load(store, "valves")
    net = build(pipes, valves)
    water = np.flatnonzero(pipes.attrs["network"].to_numpy() == "water")
    kind = valves.attrs["kind"].to_numpy()
    usable = (
        (kind == "valve")
        & valves.attrs["operable"].fillna(False).to_numpy(dtype=bool)
        & valves.attrs["normally_open"].fillna(False).to_numpy(dtype=bool)
    )
    v_tree = shapely.STRtree(valves.geometry)
    starts = shapely.get_point(pipes.geometry[water], 0)
    ends = shapely.get_point(pipes.geometry[water], -1)
    s_tree, e_tree = shapely.STRtree(starts), shapely.STRtree(ends)
    tried = 0
    for k, a in enumerate(water.tolist()):
        at_start = v_tree.query(starts[k], predicate="dwithin", distance=1e-9)
        if len(at_start) != 1 or not usable[at_start[0]]:
            continue
        # the main goes on through a plain joint: one pipe starts where this one ends
        nxt = s_tree.query(ends[k], predicate="dwithin", distance=1e-9)
        if len(nxt) != 1 or len(e_tree.query(ends[k], predicate="dwithin", distance=1e-9)) != 1:
            continue
        b = water[nxt[0]]
        at_end = v_tree.query(ends[nxt[0]], predicate="dwithin", distance=1e-9)
        if len(at_end) != 1 or not usable[at_end[0]]:
            continue
        result = isolate(net, str(pipes.ids[a]))
        closed = {str(valves.ids[i]) for i in result.to_close}
        assert closed == {str(valves.ids[at_start[0]]), str(valves.ids[at_end[0]])}
        rows, _, _ = result.pipes_cut()
        assert set(rows.tolist()) == {a, b}
        want = GEOD.geometry_length(pipes.geometry[a]) + GEOD.geometry_length(pipes.geometry[b])
        assert result.length_m == pytest.approx(want, rel=5e-3)
        tried += 1
        if tried == 5:
            break
    assert tried == 5


def test_sewers_run_downhill_and_pipes_are_sized_and_laid_sensibly(demo):
    _, store, _ = demo
    pipes = load(store, "pipes")
    dem = store.rasters(Access.PUBLIC)["dem"].path
    net = pipes.attrs["network"].to_numpy()
    sewer = np.flatnonzero(net == "sewer")
    a = shapely.get_coordinates(shapely.get_point(pipes.geometry[sewer], 0))
    b = shapely.get_coordinates(shapely.get_point(pipes.geometry[sewer], -1))
    za = np.array(sample(dem, a[:, 0], a[:, 1]), dtype=float)
    zb = np.array(sample(dem, b[:, 0], b[:, 1]), dtype=float)
    assert np.mean(za >= zb - 0.05) > 0.9
    diameter = pipes.attrs["diameter_mm"].to_numpy(dtype=float)
    depth = pipes.attrs["depth_m"].to_numpy(dtype=float)
    for network, (dlo, dhi), (zlo, zhi) in [
        ("water", (100, 600), (1.2, 1.8)),
        ("sewer", (300, 1000), (2.5, 5.3)),
        ("storm", (400, 1500), (1.5, 3.8)),
        ("gas", (110, 400), (0.9, 1.3)),
    ]:
        rows = net == network
        assert rows.sum() > 100, network
        assert dlo <= diameter[rows].min() and diameter[rows].max() <= dhi, network
        assert zlo <= depth[rows].min() and depth[rows].max() <= zhi, network
    years = pipes.attrs["install_year"].to_numpy(dtype=float)
    assert years.min() >= 1970 and years.max() <= 2025


def test_lights_every_thirty_metres_and_bridges_over_water(demo):
    _, store, _ = demo
    lights = load(store, "lights")
    xy = shapely.get_coordinates(lights.geometry)
    tree = shapely.STRtree(lights.geometry)
    pairs = tree.query(lights.geometry, predicate="dwithin", distance=0.001)
    spacing = []
    for i in range(0, len(xy), 7):
        others = pairs[1][(pairs[0] == i) & (pairs[1] != i)]
        d = GEOD.inv(
            np.full(len(others), xy[i, 0]),
            np.full(len(others), xy[i, 1]),
            xy[others, 0],
            xy[others, 1],
        )[2]
        if len(d):
            spacing.append(d.min())
    assert 20 < np.median(spacing) < 40
    assert set(lights.attrs["status"].dropna()) <= {"on", "off", "fault"}
    water = shapely.union_all(load(store, "water").geometry)
    bridges = load(store, "bridges")
    assert shapely.intersects(bridges.geometry, water).all()
    roads = load(store, "roads")
    wet = shapely.intersects(roads.geometry, water)
    assert (roads.attrs["bridge"].to_numpy(dtype=bool) == wet).all()
    assert bridges.attrs["condition"].between(1, 5).all()
    assert bridges.attrs["last_inspection"].notna().all()
    assert bridges.attrs["name"].str.endswith("桥").all()


def test_grid_levels_nest_and_cells_cover_the_district(demo):
    _, store, _ = demo
    grids = load(store, "grids")
    level = grids.attrs["level"].to_numpy()
    code = grids.attrs["code"].to_numpy()
    parent = grids.attrs["parent_code"].to_numpy()
    geom = dict(zip(code, grids.geometry, strict=True))
    assert (level == "district").sum() == 1
    district = grids.geometry[level == "district"][0]
    assert grids.attrs["name"][level == "district"].iloc[0] == "江夏区"
    for child, above in (("street", "district"), ("community", "street"), ("cell", "community")):
        rows = np.flatnonzero(level == child)
        assert len(rows) > 1
        for r in rows:
            assert level[list(code).index(parent[r])] == above
            outside = shapely.difference(grids.geometry[r], geom[parent[r]])
            assert abs(GEOD.geometry_area_perimeter(outside)[0]) < 0.5  # m², rounding slivers
    cells = grids.geometry[level == "cell"]
    area = lambda g: abs(GEOD.geometry_area_perimeter(g)[0])  # noqa: E731
    union = shapely.union_all(cells)
    assert area(union) == pytest.approx(area(district), rel=1e-6)
    assert sum(area(c) for c in cells) == pytest.approx(area(union), rel=1e-6)  # no overlaps
    assert grids.attrs["responsible_unit"].notna().all()


def test_twin_demo_builds_and_serves(tmp_path):
    port = free_port()
    store = tmp_path / "fresh"
    proc = subprocess.Popen(
        [sys.executable, "-m", "twin.cli", "demo", "--store", str(store), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        # A hang guard, not a speed test: the speed is bench/demo_bench.py's.
        wait_healthy(proc, port, "twin demo", timeout_s=300)
        ids = {c["id"] for c in httpx.get(f"{base}/collections").json()["collections"]}
        assert set(BUILTIN) | {"dem"} <= ids
        pipes = httpx.get(f"{base}/collections/pipes/items", params={"limit": 3}).json()
        assert pipes["numberReturned"] == 3 and pipes["numberMatched"] > 1000
    finally:
        proc.terminate()
        proc.wait(timeout=30)
