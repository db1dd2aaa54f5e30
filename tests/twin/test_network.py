"""Isolation and gravity traces on a hand-made network whose answer is known."""

from __future__ import annotations

import gc
import json
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from pyproj import Geod

from layers.gpkg import GeoPackageStore
from layers.layer import Layer
from layers.models import Access
from layers.schemas import LIGHTS, PIPES, VALVES
from tests.twin.query_fixtures import make_layer, query_app
from twin import network
from twin.errors import GravityNetwork, InvalidParameter

GEOD = Geod(ellps="WGS84")
LON0, LAT0 = 114.30, 30.50
# Metres per degree here, so that (x, y) metres map linearly to lon/lat and valves placed on a
# straight pipe lie exactly on it.
MX = GEOD.inv(LON0, LAT0, LON0 + 0.01, LAT0)[2] / 0.01
MY = GEOD.inv(LON0, LAT0, LON0, LAT0 + 0.01)[2] / 0.01


def ll(x: float, y: float) -> tuple[float, float]:
    """Lon/lat of the point x metres east and y metres north of the origin."""
    return LON0 + x / MX, LAT0 + y / MY


def line(*xy: tuple[float, float]) -> shapely.LineString:
    return shapely.LineString([ll(x, y) for x, y in xy])


def pt(x: float, y: float) -> shapely.Point:
    return shapely.Point(ll(x, y))


#  (P0)
#   W ---p0--- A -V0-T-V1- B -V2- (break) -V3x- C -V4- D --p13 (0.8 m gap)--> K
#                  |       |                   | \\V6 (p9 north to H, p11 to I via VN shut)
#                 p12     p4                  V5
#                          E -------p8------- F ---p6--- G (P1) -p7- D
WATER = {
    "p0": [(-1000, 0), (0, 0)],
    "p1": [(0, 0), (100, 0)],
    "p12": [(30, 0), (30, -60)],  # T-junction onto the interior of p1
    "p2": [(100, 0), (200, 0)],  # the broken main
    "p3": [(200, 0), (300, 0)],
    "p4": [(100, 0.3), (100, -100)],  # starts 0.3 m from B: snapped
    "p5": [(200, 0), (200, -100)],
    "p6": [(200, -100), (300, -100)],
    "p7": [(300, -100), (300, 0)],
    "p8": [(100, -100), (200, -100)],
    "p9": [(200, 0), (200, 100)],
    "p11": [(200, 100), (250, 100)],
    "p13": [(300.8, 0), (400, 0)],  # starts 0.8 m from D: not joined
    "px": [(200, 0), (250, 50)],  # abandoned
}
SEWER = {
    "s1": [(0, 1000), (100, 1000)],
    "s2": [(100, 1000), (200, 1000)],
    "s3": [(50, 1100), (100, 1000)],
    "s4": [(200, 1000), (300, 1000)],
}
OTHER = {
    "g1": ("gas", [(200, 0), (230, 40)]),  # meets the water main at C: must not join it
    "w9": ("water", [(100, 1000), (100, 1200)]),  # meets the sewer at s2's start: must not join
}


def pipes_layer():
    ids, geoms, nets, status = [], [], [], []
    for fid, xy in WATER.items():
        ids.append(fid), geoms.append(line(*xy)), nets.append("water")
        status.append("abandoned" if fid == "px" else "in_service")
    for fid, xy in SEWER.items():
        ids.append(fid), geoms.append(line(*xy)), nets.append("sewer"), status.append(None)
    for fid, (net, xy) in OTHER.items():
        ids.append(fid), geoms.append(line(*xy)), nets.append(net), status.append(None)
    return make_layer(PIPES, geoms, ids, network=nets, status=status)


VALVE_ROWS = [
    # id, x, y, kind, network, operable, normally_open
    ("V0", 10, 0, "valve", "water", True, True),
    ("V1", 50, 0, "valve", "water", None, None),  # unknown state: operable and open
    ("V2", 110, 0, "valve", "water", True, True),
    ("V3", 190, 0, "valve", "water", False, True),  # inoperable: skipped
    ("V4", 250, 0, "valve", "water", True, True),
    ("V5", 200, -50, "valve", "water", True, True),
    ("V6", 200, 20, "valve", None, True, True),  # network from the pipe it sits on
    ("VN", 225, 100, "valve", "water", True, False),  # normally closed
    ("H1", 150, 8, "hydrant", None, None, None),  # serves p2
    ("H2", 212, 104, "hydrant", "water", None, None),  # serves p11 (before VN)
    ("H3", 60, -5, "hydrant", "water", None, None),  # serves p1
    ("M4", 350, 3, "meter", "water", None, None),  # serves p13
    ("H5", 240, 104, "hydrant", "water", None, None),  # serves p11 beyond VN (not fed here)
    ("P0", -1000, 2, "pump", "water", None, None),  # the source, at W
    ("P1", 300, -98, "pump", "water", None, None),  # a second source, at G
]


def valves_layer():
    ids = [r[0] for r in VALVE_ROWS]
    return make_layer(
        VALVES,
        [pt(r[1], r[2]) for r in VALVE_ROWS],
        ids,
        kind=[r[3] for r in VALVE_ROWS],
        network=[r[4] for r in VALVE_ROWS],
        operable=[r[5] for r in VALVE_ROWS],
        normally_open=[r[6] for r in VALVE_ROWS],
    )


def lights_layer():
    rows = [
        ("L1", 225, 0.2, "K7"),  # stands on the isolated part of p3
        ("L2", 0, 500, "K7"),
        ("L3", 50, 500, "K7"),
        ("L4", 100, 500, "K8"),
        ("L5", 60, 0.1, "K9"),  # stands on p1, which stays live
        ("L6", 275, 0.2, "K10"),  # on p3 beyond V4, which stays live
    ]
    return make_layer(
        LIGHTS, [pt(r[1], r[2]) for r in rows], [r[0] for r in rows], circuit=[r[3] for r in rows]
    )


@pytest.fixture(scope="module")
def net():
    return network.build(pipes_layer(), valves_layer(), snap_m=0.5, attach_m=30.0)


def _ids(layer, rows) -> set[str]:
    return set(layer.ids[np.asarray(rows, dtype=np.int64)].tolist())


def _length(x0, y0, x1, y1) -> float:
    return GEOD.geometry_length(line((x0, y0), (x1, y1)))


def test_isolating_the_broken_main(net) -> None:
    iso = network.isolate(net, "p2")
    valves = net.valves
    assert _ids(valves, iso.to_close) == {"V2", "V4", "V5", "V6"}
    assert _ids(valves, iso.inoperable) == {"V3"}
    assert _ids(valves, iso.shut) == set()
    rows, length, cause = iso.pipes_cut()
    got = dict(zip(net.pipes.ids[rows].tolist(), zip(length, cause, strict=True), strict=True))
    expected = {
        "p2": (_length(110, 0, 200, 0), "isolated"),  # from V2 on; V3 could not be shut
        "p3": (_length(200, 0, 250, 0), "isolated"),
        "p5": (_length(200, 0, 200, -50), "isolated"),
        "p9": (_length(200, 0, 200, 100), "isolated"),  # 20 m isolated, 80 m unsupplied
        "p11": (_length(200, 100, 225, 100), "unsupplied"),  # up to the shut valve VN
    }
    assert set(got) == set(expected)
    for fid, (ref_len, ref_cause) in expected.items():
        assert got[fid][0] == pytest.approx(ref_len, abs=0.01), fid
        assert got[fid][1] == ref_cause, fid
    assert iso.length_m == pytest.approx(sum(v[0] for v in expected.values()), abs=0.05)
    assert _ids(valves, iso.fittings) == {"H1", "H2"}


def test_a_break_near_a_junction_uses_the_valves_around_it(net) -> None:
    # A break between B and V2 (5 m from B) is on the B side of V2: the valves around B's zone.
    iso = network.isolate(net, "p2", at=pt(105, 1.0), max_m=5.0)
    assert _ids(net.valves, iso.to_close) == {"V1", "V2", "V4", "V5"}
    rows, _, _ = iso.pipes_cut()
    assert {"p4", "p8", "p6", "p7"} <= _ids(net.pipes, rows)
    with pytest.raises(InvalidParameter, match="from pipe 'p2'"):
        network.isolate(net, "p2", at=pt(150, 40), max_m=5.0)


def test_a_t_junction_and_snapping(net) -> None:
    # p12 meets p1 between V0 and V1 without a shared vertex: the network splits p1 there.
    iso = network.isolate(net, "p12")
    assert _ids(net.valves, iso.to_close) == {"V0", "V1"}
    rows, length, _ = iso.pipes_cut()
    got = dict(zip(net.pipes.ids[rows].tolist(), length, strict=True))
    assert got.keys() == {"p1", "p12"}
    assert got["p1"] == pytest.approx(_length(10, 0, 50, 0), abs=0.01)
    # p13 starts 0.8 m from D (over the 0.5 m tolerance): an island with nothing to close.
    island = network.isolate(net, "p13")
    assert len(island.to_close) == 0
    rows, _, _ = island.pipes_cut()
    assert _ids(net.pipes, rows) == {"p13"}
    assert _ids(net.valves, island.fittings) == {"M4"}
    # p4 starts 0.3 m from B: joined, so it shares B's zone with p8, p6 and p7.
    iso4 = network.isolate(net, "p4")
    assert {"p8", "p6", "p7"} <= _ids(net.pipes, iso4.pipes_cut()[0])


def test_without_sources_the_largest_part_is_taken_as_fed() -> None:
    valves = valves_layer()
    no_pumps = valves.take(np.flatnonzero(valves.attrs["kind"] != "pump"))
    bare = network.build(pipes_layer(), no_pumps)
    iso = network.isolate(bare, "p12")
    assert iso.supply == "largest part"
    rows, _, cause = iso.pipes_cut()
    got = dict(zip(bare.pipes.ids[rows].tolist(), cause, strict=True))
    # Closing V0 and V1 leaves the 1 km feeder p0 as the largest part: the east is cut off.
    assert got["p12"] == "isolated" and got["p2"] == "unsupplied" and "p0" not in got
    assert network.isolate(network.build(pipes_layer(), valves), "p12").supply == "sources"


def test_networks_never_join_and_dead_pipes_are_out(net) -> None:
    iso = network.isolate(net, "p2")
    assert "g1" not in _ids(net.pipes, iso.pipes_cut()[0])
    gas = network.isolate(net, "g1")
    assert _ids(net.pipes, gas.pipes_cut()[0]) == {"g1"}
    with pytest.raises(InvalidParameter, match="not part of the live network"):
        network.isolate(net, "px")
    assert net.report["valves_on_network"] == 8 and net.report["valves_off_network"] == 0


def test_gravity_traces(net) -> None:
    down = network.trace(net, "s1", "downstream")
    rows, _ = down.pipes()
    assert _ids(net.pipes, rows) == {"s1", "s2", "s4"}
    assert down.length_m == pytest.approx(3 * _length(0, 1000, 100, 1000), abs=0.05)
    np.testing.assert_allclose(net.node_lonlat[down.ends], [ll(300, 1000)], atol=1e-9)
    up = network.trace(net, "s2", "upstream")
    assert _ids(net.pipes, up.pipes()[0]) == {"s1", "s2", "s3"}
    ends = {tuple(np.round(c, 9)) for c in net.node_lonlat[up.ends].tolist()}
    assert ends == {tuple(np.round(ll(0, 1000), 9)), tuple(np.round(ll(50, 1100), 9))}
    assert "w9" not in _ids(net.pipes, up.pipes()[0])
    with pytest.raises(InvalidParameter, match="gravity"):
        network.trace(net, "p2", "downstream")
    assert network.nearest_gravity_pipe(net.pipes, pt(75, 1055), 50.0) == "s3"


def test_the_network_is_built_once_per_layer_pair() -> None:
    pipes, valves = pipes_layer(), valves_layer()
    a = network.network_for(pipes, valves)
    assert network.network_for(pipes, valves) is a
    assert network.network_for(pipes, valves_layer()) is not a  # an edit makes a new layer
    # The cache does not keep an old layer alive once the catalog lets go of it.
    gone = weakref.ref(pipes)
    del pipes, a
    gc.collect()
    assert gone() is None


# -- through the real app -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("network") / "store"
    store = GeoPackageStore(root)
    for layer in (pipes_layer(), valves_layer(), lights_layer()):
        store.write(layer, source="hand-made", user="tests")
    store.close()
    with TestClient(query_app(root)) as c:
        yield c


def test_isolation_over_http(client) -> None:
    body = client.get("/collections/pipes/items/p2/isolation").json()
    assert {f["id"] for f in body["valves_to_close"]["features"]} == {"V2", "V4", "V5", "V6"}
    assert [f["id"] for f in body["inoperable_valves"]["features"]] == ["V3"]
    pipes = {f["id"]: f for f in body["pipes"]["features"]}
    assert pipes.keys() == {"p2", "p3", "p5", "p9", "p11"}
    assert pipes["p11"]["cause"] == "unsupplied"
    assert pipes["p3"]["cut_length_m"] == pytest.approx(_length(200, 0, 250, 0), abs=0.01)
    # Affected: the hydrants the cut-off water mains serve; not the street light L1 standing
    # on p3, nor its circuit: lights are not served by the water network.
    affected = {(f["collection"], f["id"]) for f in body["affected"]["features"]}
    assert affected == {("valves", "H1"), ("valves", "H2")}
    d = [f["distance_m"] for f in body["affected"]["features"]]
    assert d == sorted(d)
    assert body["summary"]["affected"] == {"hydrant": 2}
    cut = shapely.from_geojson(json.dumps(body["cut"]))
    assert GEOD.geometry_length(cut) == pytest.approx(body["length_m"], abs=0.05)
    at = client.get(
        "/collections/pipes/items/p2/isolation", params={"lon": ll(105, 1)[0], "lat": ll(105, 1)[1]}
    ).json()
    assert {f["id"] for f in at["valves_to_close"]["features"]} == {"V1", "V2", "V4", "V5"}


def test_traces_over_http(client) -> None:
    down = client.get("/collections/pipes/items/s1/downstream").json()
    assert {f["id"] for f in down["pipes"]["features"]} == {"s1", "s2", "s4"}
    assert down["ends"][0]["coordinates"] == pytest.approx(list(ll(300, 1000)))
    up = client.get("/collections/pipes/items/s4/upstream").json()
    assert {f["id"] for f in up["pipes"]["features"]} == {"s1", "s2", "s3", "s4"}
    lon, lat = ll(75, 1055)
    spill = client.get("/query/trace", params={"lon": lon, "lat": lat}).json()
    assert spill["start"]["id"] == "s3"
    assert {f["id"] for f in spill["pipes"]["features"]} == {"s3", "s2", "s4"}


def test_hidden_valves_are_closed_but_not_reported(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = GeoPackageStore(root)
    hidden = valves_layer()
    hidden = Layer(
        replace(hidden.schema, classification=Access.RESTRICTED),
        hidden.ids,
        hidden.geometry,
        hidden.attrs,
    )
    for layer in (pipes_layer(), hidden):
        store.write(layer, source="hand-made", user="tests")
    store.close()
    with TestClient(query_app(root, scope="restricted")) as admin:
        body = admin.get("/collections/pipes/items/p2/isolation").json()
    assert {f["id"] for f in body["valves_to_close"]["features"]} == {"V2", "V4", "V5", "V6"}
    # A caller who may not see the valves gets the same isolation (the pipes cut off are the
    # same: the hidden valves are still closed), without a valve in it.
    with TestClient(query_app(root)) as public:
        seen = public.get("/collections/pipes/items/p2/isolation").json()
    assert seen["valves_to_close"]["features"] == []
    assert seen["summary"]["valves_to_close"] == 0
    assert [f["id"] for f in seen["pipes"]["features"]] == [
        f["id"] for f in body["pipes"]["features"]
    ]
    assert seen["length_m"] == body["length_m"]
    assert "V2" not in json.dumps(seen)


def test_gravity_pipes_are_not_isolated_but_traced(net, client) -> None:
    with pytest.raises(GravityNetwork, match="gravity"):
        network.isolate(net, "s2")
    r = client.get("/collections/pipes/items/s2/isolation")
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "GravityNetwork" and "sewer" in body["description"]
    for direction in ("upstream", "downstream"):
        path = f"/collections/pipes/items/s2/{direction}"
        assert path in body["description"]
        assert client.get(path).status_code == 200


def test_only_the_cut_off_networks_assets_are_affected() -> None:
    # A gas main and a water main side by side, 3 m apart, each with two in-line valves; a
    # hydrant on the water main and a gas meter on the gas main between them.
    pipes = make_layer(
        PIPES,
        [line((-50, 0), (150, 0)), line((-50, 3), (150, 3))],
        ["w", "g"],
        network=["water", "gas"],
    )
    valves = make_layer(
        VALVES,
        [pt(0, 0), pt(100, 0), pt(0, 3), pt(100, 3), pt(50, -1), pt(50, 4)],
        ["VW0", "VW1", "VG0", "VG1", "H", "GM"],
        kind=["valve", "valve", "valve", "valve", "hydrant", "meter"],
        network=["water", "water", "gas", "gas", "water", "gas"],
    )
    net = network.build(pipes, valves, snap_m=0.5, attach_m=30.0)
    water = network.isolate(net, "w")
    assert _ids(net.valves, water.to_close) == {"VW0", "VW1"}
    assert _ids(net.valves, water.fittings) == {"H"}
    body = water.to_json()
    assert [f["id"] for f in body["affected"]["features"]] == ["H"]
    gas = network.isolate(net, "g")
    assert _ids(net.valves, gas.fittings) == {"GM"}


@pytest.mark.parametrize(
    ("path", "status", "phrase"),
    [
        ("/collections/pipes/items/nope/isolation", 404, "'nope'"),
        ("/collections/pipes/items/px/isolation", 400, "live network"),
        ("/collections/pipes/items/p2/isolation?lon=114.3", 400, "both lon and lat"),
        ("/collections/pipes/items/p2/isolation?lon=114.3&lat=95", 400, "lat=95"),
        ("/collections/pipes/items/p2/downstream", 400, "gravity"),
        ("/collections/pipes/items/nope/upstream", 404, "'nope'"),
        ("/query/trace?lon=114.3&lat=30.0", 400, "no sewer or storm pipe"),
        ("/query/trace?lon=114.3&lat=30.5&direction=sideways", 400, "direction"),
    ],
)
def test_bad_trace_requests(client, path: str, status: int, phrase: str) -> None:
    r = client.get(path)
    assert r.status_code == status, r.text
    assert phrase in r.json()["description"]
