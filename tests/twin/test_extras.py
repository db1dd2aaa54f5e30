"""Every source attribute is kept: real files imported with `twin import`, served by the app,
compared column by column with the file as pyogrio reads it (issue 9, section 1)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import geopandas as gpd
import mapbox_vector_tile
import pandas as pd
import pyogrio
import pytest
import shapely
from fastapi.testclient import TestClient
from pmtiles.reader import MmapSource, Reader
from typer.testing import CliRunner

from layers.gpkg import GeoPackageStore
from layers.models import Access, FieldType, LayerSchema
from layers.settings import StoreSettings
from tests.conftest import shared
from tests.twin.serve_fixtures import app_for
from tiles.settings import TileSettings
from twin.app import create_app
from twin.cli import app as cli
from twin.settings import ServerSettings

runner = CliRunner()

LIGHTS = "cambridge_ma/INFRA_StreetLights.geojson"
HYDRANTS = "cambridge_ma/INFRA_Hydrants.geojson"
PARCELS = "cambridge_ma/ASSESSING_ParcelMapIndexFY2026.geojson"
WUHAN = "wuhan_districts_hgwr/wuhan.geojson"
TORONTO = "canada_sewers/toronto/mains.geojson"

MANHOLE_SCHEMA = """\
name = "manholes"
title = "Manholes"
geometry = "point"
[fields]
depth_m = { type = "float", aliases = ["DEPTH"] }
"""


def twin(*args: str | Path) -> dict[str, Any]:
    """Run `twin import ... --json` and return its report."""
    result = runner.invoke(cli, [str(a) for a in (*args, "--json")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def read_source(path: Path, encoding: str | None = None) -> pd.DataFrame:
    """The file as pyogrio reads it; the Wuhan file by the data README's recipe."""
    if path.name == "wuhan.geojson":
        df = pyogrio.read_dataframe(path, encoding="latin1")
        for c in df.columns:
            if c != "geometry" and pd.api.types.is_string_dtype(df[c].dtype):
                df[c] = df[c].str.encode("latin1").str.decode("utf-8")
        return df
    return pyogrio.read_dataframe(path, encoding=encoding)


def gbk_manholes(tmp_path: Path) -> Path:
    """A GBK shapefile of manholes with Chinese labels, with no .cpg and no code page."""
    path = tmp_path / "manholes.shp"
    gpd.GeoDataFrame(
        {
            "MH_ID": ["YS001", "YS002", "WS003", "WS004"],
            "ROAD": ["文化大道", "江夏大道", "纸坊大街", None],
            "LABEL": ["雨水检查井", "雨水检查井", "污水检查井", "污水检查井"],
            "DEPTH": [2.5, 3.1, None, 1.8],
            "LIDS": [1, 2, 2, 1],
        },
        geometry=shapely.points(
            [(114.32, 30.35), (114.33, 30.351), (114.34, 30.352), (114.35, 30.353)]
        ),
        crs="EPSG:4326",
    ).to_file(path, encoding="gbk")
    path.with_suffix(".cpg").unlink(missing_ok=True)
    with open(path.with_suffix(".dbf"), "r+b") as f:
        f.seek(29)
        f.write(b"\x00")
    return path


def _raw(name: str) -> bytes:
    for codec in ("latin1", "cp1252"):
        try:
            return name.encode(codec)
        except UnicodeEncodeError:
            pass
    return name.encode("utf-8")


def items(client: TestClient, collection: str, **params: Any) -> list[dict]:
    """Every feature of `collection` (one page)."""
    r = client.get(f"/collections/{collection}/items", params={"limit": 10000, **params})
    assert r.status_code == 200, r.text
    return r.json()["features"]


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def same(source: Any, served: Any, ftype: FieldType) -> bool:
    """Whether a served value is the source value, modulo the extra's declared type."""
    if _missing(source):
        return served is None
    if ftype is FieldType.STRING:
        if isinstance(source, str):
            return served == source
        return served == (str(int(source)) if float(source).is_integer() else str(source))
    if ftype in (FieldType.INTEGER, FieldType.FLOAT):
        return isinstance(served, int | float) and math.isclose(
            float(served), float(source), rel_tol=1e-12
        )
    if ftype is FieldType.DATE:
        return served == pd.Timestamp(source).date().isoformat()
    if ftype is FieldType.DATETIME:
        return pd.Timestamp(served) == pd.Timestamp(source).tz_localize("UTC")
    if ftype is FieldType.BOOLEAN:
        return served == (source.lower() == "true" if isinstance(source, str) else bool(source))
    raise AssertionError(ftype)


CASES = [
    ("lights", LIGHTS, [], None),
    ("valves", HYDRANTS, ["--set", "kind=hydrant", "--set", "network=water"], None),
    ("grids", PARCELS, ["--set", "level=cell"], None),
    ("grids", WUHAN, ["--set", "level=district"], None),
    ("pipes", TORONTO, ["--source", "toronto-mains"], None),
    ("manholes", "GBK", ["--encoding", "gbk"], "gbk"),
]


@pytest.mark.parametrize(
    "collection, relative, args, encoding", CASES, ids=[c[1].split("/")[-1] for c in CASES]
)
def test_every_source_column_is_served_with_its_value(
    tmp_path, collection, relative, args, encoding
):
    if relative == "GBK":
        path = gbk_manholes(tmp_path)
        schema_file = tmp_path / "manholes.toml"
        schema_file.write_text(MANHOLE_SCHEMA, encoding="utf-8")
        args = [*args, "--schema", str(schema_file)]
    else:
        path = shared(relative)
    store = tmp_path / "store"
    report = twin("import", collection, path, "--store", store, *args)
    source = read_source(path, encoding)
    assert report["rejected"] == [] and report["imported"] == len(source)
    mapped = set(report["fields"].values())
    extras = report["extra_columns"]
    # The Wuhan file's garbled field name (bytes that are no UTF-8) is read as Latin-1 by
    # pyogrio and as Windows-1252 by the importer: the same bytes.
    same_bytes = {_raw(c): c for c in (*mapped, *extras)}
    source = source.rename(columns=lambda c: same_bytes.get(_raw(c), c))
    columns = [c for c in source.columns if c != "geometry"]
    # Every source column lands: in a schema field, or kept as an extra.
    assert set(columns) == mapped | set(extras), (columns, mapped, extras)
    assert report["dropped_columns"] == []
    db = GeoPackageStore(store, create=False)
    schema: LayerSchema = db.schema(collection, Access.RESTRICTED)
    db.close()
    types = {f.name: f.type for f in schema.extras}
    assert set(types) == set(extras.values())
    with TestClient(app_for(store)) as client:
        served = items(client, collection)
        queryables = client.get(f"/collections/{collection}/queryables").json()["properties"]
    assert len(served) == len(source)
    for name, ftype in types.items():
        want = {"string": "string", "integer": "integer", "float": "number", "boolean": "boolean"}
        assert queryables[name]["type"] == want.get(ftype.value, "string")
    for i, feature in enumerate(served):
        props = feature["properties"]
        for column, name in extras.items():
            value = source[column].iloc[i]
            assert same(value, props[name], types[name]), (i, column, value, props[name])
        for column in mapped:
            assert column in source.columns
    if relative == "GBK":  # a Chinese value through a CQL2 filter on an extra
        with TestClient(app_for(store)) as client:
            found = items(client, collection, filter="\"ROAD\" = '文化大道'")
        assert [f["properties"]["LABEL"] for f in found] == ["雨水检查井"]
    print(relative, f"{len(columns)} columns: {len(extras)} kept as extras")


def test_cambridge_lights_keep_street_owner_lamps_and_filters_match_pandas(tmp_path):
    path = shared(LIGHTS)
    store = tmp_path / "store"
    report = twin("import", "lights", path, "--store", store)
    assert {"StreetName", "Owner", "NumLamps", "Neighborhood"} <= set(report["extra_columns"])
    assert (
        "ignored"
        not in runner.invoke(cli, ["import", "lights", str(path), "--store", str(store)]).stdout
    )
    df = read_source(path)
    with TestClient(app_for(store)) as client:
        got = items(client, "lights", filter="NumLamps > 1")
        want = df[df["NumLamps"] > 1]
        assert len(want) > 0
        assert sorted(f["properties"]["PoleID"] for f in got) == sorted(want["PoleID"])
        got = items(client, "lights", filter="Owner = 'City' AND Neighborhood >= 5")
        want = df[(df["Owner"] == "City") & (df["Neighborhood"] >= 5)]
        assert len(got) == len(want) > 0
        got = items(client, "lights", StreetName="MASSACHUSETTS")
        assert len(got) == (df["StreetName"] == "MASSACHUSETTS").sum() > 0
        body = {
            "filter-lang": "cql2-json",
            "filter": json.dumps({"op": ">", "args": [{"property": "NumLamps"}, 1]}),
        }
        assert len(items(client, "lights", **body)) == (df["NumLamps"] > 1).sum()
        fid = items(client, "lights", limit=1)[0]["id"]
        one = client.get(f"/collections/lights/items/{fid}").json()["properties"]
        assert one["StreetName"] == df["StreetName"].iloc[0]
        lon, lat = shapely.get_coordinates(df.geometry.iloc[:1])[0]
        near = client.get(
            "/query/near", params={"lon": lon, "lat": lat, "radius": 5, "collections": "lights"}
        )
        assert near.status_code == 200, near.text
        props = [f["properties"] for f in near.json()["features"]]
        assert props and all("StreetName" in p for p in props)


def test_wuhan_districts_get_thirteen_distinct_names_without_map(tmp_path):
    store = tmp_path / "store"
    report = twin("import", "grids", shared(WUHAN), "--store", store, "--set", "level=district")
    assert report["fields"]["name"] == "NAME_1"
    assert report["extra_columns"]["NAME"] == "NAME_src"
    with TestClient(app_for(store)) as client:
        served = items(client, "grids")
    names = [f["properties"]["name"] for f in served]
    assert len(set(names)) == 13 and "江夏区" in names
    assert {f["properties"]["NAME_src"] for f in served} == {"武汉市"}


def test_reimport_without_a_column_keeps_the_earlier_values_and_drop_drops(tmp_path):
    src = read_source(shared(LIGHTS)).iloc[:300]
    full = tmp_path / "lights.geojson"
    src.to_file(full, driver="GeoJSON")
    store = tmp_path / "store"
    twin("import", "lights", full, "--store", store, "--source", "cam")
    # The later file lacks Owner, adds Ward, and loses its last 100 lights (--replace).
    later = src.drop(columns=["Owner"]).iloc[:200].assign(Ward=range(200))
    part = tmp_path / "later.geojson"
    later.to_file(part, driver="GeoJSON")
    report = twin(
        "import",
        "lights",
        part,
        "--store",
        store,
        "--source",
        "cam",
        "--replace",
        "--drop",
        "Lamp2",
    )
    assert report["removed"] == 100 and report["dropped_columns"] == ["Lamp2"]
    assert "Owner" not in report["extra_columns"] and "Ward" in report["extra_columns"]
    db = GeoPackageStore(store, create=False)
    layer = db.load("lights", Access.RESTRICTED)
    db.close()
    extras = {f.name: f.type for f in layer.schema.extras}
    assert extras["Owner"] is FieldType.STRING and extras["Ward"] is FieldType.INTEGER
    assert extras["Lamp2"] is FieldType.STRING  # dropped from this file; kept from the first
    with TestClient(app_for(store)) as client:
        served = {f["properties"]["PoleID"]: f["properties"] for f in items(client, "lights")}
    assert len(served) == 200
    for i, row in src.iloc[:200].reset_index(drop=True).iterrows():
        p = served[row["PoleID"]]
        assert same(row["Owner"], p["Owner"], FieldType.STRING)  # earlier value kept
        assert same(row["Lamp2"], p["Lamp2"], FieldType.STRING)
        assert p["Ward"] == i
    # --drop on a new layer leaves the column out altogether.
    twin("import", "lights", full, "--store", tmp_path / "s2", "--drop", "Owner", "--map", "Lamp2=")
    db = GeoPackageStore(tmp_path / "s2", create=False)
    names = {f.name for f in db.schema("lights", Access.RESTRICTED).extras}
    db.close()
    assert "Owner" not in names and "Lamp2" not in names and "StreetName" in names


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    """(z, x, y) of the tile holding a point."""
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return z, x, y


def test_tiles_carry_scalar_extras_and_the_setting_narrows_them(tmp_path):
    path = shared(LIGHTS)
    store = tmp_path / "store"
    twin("import", "lights", path, "--store", store)
    df = read_source(path)
    lon, lat = shapely.get_coordinates(df.geometry.iloc[:1])[0]
    z, x, y = tile_of(lon, lat, 16)
    url = f"/collections/lights/tiles/WebMercatorQuad/{z}/{y}/{x}"

    fields: dict[str, set[str]] = {}

    def decode(settings: TileSettings) -> list[dict]:
        app = create_app(
            ServerSettings(_env_file=None),  # type: ignore[call-arg]
            StoreSettings(_env_file=None, store=store),  # type: ignore[call-arg]
            tile_settings=settings,
        )
        with TestClient(app) as client:
            r = client.get(url)
            assert r.status_code == 200, r.text
            layers = mapbox_vector_tile.decode(r.content, default_options={"y_coord_down": True})
            tj = client.get("/collections/lights/tiles/WebMercatorQuad/tilejson.json").json()
        fields[repr(settings.properties)] = set(tj["vector_layers"][0]["fields"])
        return [f["properties"] for f in layers["lights"]["features"]]

    full = decode(TileSettings(_env_file=None))  # type: ignore[call-arg]
    first = next(p for p in full if p["id"] == "INFRA_StreetLights:" + df["PoleID"].iloc[0])
    assert first["StreetName"] == df["StreetName"].iloc[0]
    assert first["NumLamps"] == df["NumLamps"].iloc[0]
    assert first["Owner"] == df["Owner"].iloc[0]
    narrow = decode(
        TileSettings(_env_file=None, properties={"lights": ["status", "lamp_type"]})  # type: ignore[call-arg]
    )
    assert len(narrow) == len(full)
    assert set().union(*(p.keys() for p in narrow)) <= {"id", "status", "lamp_type"}
    assert any("lamp_type" in p for p in narrow)
    # TileJSON announces what the tiles carry.
    wide, lean = fields.values()
    assert {"StreetName", "Owner", "NumLamps"} <= wide
    assert lean == {"id", "status", "lamp_type", "point_count"}


def test_exports_and_pmtiles_carry_the_extras(tmp_path):
    path = shared(LIGHTS)
    store = tmp_path / "store"
    twin("import", "lights", path, "--store", store)
    df = read_source(path)
    out = tmp_path / "lights.gpkg"
    result = runner.invoke(cli, ["export", "lights", str(out), "--store", str(store)])
    assert result.exit_code == 0, result.output
    exported = pyogrio.read_dataframe(out)
    assert len(exported) == len(df)
    for column in ("StreetName", "Owner", "NumLamps", "Neighborhood"):
        for a, b in zip(df[column].tolist(), exported[column].tolist(), strict=True):
            assert same(
                a,
                None if _missing(b) else b,
                FieldType.STRING if isinstance(a, str) else FieldType.FLOAT,
            )
    archive = tmp_path / "lights.pmtiles"
    result = runner.invoke(
        cli,
        [
            "tiles",
            "export",
            str(archive),
            "--store",
            str(store),
            "--minzoom",
            "16",
            "--maxzoom",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    lon, lat = shapely.get_coordinates(df.geometry.iloc[:1])[0]
    z, x, y = tile_of(lon, lat, 16)
    with open(archive, "rb") as f:
        raw = Reader(MmapSource(f)).get(z, x, y)
    layers = mapbox_vector_tile.decode(gzip.decompress(raw))
    props = [f["properties"] for f in layers["lights"]["features"]]
    first = next(p for p in props if p["id"] == "INFRA_StreetLights:" + df["PoleID"].iloc[0])
    assert first["StreetName"] == df["StreetName"].iloc[0] and first["Owner"] == df["Owner"].iloc[0]
