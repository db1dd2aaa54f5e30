"""`GET /search` on the demo district: what it finds is what a plain scan of the same texts
finds (pandas, another way), best first; streets come back whole; the index follows changes;
callers never find what they may not see; bad parameters are 4xx JSON."""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from fastapi.testclient import TestClient

from layers.layer import Layer
from layers.models import Access
from layers.schemas import LIGHTS, PARKS
from tests.twin.query_fixtures import demo_store_fixture, query_app  # noqa: F401  (fixture)
from tests.twin.serve_fixtures import fill_store, make_layer, secret_layer, write_key
from twin import search


@pytest.fixture(scope="module")
def client(demo_store: Path):
    with TestClient(query_app(demo_store, scope="restricted")) as c:
        yield c


@pytest.fixture(scope="module")
def layers(client) -> dict[str, Layer]:
    """The layers the app serves (the store as loaded)."""
    return client.app.state.catalog.layers(Access.RESTRICTED)


def scan(layer: Layer, prefix: str) -> set[str]:
    """Ids of the features whose id or a searched text (or a word of one) starts with
    `prefix`, by a plain pandas scan."""
    texts = [pd.Series(layer.ids, dtype=object)]
    texts += [layer.attrs[c].astype(object) for c in search.searched_columns(layer)]
    hit = np.zeros(len(layer), dtype=bool)
    for s in texts:
        norm = s.map(
            lambda v: unicodedata.normalize("NFKC", v).casefold() if isinstance(v, str) else ""
        )
        words = norm.str.split(search._SPLIT, regex=True)
        hit |= norm.str.startswith(prefix).to_numpy(bool)
        hit |= words.map(lambda ws: any(w.startswith(prefix) for w in ws)).to_numpy(bool)
    return set(layer.ids[hit].tolist())


def test_a_street_is_found_by_its_name_and_comes_back_whole(client, layers):
    roads = layers["roads"]
    names = roads.attrs["name"].astype(object)
    # A street that is part of several segments' names ("凤凰街;丰收路").
    parts = names.dropna().str.split(";").explode()
    street = parts.value_counts().index[0]
    on_it = names.map(lambda n: isinstance(n, str) and street in n.split(";")).to_numpy(bool)
    assert on_it.sum() > 1
    r = client.get("/search", params={"q": street})
    assert r.status_code == 200, r.text
    first = r.json()["features"][0]
    assert (first["collection"], first["label"]) == ("roads", street)
    assert first["properties"]["features"] == on_it.sum()
    assert first["id"] in set(roads.ids[on_it].tolist())
    expected = shapely.bounds(shapely.union_all(roads.geometry[on_it])).tolist()
    assert first["bbox"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("prefix", ["W00001", "v000002", "PK00", "JX-001-0", "4201150010"])
def test_prefix_hits_are_those_a_plain_scan_finds(client, layers, prefix):
    norm = search.normalise(prefix)
    expected = {(n, fid) for n, lyr in layers.items() for fid in scan(lyr, norm)}
    assert expected, prefix
    got = client.get("/search", params={"q": prefix, "limit": 100}).json()["features"]
    found = {(h["collection"], h["id"]) for h in got}
    assert found <= expected
    assert len(got) == min(100, len(expected))
    for h in got:
        row = layers[h["collection"]].row(h["id"])
        box = shapely.bounds(layers[h["collection"]].geometry[row]).tolist()
        assert h["bbox"] == pytest.approx(box)


def test_an_exact_id_comes_first_and_case_and_width_do_not_matter(client, layers):
    fid = str(layers["pipes"].ids[41])
    own = str(layers["pipes"].attrs["pipe_id"].iloc[41])  # e.g. W0000042
    full_width = (
        unicodedata.normalize("NFKC", own)
        .lower()
        .translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)})
    )
    for q in (fid, own, own.lower(), full_width):
        hits = client.get("/search", params={"q": q}).json()["features"]
        assert (hits[0]["collection"], hits[0]["id"]) == ("pipes", fid), q
        assert hits[0]["properties"]["rank"] in (0, 2)


def test_chinese_names_are_found_by_any_part(client, layers):
    parks = layers["parks"]
    row = int(np.argmax(parks.attrs["name"].str.len().fillna(0).to_numpy()))
    name = str(parks.attrs["name"].iloc[row])
    middle = name[2:5]
    hits = client.get("/search", params={"q": middle, "limit": 100}).json()["features"]
    expected = {
        fid for fid, n in zip(parks.ids, parks.attrs["name"], strict=True) if middle in str(n)
    }
    assert expected <= {h["id"] for h in hits if h["collection"] == "parks"}


def test_several_words_must_all_match(client, layers):
    grids = layers["grids"]
    row = int(np.flatnonzero(grids.attrs["level"].to_numpy(dtype=object) == "street")[0])
    name, unit = grids.attrs["name"].iloc[row], grids.attrs["responsible_unit"].iloc[row]
    hits = client.get("/search", params={"q": f"{name[:2]} {unit[-3:]}"}).json()["features"]
    assert grids.ids[row] in {h["id"] for h in hits}


def test_collections_narrow_the_search(client):
    hits = client.get("/search", params={"q": "jiangxia", "collections": "valves,parks"})
    assert {h["collection"] for h in hits.json()["features"]} <= {"valves", "parks"}
    assert hits.json()["numberReturned"] == 10


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "InvalidParameter"),
        ({"q": ""}, 400, "InvalidParameter"),
        ({"q": " \t "}, 400, "InvalidParameter"),
        ({"q": "x" * 201}, 400, "InvalidParameter"),
        ({"q": " ".join("abcdefghij")}, 400, "InvalidParameter"),
        ({"q": "W0", "limit": "0"}, 400, "InvalidParameter"),
        ({"q": "W0", "limit": "ten"}, 400, "InvalidParameter"),
        ({"q": "W0", "collections": ","}, 400, "InvalidParameter"),
        ({"q": "W0", "collections": "pipes,nope"}, 404, "UnknownCollection"),
    ],
)
def test_bad_parameters_are_clear_4xx(client, params, status, code):
    r = client.get("/search", params=params)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert r.json()["description"]


def test_punctuation_alone_finds_nothing_and_is_no_error(client):
    r = client.get("/search", params={"q": ";;-"})
    assert r.status_code == 200 and r.json()["features"] == []


def test_a_large_limit_is_clamped(client):
    r = client.get("/search", params={"q": "jiangxia", "limit": 100000})
    assert r.status_code == 200 and r.json()["numberReturned"] == 100


def test_the_api_document_describes_search(client):
    op = client.get("/api").json()["paths"]["/search"]["get"]
    names = {p["name"]: p for p in op["parameters"]}
    assert {"q", "limit", "collections"} <= set(names)
    assert names["q"]["required"] is True


def test_nobody_finds_what_they_may_not_see(tmp_path: Path):
    store = fill_store(tmp_path / "store", [secret_layer()])
    with TestClient(query_app(store, scope="public")) as public:
        assert public.get("/search", params={"q": "k1"}).json()["features"] == []
        r = public.get("/search", params={"q": "k1", "collections": "secret_valves"})
        assert r.status_code == 404
    with TestClient(query_app(store, scope="restricted")) as engineer:
        hits = engineer.get("/search", params={"q": "k1"}).json()["features"]
        assert [(h["collection"], h["id"]) for h in hits] == [("secret_valves", "k1")]


def _entries(index: search.SearchIndex) -> list[set]:
    return [
        set(zip(s.keys.tolist(), s.rows.tolist(), strict=True)) for s in (index.whole, index.words)
    ]


def test_the_index_follows_in_place_changes(layers):
    parks = layers["parks"]
    before = search.index_of(parks)
    # A change of a text nobody searches keeps the index as it is.
    rows = np.array([0, 3])
    now = parks.take(rows)
    now.attrs["kind"] = ["garden", "garden"]
    kept = parks.patched(now)
    assert kept.origin is not None
    assert search.index_of(kept) is before
    # A renamed park: the index is patched, and is what a fresh build makes.
    now = parks.take(rows)
    now.attrs["name"] = now.attrs["name"].astype(object).map(lambda n: f"{n}改名ABC")
    renamed = parks.patched(now)
    patched = search.index_of(renamed)
    assert _entries(patched) == _entries(search.SearchIndex.build(renamed))
    assert {h.id for h in search.search({"parks": renamed}, "改名abc", 10)} == set(
        parks.ids[rows].tolist()
    )
    # Renamed to names held already: the entries of one key stay in row order, as a fresh
    # build (and the store's table of keys) has them, whatever the order of the changes.
    now = parks.take([5, 1])
    now.attrs["name"] = parks.attrs["name"].iloc[[0, 4]].to_numpy()
    twice = renamed.patched(now)
    for kept, fresh in zip(
        (search.index_of(twice).whole, search.index_of(twice).words),
        (search.SearchIndex.build(twice).whole, search.SearchIndex.build(twice).words),
        strict=True,
    ):
        assert kept.keys.tolist() == fresh.keys.tolist()
        assert kept.rows.tolist() == fresh.rows.tolist()


def test_an_edit_is_found_once_served(tmp_path: Path):
    park = make_layer(
        PARKS,
        [shapely.box(114.30, 30.35, 114.301, 30.351)],
        ["p1"],
        name=["荷花公园"],
    )
    lamp = make_layer(LIGHTS, shapely.points([[114.3, 30.35]]), ["L1"], status=["on"])
    store = fill_store(tmp_path / "store", [park, lamp])
    with TestClient(query_app(store, scope="restricted"), headers=write_key(store)) as c:
        assert [h["id"] for h in c.get("/search?q=荷花").json()["features"]] == ["p1"]
        r = c.patch("/collections/parks/items/p1", json={"properties": {"name": "睡莲公园"}})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10  # a guard against a hang, not a speed test
        while c.get("/search?q=睡莲").json()["features"] == []:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.get("/search?q=荷花").json()["features"] == []
