"""Traces on windows of the layers (a server not holding them, `twin.trace_window`) answer as
the traces of the whole layers, to the byte, on the PostGIS store and on the GeoPackage store;
and on PostGIS they read neither a whole layer nor a network far from the pipe traced.

Two copies of the small demo town's networks (water and heat with valves, hydrants and pumps;
gas without pumps, so its isolations take the largest part as fed; sewer and storm traced by
gravity), the second 0.5 degrees east with some of its fittings stating no network (taken from
the nearest pipe, of any network). The reference is the whole layers' network, built by the
code the server uses when it holds them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import shapely

from importers import demo_assets, demo_city
from layers.catalog import Catalog, WindowCatalog
from layers.layer import Layer
from layers.models import Access, Bounds
from layers.schemas import PIPES, VALVES
from layers.settings import StoreSettings, open_store
from tests.twin.query_fixtures import make_layer
from tests.twin.serve_fixtures import fill_store
from tests.twin.test_stores_alike import copy_into, create_database, drop_database
from twin import network
from twin.errors import TwinError
from twin.routes.queries import _whole_network
from twin.settings import QuerySettings
from twin.trace_window import TraceWindows

EAST = 0.5  # degrees between the two towns: ~48 km, far past any window a trace reads there
SETTINGS = QuerySettings(_env_file=None)  # type: ignore[call-arg]
SNAP, ATTACH = SETTINGS.network_snap_m, SETTINGS.network_attach_m
PIPE_COLS = ["network", "material", "diameter_mm", "install_year", "depth_m", "status"]
VALVE_COLS = ["kind", "network", "normally_open", "operable", "diameter_mm", "status"]


def _town(prefix: str, dx: float) -> tuple[Layer, Layer]:
    city = demo_city.build_city("small", 1)
    pipes, fittings = demo_assets.pipes_and_fittings(city)
    pipes, fittings = pipes.to_crs(4326), fittings.to_crs(4326)
    move = lambda c: c + np.array([dx, 0.0])  # noqa: E731
    p = make_layer(
        PIPES,
        shapely.transform(pipes.geometry.to_numpy(), move),
        [f"{prefix}{i}" for i in pipes["pipe_id"]],
        **{c: pipes[c] for c in PIPE_COLS},
    )
    # Hydrants and pumps stand up to 20 m off their main (served by the nearest pipe within
    # the attach distance, which a window must reach past the pipes it knows whole).
    rng = np.random.default_rng(len(prefix) + int(dx * 10))
    off = rng.uniform(-20, 20, (len(fittings), 2)) / np.array([96_000.0, 111_000.0])
    off[(fittings["kind"] == "valve").to_numpy()] = 0.0
    points = shapely.points(shapely.get_coordinates(fittings.geometry.to_numpy()) + off)
    v = make_layer(
        VALVES,
        shapely.transform(points, move),
        [f"{prefix}{i}" for i in fittings["valve_id"]],
        **{c: fittings[c] for c in VALVE_COLS},
    )
    return p, v


def _joined(a: Layer, b: Layer) -> Layer:
    attrs = pd.concat([a.attrs, b.attrs], ignore_index=True)
    return Layer(
        a.schema,
        np.concatenate([a.ids, b.ids]),
        np.concatenate([a.geometry, b.geometry]),
        attrs,
    )


@pytest.fixture(scope="module")
def towns() -> tuple[Layer, Layer]:
    """The pipes and valves of both towns; a fifth of the second town's fittings and valves
    state no network."""
    pa, va = _town("a-", 0.0)
    pb, vb = _town("b-", EAST)
    unstated = np.arange(len(vb)) % 5 == 0
    vb.attrs["network"] = vb.attrs["network"].mask(unstated, None)
    return _joined(pa, pb), _joined(va, vb)


@pytest.fixture(scope="module")
def gpkg_dir(towns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill_store(tmp_path_factory.mktemp("trace-window") / "store", list(towns))


@pytest.fixture(scope="module")
def pg_url(gpkg_dir: Path) -> Iterator[str]:
    import psycopg

    name, url = create_database("trace")
    try:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        copy_into(gpkg_dir, url)
        yield url
    finally:
        drop_database(name)


def _answers(fid: str, layer: Layer, on: Callable[[Callable[[network.Network], Any]], Any]):
    """Every trace of pipe `fid` (JSON text, or the error's text), `on` running a trace on a
    network holding its answer."""
    row = layer.row(fid)
    kind = layer.attrs["network"].iloc[row]
    geom = layer.geometry[row]
    out = {}
    traces: dict[str, Callable[[network.Network], Any]] = {}
    if kind in network.GRAVITY_NETWORKS:
        for d in ("upstream", "downstream"):
            traces[d] = lambda net, d=d: network.trace(net, fid, d)
    else:
        traces["isolation"] = lambda net: network.isolate(net, fid)
        if not shapely.is_empty(geom):
            at = shapely.line_interpolate_point(geom, 0.2, normalized=True)
            traces["at"] = lambda net: network.isolate(net, fid, at=at, max_m=50.0)
    for name, how in traces.items():
        try:
            out[name] = json.dumps(on(how).to_json())
        except TwinError as e:
            out[name] = f"{type(e).__name__}: {e}"
    return out


def _picked(pipes: Layer) -> list[str]:
    """Every pipe of the smallest network (heat) and of the smaller gravity network, a sample
    of the others, and the pipes nearest each side of each network of each town (where its
    component ends)."""
    rng = np.random.default_rng(7)
    nets = pipes.attrs["network"].astype(object).to_numpy()
    ids = pipes.ids.astype(str)
    town = np.char.startswith(ids.astype(str), "b-")
    picked: list[str] = []
    for kind in ("heat", "water", "gas", "sewer", "storm"):
        for t in (False, True):
            rows = np.flatnonzero((nets == kind) & (town == t))
            if kind == "heat" and not t:
                picked += ids[rows].tolist()
                continue
            n = 12 if not t else 4
            picked += ids[rng.choice(rows, size=min(n, len(rows)), replace=False)].tolist()
            b = shapely.bounds(pipes.geometry[rows])
            for col, pick in ((0, np.argmin), (1, np.argmin), (2, np.argmax), (3, np.argmax)):
                picked.append(str(ids[rows[pick(b[:, col])]]))
    dead = np.flatnonzero(pipes.attrs["status"].isin(network.DEAD_STATUS).fillna(False))
    picked += ids[dead[:3]].tolist()
    return list(dict.fromkeys(picked))


def _compare(store: Any) -> int:
    """Every trace of the picked pipes, whole layers against windows; the number compared."""
    whole = Catalog(store)
    net = _whole_network(whole, SETTINGS)
    windows, catalog = TraceWindows(first_m=0.0), WindowCatalog(store)  # tight: edges near
    pipes = whole.layer("pipes", Access.RESTRICTED)
    compared = 0
    for fid in _picked(pipes):
        ref = _answers(fid, pipes, lambda how: how(net))
        got = _answers(
            fid,
            pipes,
            lambda how, fid=fid: windows.answer(catalog, fid, how, snap_m=SNAP, attach_m=ATTACH),
        )
        assert got == ref, fid
        compared += len(ref)
    assert windows.reads > 0
    return compared


@pytest.mark.slow
def test_windowed_traces_answer_as_the_whole_layers_on_geopackage(gpkg_dir: Path) -> None:
    store = open_store(StoreSettings(store=gpkg_dir), create=False)
    try:
        assert _compare(store) > 150
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.postgis
@pytest.mark.xdist_group("postgis")
def test_windowed_traces_answer_as_the_whole_layers_on_postgis(pg_url: str) -> None:
    store = open_store(StoreSettings(store=pg_url))
    try:
        assert _compare(store) > 150
    finally:
        store.close()


@pytest.mark.postgis
@pytest.mark.xdist_group("postgis")
def test_windowed_traces_read_no_whole_layer_nor_the_other_town(pg_url: str, towns) -> None:
    store = open_store(StoreSettings(store=pg_url))
    read: list[np.ndarray] = []
    window = store.window

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a trace loaded a whole layer")

    def recorded(name: str, *args: Any, **kwargs: Any) -> Layer:
        got = window(name, *args, **kwargs)
        read.append(got.ids.astype(str))
        return got

    store.load = never  # type: ignore[method-assign]
    store.window = recorded  # type: ignore[method-assign]
    try:
        catalog, windows = WindowCatalog(store), TraceWindows()
        pipes, _ = towns
        nets = pipes.attrs["network"].astype(object).to_numpy()
        ids = pipes.ids.astype(str)
        first = ~np.char.startswith(ids, "b-")
        for kind, how in (
            ("water", lambda fid: lambda net: network.isolate(net, fid)),
            ("gas", lambda fid: lambda net: network.isolate(net, fid)),  # the whole component
            ("sewer", lambda fid: lambda net: network.trace(net, fid, "upstream")),
        ):
            for fid in ids[first & (nets == kind)][:: max(1, int((nets == kind).sum()) // 6)]:
                windows.answer(catalog, str(fid), how(str(fid)), snap_m=SNAP, attach_m=ATTACH)
        seen = np.concatenate(read)
        assert len(seen) and windows.reads >= 3
        assert not np.char.startswith(seen, "b-").any()
        # The gas network has no pump: its isolations read the whole of its component, so the
        # windows reached the town's far side, and still stopped short of the other town.
        assert np.isin(ids[first & (nets == "gas")], seen).all()
    finally:
        store.close()


def _pieces(net: network.Network, edges: np.ndarray) -> dict[tuple, tuple]:
    """What the network says of each of `edges`: by (pipe, start, end along it), its nodes
    (where, kind, how many edges meet there, the valves there), length and the fittings
    it serves."""
    valves = net.valves
    assert valves is not None
    served = pd.Series(valves.ids).groupby(net.fitting_edge).agg(lambda s: tuple(sorted(s)))
    at_node = pd.Series(valves.ids).groupby(net.valve_node).agg(lambda s: tuple(sorted(s)))

    def node(n: int) -> tuple:
        x, y = net.node_lonlat[n]
        return (x, y, int(net.node_kind[n]), int(net.degree[n]), at_node.get(n, ()))

    return {
        (net.pipes.ids[net.edge_pipe[e]], net.edge_t0[e], net.edge_t1[e]): (
            node(net.u[e]),
            node(net.v[e]),
            net.edge_length_m[e],
            served.get(e, ()),
        )
        for e in edges.tolist()
    }


@pytest.mark.parametrize("kind", ["water", "heat", "gas", "sewer"])
def test_what_a_window_knows_whole_is_the_whole_layers(gpkg_dir: Path, kind: str) -> None:
    """Of the network of a window, every edge of the traced network between nodes known whole
    is an edge of the whole layers' network, alike in everything: its nodes (kind, degree, valves), length and
    the fittings it serves; in windows of many sizes and places, in both towns."""
    store = open_store(StoreSettings(store=gpkg_dir), create=False)
    try:
        whole_catalog = Catalog(store)
        whole = _whole_network(whole_catalog, SETTINGS)
        reference = _pieces(whole, np.arange(whole.n_edges))
        catalog, windows = WindowCatalog(store), TraceWindows()
        origin = network.frame_origin(whole_catalog.head("pipes", Access.RESTRICTED).bounds)
        pipes, valves = whole.pipes, whole.valves
        assert valves is not None
        rows = np.flatnonzero((pipes.attrs["network"] == kind).fillna(False).to_numpy())
        fits = np.flatnonzero(
            ((valves.attrs["network"] == kind) & (valves.attrs["kind"] != "valve"))
            .fillna(False)
            .to_numpy()
        )
        rng = np.random.default_rng(11)
        known = 0
        for i, row in enumerate(rng.choice(rows, 24, replace=False).tolist()):
            x, y = shapely.get_coordinates(pipes.geometry[row])[0]
            half = rng.uniform(0.001, 0.008)
            box = Bounds(x - half, y - half * 0.8, x + half * 1.3, y + half)
            if i % 2 and len(fits):  # its east side a hair short of a fitting
                fx, fy = shapely.get_coordinates(valves.geometry[rng.choice(fits)])[0]
                box = Bounds(fx - 2 * half, fy - half, fx - 1e-6, fy + half)
            net = windows._read(catalog, box, kind, True, SNAP, ATTACH, origin, False)
            assert net.closed is not None
            # Of its network: a window with a valve of no stated network holds every network's
            # pipes (which tells its network), but only the valves of this one.
            mine = (net.pipes.attrs["network"] == kind).fillna(False).to_numpy()[net.edge_pipe]
            both = np.flatnonzero(net.closed[net.u] & net.closed[net.v] & mine)
            got = _pieces(net, both)
            assert {k: reference.get(k) for k in got} == got
            known += len(both)
        assert known > 100
    finally:
        store.close()
