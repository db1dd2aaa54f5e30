"""`twin import-osm`: real extracts land with the counts osmnx itself gives for the same tags;
a clipped extract imports what is whole and says what it dropped; bad files change nothing."""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import osmium
import osmnx as ox
import pandas as pd
import pytest
import shapely
from pyproj import Geod
from typer.testing import CliRunner

from importers.errors import EmptySource, UnreadableFile
from importers.osm import (
    ATTRIBUTION,
    LAYER_TAGS,
    OsmReport,
    import_osm,
    load_road_graph,
)
from importers.osm_source import ROAD_EXCLUDED
from layers.gpkg import GeoPackageStore
from layers.models import Access
from tests.conftest import shared
from twin.cli import app

GEOD = Geod(ellps="WGS84")
pytestmark = pytest.mark.shared_data


# -- references computed by osmnx itself --------------------------------------------------


def _prefilter(src: Path, dst: Path, spec: dict) -> Path:
    """The elements carrying the spec's keys (pyosmium's own filters) with all they refer to,
    as an Overpass query would return them."""
    pairs = [(k, v) for k, vals in spec.items() if vals is not True for v in vals]
    keys = [k for k, vals in spec.items() if vals is True]
    with osmium.BackReferenceWriter(
        str(dst), ref_src=str(src), overwrite=True, remove_tags=False
    ) as w:
        for flt in ([osmium.filter.KeyFilter(*keys)] if keys else []) + (
            [osmium.filter.TagFilter(*pairs)] if pairs else []
        ):
            for obj in osmium.FileProcessor(str(src)).with_filter(flt):
                w.add(obj)
    return dst


def osmnx_roads(src: Path, work: Path) -> nx.MultiGraph:
    """osmnx's undirected street graph of every highway in use (osmnx's "all" network)."""
    xml = _prefilter(src, work / "highways.osm", {"highway": True})
    G = ox.graph_from_xml(xml, simplify=False, retain_all=True)
    G.remove_edges_from(
        [
            (u, v, k)
            for u, v, k, d in G.edges(keys=True, data=True)
            # member ways of highway areas come along untagged: not roads either
            if d.get("highway") in (None, *ROAD_EXCLUDED) or d.get("area") == "yes"
        ]
    )
    G.remove_nodes_from(list(nx.isolates(G)))
    return ox.convert.to_undirected(ox.simplify_graph(G))


def osmnx_features(src: Path, work: Path, layer: str) -> gpd.GeoDataFrame:
    """osmnx's features for the layer's tags, geometries of the layer's kind only."""
    spec = LAYER_TAGS[layer]
    xml = _prefilter(src, work / f"{layer}.osm", spec)
    tags = {k: True if v is True else list(v) for k, v in spec.items()}
    try:
        gdf = ox.features_from_xml(xml, tags=tags)
    except ox._errors.InsufficientResponseError:
        return gpd.GeoDataFrame({"geometry": []}, geometry="geometry")
    keep = np.ones(len(gdf), dtype=bool)
    for key, value in tags.items():
        if value is True and key in gdf:
            keep &= (gdf[key] != "no").to_numpy()  # `bridge=no` is not a bridge
    kinds = gdf.geometry.geom_type
    if layer == "parks":
        keep &= kinds.isin(["Polygon", "MultiPolygon"]).to_numpy()
    if layer in ("lights", "valves"):
        keep &= (kinds == "Point").to_numpy()
    if layer == "pipes":
        keep &= kinds.isin(["LineString", "MultiLineString"]).to_numpy()
    return gdf[keep]


def osm_ids(gdf: gpd.GeoDataFrame) -> set[str]:
    return {f"osm:{element}/{osmid}" for element, osmid in gdf.index}


# -- imports, once per dataset --------------------------------------------------------------


class Imported:
    def __init__(self, store: GeoPackageStore, report: OsmReport, work: Path) -> None:
        self.store, self.report, self.work = store, report, work

    def layer(self, name: str):
        return self.store.load(name, Access.RESTRICTED)

    def count(self, name: str) -> int:
        info = self.store.layers(Access.RESTRICTED).get(name)
        return info.count if info else 0


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    cache: dict[str, Imported] = {}
    stores = []

    def get(rel: str, **kw) -> Imported:
        key = rel + repr(sorted(kw.items()))
        if key not in cache:
            path = shared(rel)
            root = tmp_path_factory.mktemp("osm")
            store = GeoPackageStore(root / "store")
            stores.append(store)
            cache[key] = Imported(store, import_osm(store, path, user="tester", **kw), root)
        return cache[key]

    yield get
    for s in stores:
        s.close()


def assert_matches_osmnx(imp: Imported, reference_src: Path, layers: tuple[str, ...]) -> dict:
    counts = {}
    if "roads" in layers:
        U = osmnx_roads(reference_src, imp.work)
        roads = imp.layer("roads")
        assert len(roads) == len(U.edges)
        # the same street segments: endpoints and ground length of each
        ref_len = sum(d["length"] for _, _, d in U.edges(data=True))
        got_len = sum(GEOD.geometry_length(g) for g in roads.geometry)
        assert got_len == pytest.approx(ref_len, rel=5e-3)  # osmnx measures on a sphere
        ref_ends = sorted(tuple(sorted((u, v))) for u, v in U.edges())
        got_ends = sorted(
            tuple(sorted(map(int, i.split(":")[1].split("-")[:2]))) for i in roads.ids
        )
        assert got_ends == ref_ends
        counts["roads"] = len(roads)
    for layer in layers:
        if layer == "roads":
            continue
        ref = osmnx_features(reference_src, imp.work, layer)
        assert imp.count(layer) == len(ref), layer
        if len(ref):
            assert set(imp.layer(layer).ids) == osm_ids(ref), layer
        counts[layer] = len(ref)
    return counts


# -- the real extracts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, reference",
    [
        ("osm_osmnx_fixtures/West-Oakland.osm.bz2", None),
        ("osm_osmnx_fixtures/aguascalientes.osm.bz2", None),
        ("osm_osmnx_fixtures/aguascalientes.osm.pbf", "osm_osmnx_fixtures/aguascalientes.osm.bz2"),
    ],
)
def test_osmnx_fixtures_match_osmnx(imported, rel, reference):
    imp = imported(rel)
    src = shared(reference or rel)
    counts = assert_matches_osmnx(imp, src, ("roads", "bridges", "parks", "power"))
    assert counts["roads"] > 50 and counts["bridges"] >= 2 and counts["parks"] >= 1
    # the street graph itself, in raw osmnx terms, for the documented fixture sizes
    if "West-Oakland" in rel:
        assert counts["bridges"] == 2 and counts["parks"] == 1
    else:
        assert counts["bridges"] == 10 and counts["parks"] == 6


def test_pbf_and_xml_give_the_same_layers(imported):
    a = imported("osm_osmnx_fixtures/aguascalientes.osm.bz2")
    b = imported("osm_osmnx_fixtures/aguascalientes.osm.pbf")
    for name in ("roads", "bridges", "parks"):
        la, lb = a.layer(name), b.layer(name)
        assert sorted(la.ids) == sorted(lb.ids)
        oa, ob = np.argsort(la.ids), np.argsort(lb.ids)
        assert shapely.equals_exact(la.geometry[oa], lb.geometry[ob], tolerance=0).all()
        fields = la.schema.field_names
        assert (
            la.attrs.iloc[oa][fields]
            .reset_index(drop=True)
            .equals(lb.attrs.iloc[ob][fields].reset_index(drop=True))
        )


@pytest.mark.slow
def test_liechtenstein_matches_osmnx(imported):
    rel = "osm_liechtenstein/liechtenstein-2013-08-03.osm.bz2"
    imp = imported(rel)
    counts = assert_matches_osmnx(imp, shared(rel), ("roads", "bridges", "parks", "power", "pipes"))
    assert counts["bridges"] == 122 and counts["power"] == 254 and counts["pipes"] == 2
    power = imp.layer("power")
    kinds = dict(zip(*np.unique(power.attrs["kind"].astype(str), return_counts=True), strict=True))
    assert kinds["tower"] == 248 and kinds["sub_station"] == 1


@pytest.mark.slow
def test_andorra_pbf_matches_osmnx_on_the_xml(imported):
    imp = imported("osm_andorra/andorra-2021-06-22.osm.pbf")
    ref = shared("osm_andorra/andorra-2021-06-22.osm.bz2")
    counts = assert_matches_osmnx(imp, ref, ("roads", "bridges", "parks", "power"))
    assert counts["bridges"] == 367 and counts["power"] == 462
    assert imp.count("lights") == 0 and imp.count("pipes") == 0
    # bridges carry their ground length: equal to the geodesic length of the line
    bridges = imp.layer("bridges")
    lines = np.flatnonzero(shapely.get_type_id(bridges.geometry) == 1)
    got = bridges.attrs["length_m"].to_numpy(dtype=float)[lines]
    want = [GEOD.geometry_length(g) for g in bridges.geometry[lines]]
    assert np.allclose(got, want, atol=0.01)
    # power voltages in kV from the volt tags
    power = imp.layer("power")
    lines_kv = power.attrs["voltage_kv"].dropna()
    assert lines_kv.max() >= 110 and (lines_kv > 0).all()


@pytest.mark.slow
def test_helsinki_complete_brings_its_lamps_and_pipelines(imported):
    rel = "osm_helsinki/helsinki_complete.osm.bz2"
    imp = imported(rel, layers=("lights", "pipes", "valves"))
    counts = assert_matches_osmnx(imp, shared(rel), ("lights", "pipes", "valves"))
    assert counts == {"lights": 586, "pipes": 73, "valves": 37}
    pipes = imp.layer("pipes")
    net = pipes.attrs["network"].value_counts().to_dict()
    ref = osmnx_features(shared(rel), imp.work, "pipes")
    substance = ref["substance"].value_counts().to_dict()
    assert net["gas"] == substance["gas"] == 8
    assert net["heat"] == (ref["type"] == "heat").sum() == 19
    diam = dict(zip(pipes.ids, pipes.attrs["diameter_mm"], strict=True))
    ref_diam = ref["diameter"].dropna()
    checked = 0
    for (element, osmid), value in ref_diam.items():
        got = diam[f"osm:{element}/{osmid}"]
        if value.isdigit():  # millimetres, OSM's default unit
            assert got == float(value)
            checked += 1
        elif value == '4"':
            assert got == pytest.approx(4 * 25.4)
        else:  # free text such as "'block'" is not a diameter
            assert got is pd.NA or got is None or np.isnan(got)
    assert checked >= 30
    assert imp.report.graph is None and imp.count("roads") == 0


@pytest.mark.slow
def test_helsinki_clipped_imports_what_is_whole_and_reports_the_rest(imported):
    imp = imported("osm_helsinki/helsinki_clipped.osm.bz2")
    # what is whole is exactly what the repaired file holds
    complete = shared("osm_helsinki/helsinki_complete.osm.bz2")
    counts = assert_matches_osmnx(
        imp, complete, ("roads", "bridges", "lights", "parks", "pipes", "valves", "power")
    )
    assert counts["lights"] == 586 and counts["pipes"] == 73
    dropped = imp.report.dropped
    assert dropped.ways == 421
    assert dropped.by_layer["roads"] > 0 and dropped.examples
    text = imp.report.text()
    assert "dropped 421 ways with nodes outside the extract" in text


# -- what the store keeps ---------------------------------------------------------------------


def test_layers_carry_the_attribution_and_the_road_graph_maps_to_roads(imported):
    imp = imported("osm_osmnx_fixtures/West-Oakland.osm.bz2")
    infos = imp.store.layers(Access.RESTRICTED)
    for name in ("roads", "bridges", "parks"):
        assert infos[name].meta["attribution"] == ATTRIBUTION
    G = load_road_graph(imp.store)
    assert G is not None and infos["roads"].meta["graph"] == "graphs/West-Oakland.graphml"
    roads = imp.layer("roads")
    road_ids = {d["road_id"] for _, _, d in G.edges(data=True)}
    assert road_ids == set(roads.ids)
    # each directed edge runs along its road: same end points, same length
    geom = dict(zip(roads.ids, roads.geometry, strict=True))
    for u, v, d in G.edges(data=True):
        line = geom[d["road_id"]]
        ends = {tuple(line.coords[0]), tuple(line.coords[-1])}
        assert ends == {(G.nodes[u]["x"], G.nodes[u]["y"]), (G.nodes[v]["x"], G.nodes[v]["y"])}
        assert GEOD.geometry_length(line) == pytest.approx(d["length"], rel=5e-3)  # haversine
    # one-way streets have one directed edge, two-way streets two
    oneway = dict(zip(roads.ids, roads.attrs["oneway"], strict=True))
    per_road: dict[str, int] = {}
    for _, _, d in G.edges(data=True):
        per_road[d["road_id"]] = per_road.get(d["road_id"], 0) + 1
    for rid, n in per_road.items():
        assert n == (1 if oneway[rid] else 2)


def test_attribution_reaches_tilejson_and_the_style(imported):
    from fastapi.testclient import TestClient

    from layers.settings import StoreSettings
    from twin.app import create_app
    from twin.settings import ServerSettings

    imp = imported("osm_osmnx_fixtures/West-Oakland.osm.bz2")
    app = create_app(
        ServerSettings(_env_file=None),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=imp.store.root),  # type: ignore[call-arg]
    )
    with TestClient(app) as client:
        one = client.get("/collections/roads/tiles/WebMercatorQuad/tilejson.json").json()
        assert one["attribution"] == ATTRIBUTION
        style = client.get("/style.json").json()
        url = next(s["url"] for s in style["sources"].values() if s.get("type") == "vector")
        composite = client.get(url.replace(str(client.base_url), "")).json()
        assert ATTRIBUTION in composite["attribution"]


def test_reimport_changes_nothing(imported, tmp_path):
    path = shared("osm_osmnx_fixtures/West-Oakland.osm.bz2")
    store = GeoPackageStore(tmp_path / "s")
    try:
        first = import_osm(store, path, user="t")
        again = import_osm(store, path, user="t")
        for name, rep in again.layers.items():
            assert (rep.added, rep.updated, rep.unchanged) == (0, 0, first.layers[name].added)
    finally:
        store.close()


# -- a small messy extract made here ----------------------------------------------------------

MESSY = """<?xml version='1.0' encoding='UTF-8'?>
<osm version="0.6" generator="test">
  <node id="1" lat="30.3500" lon="114.3200"/>
  <node id="2" lat="30.3500" lon="114.3210"/>
  <node id="3" lat="30.3505" lon="114.3220"/>
  <node id="4" lat="30.3505" lon="114.3240"/>
  <node id="5" lat="30.3510" lon="114.3250"/>
  <node id="6" lat="30.3520" lon="114.3250"/>
  <node id="7" lat="30.3530" lon="114.3260"/>
  <node id="8" lat="30.3540" lon="114.3270"/>
  <node id="10" lat="30.3501" lon="114.3205"><tag k="highway" v="street_lamp"/>
    <tag k="light:method" v="LED"/><tag k="height" v="8 m"/><tag k="light:power" v="60"/></node>
  <node id="11" lat="30.3502" lon="114.3215"><tag k="emergency" v="fire_hydrant"/>
    <tag k="fire_hydrant:diameter" v="150"/></node>
  <node id="12" lat="30.3550" lon="114.3200"><tag k="leisure" v="park"/><tag k="name" v="点公园"/></node>
  <node id="13" lat="30.3540" lon="114.3270"><tag k="power" v="tower"/></node>
  <node id="20" lat="30.3600" lon="114.3300"/>
  <node id="21" lat="30.3600" lon="114.3320"/>
  <node id="22" lat="30.3620" lon="114.3320"/>
  <node id="23" lat="30.3620" lon="114.3300"/>
  <node id="30" lat="30.3650" lon="114.3300"/>
  <node id="31" lat="30.3650" lon="114.3310"/>
  <node id="32" lat="30.3660" lon="114.3310"/>
  <way id="100"><nd ref="1"/><nd ref="2"/><nd ref="3"/>
    <tag k="highway" v="residential"/><tag k="name" v="文化路"/><tag k="lanes" v="2;3"/>
    <tag k="maxspeed" v="30 mph"/><tag k="oneway" v="yes"/><tag k="surface" v="asphalt"/></way>
  <way id="101"><nd ref="3"/><nd ref="4"/>
    <tag k="highway" v="primary"/><tag k="bridge" v="yes"/><tag k="name" v="江夏大桥"/>
    <tag k="condition" v="fair"/><tag k="check_date" v="2023-05-17"/></way>
  <way id="102"><nd ref="4"/><nd ref="999"/><tag k="highway" v="residential"/></way>
  <way id="103"><nd ref="4"/><nd ref="5"/><tag k="highway" v="construction"/></way>
  <way id="104"><nd ref="4"/><nd ref="8"/><tag k="highway" v="tertiary"/><tag k="bridge" v="no"/></way>
  <way id="110"><nd ref="4"/><nd ref="5"/><tag k="highway" v="residential"/><tag k="name" v="五号路"/></way>
  <way id="105"><nd ref="5"/><nd ref="6"/><tag k="man_made" v="pipeline"/>
    <tag k="substance" v="water"/><tag k="diameter" v="4&quot;"/></way>
  <way id="106"><nd ref="6"/><nd ref="7"/><tag k="man_made" v="pipeline"/><tag k="type" v="heat"/>
    <tag k="material" v="steel"/></way>
  <way id="107"><nd ref="20"/><nd ref="21"/><nd ref="22"/><nd ref="23"/><nd ref="20"/>
    <tag k="leisure" v="park"/><tag k="name" v="东湖公园"/></way>
  <way id="108"><nd ref="7"/><nd ref="8"/><tag k="power" v="line"/>
    <tag k="voltage" v="110000;20000"/><tag k="cables" v="6"/></way>
  <way id="109"><nd ref="30"/><nd ref="31"/><nd ref="32"/><nd ref="30"/></way>
  <relation id="200"><member type="way" ref="109" role="outer"/>
    <tag k="type" v="multipolygon"/><tag k="leisure" v="garden"/><tag k="name" v="小花园"/></relation>
  <relation id="201"><member type="way" ref="9999" role="outer"/>
    <tag k="type" v="multipolygon"/><tag k="leisure" v="park"/></relation>
</osm>
"""


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    path = tmp_path / "messy.osm.bz2"
    path.write_bytes(bz2.compress(MESSY.encode("utf-8")))
    return path


@pytest.mark.filterwarnings("ignore")
def test_messy_extract_maps_each_tag(tmp_path, messy, store):
    report = import_osm(store, messy, user="t")
    load = lambda n: store.load(n, Access.RESTRICTED)  # noqa: E731
    roads = load("roads")
    by_name = {n: i for i, n in enumerate(roads.attrs["name"].astype(object).fillna("-"))}
    assert len(roads) == 4  # 102 is cut, 103 under construction
    assert set(by_name) == {"文化路", "江夏大桥", "五号路", "-"}
    wenhua = roads.attrs.iloc[by_name["文化路"]]
    assert (wenhua["lanes"], wenhua["maxspeed_kmh"], wenhua["surface"]) == (3, 48.3, "asphalt")
    assert bool(wenhua["oneway"]) and not bool(wenhua["bridge"])
    assert bool(roads.attrs.iloc[by_name["江夏大桥"]]["bridge"])
    bridges = load("bridges")
    assert list(bridges.ids) == ["osm:way/101"]  # bridge=no is not a bridge
    b = bridges.attrs.iloc[0]
    assert (b["name"], b["kind"], b["condition"]) == ("江夏大桥", "road", 3)
    assert str(b["last_inspection"].date()) == "2023-05-17"
    assert b["length_m"] == pytest.approx(GEOD.inv(114.322, 30.3505, 114.324, 30.3505)[2], abs=0.01)
    light = load("lights").attrs.iloc[0]
    assert (light["lamp_type"], light["height_m"], light["wattage_w"]) == ("LED", 8.0, 60.0)
    valve = load("valves").attrs.iloc[0]
    assert (valve["kind"], valve["network"], valve["diameter_mm"]) == ("hydrant", "water", 150.0)
    pipes = load("pipes")
    got = {
        i: (a, d, m)
        for i, a, d, m in zip(
            pipes.ids,
            pipes.attrs["network"],
            pipes.attrs["diameter_mm"],
            pipes.attrs["material"],
            strict=True,
        )
    }
    assert got["osm:way/105"][:2] == ("water", 101.6)
    assert (
        got["osm:way/106"][0] == "heat" and got["osm:way/106"][2] == "STEEL"
    )  # material codes in capitals
    parks = load("parks")
    assert sorted(parks.ids) == ["osm:relation/200", "osm:way/107"]
    area = dict(zip(parks.ids, parks.attrs["area_m2"], strict=True))
    ring = [(114.33, 30.36), (114.332, 30.36), (114.332, 30.362), (114.33, 30.362), (114.33, 30.36)]
    lon, lat = zip(*ring, strict=True)
    assert area["osm:way/107"] == pytest.approx(
        abs(GEOD.polygon_area_perimeter(lon, lat)[0]), rel=1e-4
    )
    power = load("power")
    pw = dict(
        zip(
            power.ids,
            zip(power.attrs["kind"], power.attrs["voltage_kv"], power.attrs["cables"], strict=True),
            strict=True,
        )
    )
    assert pw["osm:way/108"] == ("line", 110.0, 6) and pw["osm:node/13"][0] == "tower"
    # what was left out, and why
    assert report.dropped.ways == 1 and report.dropped.relations == 1
    assert report.dropped.by_layer == {"roads": 1, "parks": 1}
    assert report.skipped == {"parks": {"Point where a polygon is needed": 1}}
    text = report.text()
    assert "1 ways with nodes outside the extract" in text and "1 area relations" in text
    assert ATTRIBUTION in text


# -- bad input ------------------------------------------------------------------------------


def _store_state(store_dir: Path) -> dict:
    db = GeoPackageStore(store_dir, create=False)
    try:
        return {
            "layers": {
                k: (v.count, v.last_change) for k, v in db.layers(Access.RESTRICTED).items()
            },
            "history": [(h.collection, h.source, h.time) for h in db.history()],
            "graphs": sorted(p.name for p in (store_dir / "graphs").glob("*")),
        }
    finally:
        db.close()


def _corrupt_bz2(tmp_path: Path) -> Path:
    raw = bytearray(shared("osm_osmnx_fixtures/West-Oakland.osm.bz2").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\x00" * 64
    path = tmp_path / "corrupt.osm.bz2"
    path.write_bytes(bytes(raw))
    return path


def _truncated_bz2(tmp_path: Path) -> Path:
    raw = shared("osm_osmnx_fixtures/West-Oakland.osm.bz2").read_bytes()
    path = tmp_path / "truncated.osm.bz2"
    path.write_bytes(raw[: len(raw) // 3])
    return path


def _bad(tmp_path: Path, case: str) -> tuple[Path, str]:
    if case == "corrupt bz2":
        return _corrupt_bz2(tmp_path), "not a valid bzip2 file"
    if case == "truncated bz2":
        return _truncated_bz2(tmp_path), "not a valid bzip2 file"
    if case == "zero bytes":
        p = tmp_path / "empty.osm"
        p.write_bytes(b"")
        return p, "empty (0 bytes)"
    if case == "junk pbf":
        p = tmp_path / "junk.osm.pbf"
        p.write_bytes(b"\x00\x00\x00\x0dnot a pbf at all" * 50)
        return p, "cannot read junk.osm.pbf as OpenStreetMap data"
    if case == "not xml":
        p = tmp_path / "notes.osm"
        p.write_text("these are not the nodes you are looking for\n")
        return p, "cannot read notes.osm as OpenStreetMap data"
    if case == "wrong suffix":
        p = tmp_path / "roads.geojson"
        p.write_text("{}")
        return p, "must end in .osm, .osm.bz2 or .osm.pbf"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["corrupt bz2", "truncated bz2", "zero bytes", "junk pbf", "not xml", "wrong suffix"]
)
def test_bad_osm_file_one_message_nonzero_exit_store_unchanged(tmp_path, case):
    store_dir = tmp_path / "store"
    good = shared("osm_osmnx_fixtures/West-Oakland.osm.bz2")
    first = CliRunner().invoke(app, ["import-osm", str(good), "--store", str(store_dir)])
    assert first.exit_code == 0, first.output
    before = _store_state(store_dir)
    path, message = _bad(tmp_path, case)
    result = CliRunner().invoke(app, ["import-osm", str(path), "--store", str(store_dir)])
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("twin: ") and message in lines[0], lines
    assert "Traceback" not in result.output
    assert _store_state(store_dir) == before


def test_bad_file_into_a_fresh_store_creates_nothing(tmp_path):
    path = _corrupt_bz2(tmp_path)
    store_dir = tmp_path / "fresh"
    result = CliRunner().invoke(app, ["import-osm", str(path), "--store", str(store_dir)])
    assert result.exit_code != 0 and not store_dir.exists()


def test_errors_from_the_api(tmp_path, store):
    with pytest.raises(EmptySource):
        import_osm(store, _bad(tmp_path, "zero bytes")[0], user="t")
    with pytest.raises(UnreadableFile, match="no such file"):
        import_osm(store, tmp_path / "missing.osm", user="t")
    copy = tmp_path / "copy.osm.bz2"
    shutil.copy(_corrupt_bz2(tmp_path), copy)
    with pytest.raises(UnreadableFile):
        import_osm(store, copy, user="t")
    assert store.layers(Access.RESTRICTED) == {}


def test_layer_choice_on_the_command_line(tmp_path):
    good = shared("osm_osmnx_fixtures/West-Oakland.osm.bz2")
    store_dir = tmp_path / "s"
    bad = CliRunner().invoke(
        app, ["import-osm", str(good), "--store", str(store_dir), "--layers", "roads,trams"]
    )
    assert bad.exit_code != 0 and "unknown OSM layer(s) ['trams']" in bad.stderr
    assert not store_dir.exists()
    ok = CliRunner().invoke(
        app, ["import-osm", str(good), "--store", str(store_dir), "--layers", "parks"]
    )
    assert ok.exit_code == 0, ok.output
    db = GeoPackageStore(store_dir, create=False)
    try:
        assert set(db.layers(Access.RESTRICTED)) == {"parks"}
        assert not (store_dir / "graphs").exists()
    finally:
        db.close()
