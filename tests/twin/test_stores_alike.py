"""The API answers alike over either store: the same district written into a GeoPackage
directory and into a PostgreSQL + PostGIS database, served by two apps, walked route by route
(every GET path of the OpenAPI document, enumerated, and the lean paths) as an anonymous caller
and as an admin under the same policy: the same status and the same body (times of writing,
which differ by nature, set aside), tiles byte for byte."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from layers.keys import KeyRing
from layers.settings import StoreSettings, open_store
from tiles.grid import TMS

from .serve_fixtures import app_for
from .test_policy import C1, POLICY, body_text, district, walk

pytestmark = [pytest.mark.postgis, pytest.mark.xdist_group("postgis")]

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)")


def create_database(what: str) -> tuple[str, str]:
    """A new database on the local server: its name and URL (drop it with `drop_database`)."""
    import psycopg

    name = f"twin_{what}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def copy_into(directory: Path, url: str) -> None:
    """The layers of the directory store `directory`, in the same order, into the database."""
    from importers.transfer import copy_store

    source = open_store(StoreSettings(store=directory), create=False)
    target = open_store(StoreSettings(store=url))
    try:
        copy_store(source, target, user="tests")
    finally:
        source.close()
        target.close()


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A new PostGIS database on the local server, dropped afterwards."""
    import psycopg

    name, url = create_database("alike")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    try:
        yield url
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def twins(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    where = tmp_path_factory.mktemp("alike")
    directory = district(where / "store")
    copy_into(directory, database)
    policy = where / "policy.toml"
    policy.write_text(POLICY)
    ring = KeyRing(where / "access.sqlite")
    _, secret = ring.add("admin", "admin")
    with (
        TestClient(
            app_for(directory, policy=policy, keys_file=where / "access.sqlite"),
            raise_server_exceptions=False,
        ) as gpkg,
        TestClient(
            app_for(database, policy=policy, keys_file=where / "access.sqlite"),
            raise_server_exceptions=False,
        ) as pg,
    ):
        clients = {"gpkg": gpkg, "postgis": pg}
        yield {"clients": clients, "admin": {"Authorization": f"Bearer {secret}"}}


def _everything() -> Any:
    from layers.models import Access

    return Access.RESTRICTED


def _plain(text: str) -> str:
    """An answer with the instants of writing (which differ between two stores written a
    moment apart) set aside."""
    return STAMP.sub("<time>", text)


@pytest.mark.parametrize("who", ["anonymous", "admin"])
def test_every_route_answers_alike_over_both_stores(twins, who: str) -> None:
    headers = twins["admin"] if who == "admin" else {}
    answers = {kind: walk(client, headers) for kind, client in twins["clients"].items()}
    assert len(answers["gpkg"]) == len(answers["postgis"]) > 200
    differ = []
    for (url, _, a), (url_b, _, b) in zip(answers["gpkg"], answers["postgis"], strict=True):
        assert url == url_b
        assert a.status_code < 500 and b.status_code < 500, (url, a.status_code, b.status_code)
        if url == "/metrics":  # latencies and counts of this process: its own by nature
            continue
        ta, tb = _plain(body_text(a)), _plain(body_text(b))
        if a.status_code != b.status_code or ta != tb:
            at = next(
                (i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y),
                min(len(ta), len(tb)),
            )
            lo = max(0, at - 120)
            differ.append((url, a.status_code, b.status_code, ta[lo : at + 120], tb[lo : at + 120]))
    assert not differ, (len(differ), [d[0] for d in differ], differ[:3])


def test_a_server_on_postgis_reads_windows_not_whole_layers(twins) -> None:
    """Tiles, near / at / intersects queries, items in a box, single features and every
    collection document read the store by window: no layer is read whole, so the server's
    memory does not grow with the data. What still needs a whole layer (a search) reads one
    into a cache of one."""
    client = twins["clients"]["postgis"]
    headers = twins["admin"]
    catalog = client.app.state.catalog
    assert not catalog.holds
    loads: list[str] = []
    store = catalog.store
    real_load = store.load
    store.load = lambda name, scope: loads.append(name) or real_load(name, scope)
    catalog._whole.clear()
    try:
        urls = ["/healthz", "/collections", "/collections/pipes", "/style.json"]
        urls.append("/tiles/WebMercatorQuad")
        urls += ["/tiles/WebMercatorQuad/tilejson.json", "/collections/pipes/queryables"]
        for z in (14, 15, 16):
            x, y = TMS.tile(*C1, z)[:2]
            urls.append(f"/tiles/WebMercatorQuad/{z}/{y}/{x}")
            urls.append(f"/collections/pipes/tiles/WebMercatorQuad/{z}/{y}/{x}")
        urls += [
            "/query/near?lon=114.295&lat=30.494&radius=300",
            "/query/at?lon=114.295&lat=30.494",
            "/collections/pipes/items?bbox=114.29,30.49,114.30,30.50",
            "/collections/lights/items?bbox=114.29,30.49,114.31,30.50&limit=1",
            "/collections/pipes/items?limit=2&offset=1",
            "/collections/pipes/items",
            "/collections/pipes/items?filter=diameter_mm>100&limit=1&offset=1",
            "/collections/pipes/items?network=water",
            "/collections/sites/items?datetime=2026-01-01T00:00:00Z/..",
        ]
        ids = client.get("/collections/pipes/items?bbox=114.2,30.4,114.4,30.6", headers=headers)
        fid = ids.json()["features"][0]["id"]
        urls += [
            f"/collections/pipes/items/{fid}",
            f"/query/buffer?collection=pipes&id={fid}&distance=50",
        ]
        answered = {}
        for u in urls:
            answered[u] = client.get(u, headers=headers)
        assert all(r.status_code in (200, 204) for r in answered.values()), {
            u: (r.status_code, r.text[:200]) for u, r in answered.items() if r.status_code >= 300
        }
        assert all(r.status_code == 200 for r in answered.values())
        assert loads == [] and not catalog._whole
        # A filter over a whole layer reads it a chunk at a time: the same answers as the
        # layer held, whatever the chunk size.
        catalog.chunk_size = 1
        for url in [u for u in urls if "/items?" in u and "bbox" not in u]:
            again = client.get(url, headers=headers)
            assert _plain(again.text) == _plain(answered[url].text), url
        catalog.chunk_size = 50_000
        # Statistics per cell read the (small) grid whole and the layers a chunk at a time:
        # the same numbers as the layers held, also added up over one-feature chunks.
        catalog.chunk_size = 1
        held = twins["clients"]["gpkg"]
        for q in [
            "level=cell",
            "level=district&collections=pipes",
            "level=street&filter=network='water'",
        ]:
            got = client.get(f"/query/stats?{q}", headers=headers)
            assert (
                got.status_code == 200
                and got.text == held.get(f"/query/stats?{q}", headers=headers).text
            )
        # A filter the store can say in SQL: only the features it selects are read.
        read: list[int] = []
        real_chunks = store.chunks
        store.chunks = lambda *a, **k: (read.append(len(c)) or c for c in real_chunks(*a, **k))
        try:
            water = client.get(
                "/query/stats?level=district&collections=pipes&filter=network='water'",
                headers=headers,
            )
        finally:
            store.chunks = real_chunks
        pipes = held.get("/collections/pipes/items?network=water&limit=1", headers=headers)
        assert water.status_code == 200 and sum(read) == pipes.json()["numberMatched"] > 0
        catalog.chunk_size = 50_000
        assert set(loads) == {"grids"}
        loads.clear()
        catalog._whole.clear()
        # A search reads the store's keys and the features it found: no layer whole...
        search = client.get("/search?q=W", headers=headers)
        assert search.status_code == 200 and search.json()["features"]
        assert search.text == held.get("/search?q=W", headers=headers).text
        assert loads == [] and not catalog._whole
        # ...but for a caller whose view hides rows of a layer (the policy's row rules of
        # pipes and valves, its area rule of lights), that layer: which rows the caller sees
        # is worked out over the whole layer (and the grid, whose cells the area rule names).
        search = client.get("/search?q=W")
        assert search.status_code == 200 and search.text == held.get("/search?q=W").text
        assert sorted(loads) == ["grids", "lights", "pipes", "valves"]
        assert len(catalog._whole) <= catalog._keep == 2
    finally:
        store.load = real_load
    intersects = client.post(
        "/query/intersects",
        json={"geometry": {"type": "Point", "coordinates": [114.295, 30.494]}, "buffer_m": 100},
        headers=headers,
    )
    assert intersects.status_code == 200


def test_a_store_url_names_the_database_in_settings(database: str) -> None:
    assert str(StoreSettings(store=database).store) == database
    assert isinstance(StoreSettings(store="twin-data").store, Path)


def test_the_command_line_works_on_a_database_store(tmp_path, monkeypatch) -> None:
    import json

    import geopandas as gpd
    import shapely
    from typer.testing import CliRunner

    from twin.cli import app as cli

    name, url = create_database("cli")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # nothing may land there
    monkeypatch.chdir(tmp_path)
    lamps = tmp_path / "lamps.geojson"
    gpd.GeoDataFrame(
        {"POLEID": ["P1", "P2", "P3"], "WATTS": [70, 100, 150]},
        geometry=[shapely.Point(114.32 + i * 0.001, 30.35) for i in range(3)],
        crs="EPSG:4326",
    ).to_file(lamps, driver="GeoJSON")
    runner = CliRunner()
    try:
        r = runner.invoke(cli, ["layers", "--store", url])
        assert r.exit_code == 1 and "twin migrate" in r.output, r.output  # not made yet
        r = runner.invoke(cli, ["migrate", "--store", url])
        assert r.exit_code == 0 and "schema version" in r.output, r.output
        r = runner.invoke(cli, ["--store", url, "import", "lights", str(lamps)])
        assert r.exit_code == 0, r.output
        r = runner.invoke(cli, ["layers", "--json"], env={"TWIN_STORE": url})
        assert r.exit_code == 0, r.output
        assert [(x["name"], x["features"]) for x in json.loads(r.stdout)] == [("lights", 3)]
        r = runner.invoke(cli, ["keys", "add", "crew", "--role", "engineer", "--store", url])
        assert r.exit_code == 0, r.output
        from layers.keys_pg import DatabaseKeyRing

        ring = DatabaseKeyRing(url)  # the keys live in the database, for every server
        assert [k.name for k in ring.keys()] == ["crew"]  # noqa: SIM118  (no mapping)
        assert ring.find(r.stdout.strip().splitlines()[-1]) is not None
        ring.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["lamps.geojson"]
    finally:
        drop_database(name)


def test_two_servers_on_one_database_serve_each_others_edits(tmp_path, monkeypatch) -> None:
    """Two `twin serve` processes on one PostGIS database: an edit through one is in the
    other's items, tiles and event stream within a second or two, no restart — told by the
    database (LISTEN/NOTIFY): the servers here look at the log by themselves only every 60 s."""
    import http.client
    import json
    import threading

    import mapbox_vector_tile

    from .test_policy import TILE, Z
    from .worker_fixtures import serving

    name, url = create_database("two")
    try:
        directory = district(tmp_path / "store")
        copy_into(directory, url)
        monkeypatch.setenv("TWIN_FOLLOW_INTERVAL_S", "60")
        from layers.keys_pg import DatabaseKeyRing

        ring = DatabaseKeyRing(url)  # the servers' key ring: the database's own
        _, secret = ring.add("crew", "engineer")
        with (
            serving(url, 1, tmp_path / "a.log") as a,  # type: ignore[arg-type]
            serving(url, 1, tmp_path / "b.log") as b,  # type: ignore[arg-type]
        ):
            events: list[dict] = []
            opened = threading.Event()

            def listen() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=30)
                conn.request("GET", "/events?collections=lights")
                r = conn.getresponse()
                opened.set()
                while True:
                    line = r.fp.readline()
                    if not line:
                        return
                    if line.startswith(b"data:"):
                        events.append(json.loads(line[5:]))
                        return

            threading.Thread(target=listen, daemon=True).start()
            assert opened.wait(10)
            edit = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
            edit.request(
                "PATCH",
                "/collections/lights/items/light-1",
                json.dumps({"properties": {"status": "fault"}}),
                {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"},
            )
            answer = edit.getresponse()
            assert answer.status == 200, answer.read()
            answer.read()
            done = time.monotonic()
            other = http.client.HTTPConnection("127.0.0.1", b.port, timeout=30)
            seen = None
            while time.monotonic() - done < 2.0:
                other.request("GET", "/collections/lights/items/light-1")
                got = json.loads(other.getresponse().read())
                if got["properties"]["status"] == "fault":
                    seen = time.monotonic() - done
                    break
                time.sleep(0.02)
            assert seen is not None, "the other server never served the edit"
            path = f"/collections/lights/tiles/WebMercatorQuad/{Z}/{TILE.y}/{TILE.x}"
            deadline = time.monotonic() + 3.0  # a changed tile is drawn anew within a second
            status = None
            while time.monotonic() < deadline:
                other.request("GET", path, headers={"Accept-Encoding": "identity"})
                tile = mapbox_vector_tile.decode(other.getresponse().read())
                lamps = {f["properties"]["id"]: f for f in tile["lights"]["features"]}
                status = lamps["light-1"]["properties"]["status"]
                if status == "fault":
                    break
                time.sleep(0.1)
            assert status == "fault"
            deadline = time.monotonic() + 2.0
            while not events and time.monotonic() < deadline:
                time.sleep(0.02)
            assert events and events[0]["id"] == "light-1", events
            assert events[0]["properties"] == ["status"]
            # A key revoked in one place is refused by both servers.
            keyed = {"Authorization": f"Bearer {secret}"}
            for port in (a.port, b.port):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                c.request("GET", "/collections/lights/items?limit=1", headers=keyed)
                assert c.getresponse().status == 200
            assert ring.revoke("crew")
            time.sleep(0.3)  # the notification's way to each server
            for port in (a.port, b.port):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                c.request("GET", "/collections/lights/items?limit=1", headers=keyed)
                assert c.getresponse().status == 401, port
            ring.close()
    finally:
        drop_database(name)


def test_a_whole_twin_moves_to_the_database_and_back(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from twin.cli import app as cli

    name, url = create_database("move")
    runner = CliRunner()
    try:
        directory = district(tmp_path / "store")
        r = runner.invoke(cli, ["export-store", url, "--store", str(directory)])
        assert r.exit_code == 0, r.output
        assert "copied 6 layers (15 features)" in r.output
        back = tmp_path / "back"
        r = runner.invoke(cli, ["import-store", url, "--store", str(back)])
        assert r.exit_code == 0, r.output

        def listing(store: str) -> list[tuple]:
            out = runner.invoke(cli, ["layers", "--json", "--store", store])
            assert out.exit_code == 0, out.output
            return [
                (x["name"], x["features"], x["classification"], x["bounds"])
                for x in json.loads(out.stdout)
            ]

        first = listing(str(directory))
        assert listing(url) == first == listing(str(back))
        assert [x[:3] for x in first if x[0] == "substations"] == [("substations", 2, "restricted")]
        # The same features, field by field, sources kept.
        for store in (url, str(back)):
            a = open_store(StoreSettings(store=directory), create=False)
            b = open_store(StoreSettings(store=store if "://" in store else Path(store)))
            for layer in a.layers(_everything()):
                x, y = a.load(layer, _everything()), b.load(layer, _everything())
                assert list(x.ids) == list(y.ids)
                cols = [f.name for f in x.schema.fields] + ["source"]
                assert x.attrs[cols].equals(y.attrs[cols]), layer
                assert all(g.equals(h) for g, h in zip(x.geometry, y.geometry, strict=True))
            a.close()
            b.close()
        r = runner.invoke(cli, ["export-store", str(directory), "--store", str(directory)])
        assert r.exit_code == 1 and "same store" in r.output
    finally:
        drop_database(name)


def test_a_database_gone_mid_service_is_a_503_and_the_server_recovers(tmp_path) -> None:
    """The database's connections killed and new ones refused: a request that needs the
    store is answered 503 with a JSON error (never a 500); once the database is back, the same
    request is answered by itself, no restart."""
    import psycopg

    name, url = create_database("gone")
    try:
        directory = district(tmp_path / "store")
        copy_into(directory, url)
        history = "/collections/lights/items/light-1/history"  # read from the store itself
        with TestClient(
            app_for(url, keys_file=tmp_path / "access.sqlite"), raise_server_exceptions=False
        ) as c:
            assert c.get(history).status_code == 200
            with psycopg.connect(ADMIN, autocommit=True) as db:
                db.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            # The server holds no layer: items, tiles and queries read the database too (the
            # lights, read whole for the history, are kept a while).
            tile = "/collections/pipes/tiles/WebMercatorQuad/16/26934/53574"
            near = "/query/near?lon=114.3&lat=30.49&radius=500"
            paths = [history, "/collections/pipes/items", tile, near]
            for path in paths:
                r = c.get(path)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["code"] == "StoreError" and name in r.json()["description"]
            with psycopg.connect(ADMIN, autocommit=True) as db:
                db.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            deadline = time.monotonic() + 30
            while (status := c.get(history).status_code) != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert status == 200
            assert [c.get(p).status_code for p in paths] == [200, 200, 200, 200]
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as db:
            db.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_osm_import_into_the_database_keeps_its_road_graph(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from importers.osm import load_road_graph
    from tests.conftest import shared
    from twin.cli import app as cli

    extract = shared("osm_osmnx_fixtures/West-Oakland.osm.bz2")
    name, url = create_database("osm")
    monkeypatch.setenv("TWIN_RASTER_DIR", str(tmp_path / "files"))
    try:
        r = CliRunner().invoke(cli, ["import-osm", str(extract), "--store", url])
        assert r.exit_code == 0, r.output
        store = open_store(StoreSettings(store=url), create=False)
        try:
            roads = store.load("roads", _everything())
            meta = store.layers(_everything())["roads"].meta
            graph = load_road_graph(store)
            kept = store.files("roads")
        finally:
            store.close()
        assert meta["graph"] == "graphs/West-Oakland.graphml"
        assert graph is not None
        assert {d["road_id"] for _, _, d in graph.edges(data=True)} == set(roads.ids)
        # Kept in the database with the roads, not as a file beside it.
        assert list(kept) == ["graphs/West-Oakland.graphml"]
        assert not (tmp_path / "files").exists() or not any((tmp_path / "files").rglob("*"))
    finally:
        drop_database(name)
