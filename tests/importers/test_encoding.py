"""Text encodings: .cpg, --encoding, undeclared GBK, GBK/UTF-8 mix-ups, Latin-1 mojibake."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

from importers.encoding import decode_bytes, undo_latin1_mojibake
from tests.conftest import shared
from tests.importers.conftest import by_id, load, max_distance_m, run_import

# Known points in Wuhan (WGS84) and their district names.
DISTRICTS = {
    "江夏区": (114.3216, 30.3750),
    "硚口区": (114.2148, 30.5822),
    "武昌区": (114.3163, 30.5538),
    "东西湖区": (114.1371, 30.6198),
}
WUHAN_DISTRICTS = {
    "黄陂区", "新洲区", "江岸区", "江汉区", "硚口区", "汉阳区", "武昌区",
    "青山区", "洪山区", "东西湖区", "蔡甸区", "汉南区", "江夏区",
}  # fmt: skip


def square(p: tuple[float, float], r: float = 0.001) -> shapely.Polygon:
    return shapely.box(p[0] - r, p[1] - r, p[0] + r, p[1] + r)


def write_dbf_bytes(path: Path, names: list[bytes], *, crs: str = "EPSG:4326") -> None:
    """A shapefile of small squares round known points whose NAME values are exactly `names`
    (raw bytes), with no .cpg."""
    pts = list(DISTRICTS.values())[: len(names)]
    gpd.GeoDataFrame(
        {
            "GRID_ID": [f"D{i}" for i in range(len(names))],
            "NAME": [b.decode("latin-1") for b in names],
        },
        geometry=[square(p) for p in pts],
        crs=crs,
    ).to_file(path, encoding="ISO-8859-1")
    path.with_suffix(".cpg").unlink(missing_ok=True)
    with open(path.with_suffix(".dbf"), "r+b") as f:  # no code page in the header either
        f.seek(29)
        f.write(b"\x00")


def import_names(store, path: Path, **options) -> dict[str, str]:
    report = run_import(store, "grids", path, **options)
    assert report.added == report.read
    return {k.split(":")[1]: v for k, v in by_id(load(store, "grids"), "name").items()}


def test_gbk_shapefile_without_cpg_lands_with_its_chinese_intact(store, tmp_path):
    path = tmp_path / "districts.shp"
    names = list(DISTRICTS)
    write_dbf_bytes(path, [n.encode("gbk") for n in names], crs="EPSG:4490")
    assert not path.with_suffix(".cpg").exists()
    naive = pyogrio.read_dataframe(path)["NAME"].tolist()
    assert naive != names  # GDAL alone turns it into Latin-1 mojibake
    assert import_names(store, path) == {f"D{i}": n for i, n in enumerate(names)}
    layer = load(store, "grids")
    rows = [layer.row(f"districts:D{i}") for i in range(len(names))]
    want = np.array([square(DISTRICTS[n]) for n in names])
    assert max_distance_m(layer.geometry[rows], want) < 0.5


def test_cpg_is_honoured(store, tmp_path):
    path = tmp_path / "big5.shp"
    write_dbf_bytes(path, ["臺北".encode("big5"), "高雄".encode("big5")])
    path.with_suffix(".cpg").write_text("BIG5")
    assert set(import_names(store, path).values()) == {"臺北", "高雄"}


def test_encoding_option_wins_for_undeclared_text(store, tmp_path):
    path = tmp_path / "short.shp"
    # One-character names are where guessing is weakest: GBK 中 is also valid UTF-8 (Hebrew).
    write_dbf_bytes(path, ["中".encode("gbk"), "区".encode("gbk")])
    assert set(import_names(store, path, encoding="gbk").values()) == {"中", "区"}


def test_gbk_and_utf8_mixed_in_one_file(store, tmp_path):
    path = tmp_path / "mixed.shp"
    names = ["江夏区".encode("gbk"), "硚口区".encode(), b"Wuchang", "武昌区".encode("gbk")]
    write_dbf_bytes(path, names)
    got = import_names(store, path)
    assert got == {"D0": "江夏区", "D1": "硚口区", "D2": "Wuchang", "D3": "武昌区"}


def test_cpg_that_lies_is_recovered(store, tmp_path):
    path = tmp_path / "liar.shp"
    write_dbf_bytes(path, ["江夏区".encode("gbk"), "Zürich".encode()])
    path.with_suffix(".cpg").write_text("UTF-8")
    assert set(import_names(store, path).values()) == {"江夏区", "Zürich"}


def test_western_text_in_undeclared_shapefile_stays_western(store, tmp_path):
    path = tmp_path / "latin.shp"
    names = ["Montréal", "Gießen", "São Paulo", "Ñandú"]
    write_dbf_bytes(path, [n.encode("cp1252") for n in names])
    assert sorted(import_names(store, path).values()) == sorted(names)


@pytest.mark.parametrize(
    "raw, preferred, text",
    [
        ("江夏区".encode("gbk"), None, "江夏区"),
        ("江夏区".encode(), None, "江夏区"),
        ("中".encode("gbk"), "gbk", "中"),
        ("Montréal".encode("latin-1"), None, "Montréal"),
        ("€5".encode("cp1252"), None, "€5"),
        (b"plain", None, "plain"),
    ],
)
def test_decode_bytes(raw, preferred, text):
    assert decode_bytes(raw, preferred)[0] == text


def test_undo_latin1_mojibake_only_touches_mojibake():
    assert undo_latin1_mojibake("武汉市".encode().decode("latin-1"))[0] == "武汉市"
    assert undo_latin1_mojibake("Montréal")[0] == "Montréal"
    assert undo_latin1_mojibake("江夏区")[0] == "江夏区"


def test_wuhan_districts_with_the_broken_field_name(store):
    path = shared("wuhan_districts_hgwr/wuhan.geojson")
    with pytest.raises(UnicodeDecodeError):
        pyogrio.read_info(path)
    # The recipe of ../shared/data/README.md, as an independent reference.
    ref = gpd.read_file(path, encoding="latin1")
    ref_names = ref["NAME_1"].str.encode("latin1").str.decode("utf-8")
    report = run_import(
        store, "grids", path, mapping={"NAME_1": "name"}, constants={"level": "district"}
    )
    assert (report.read, report.added, len(report.rejected)) == (13, 13, 0)
    assert any(c.startswith("FID_") and c != "FID_Wuhan" for c in report.extra_columns)
    layer = load(store, "grids")
    assert set(layer.attrs["name"]) == WUHAN_DISTRICTS == set(ref_names)
    assert (layer.attrs["level"] == "district").all()
    # Geometry is the file's own: compare each district with the reference by name.
    ref_geom = dict(zip(ref_names, ref.geometry, strict=True))
    for name, geom in zip(layer.attrs["name"], layer.geometry, strict=True):
        assert shapely.normalize(geom).equals_exact(shapely.normalize(ref_geom[name]), 1e-12)
    jiangxia = layer.geometry[list(layer.attrs["name"]).index("江夏区")]
    assert jiangxia.contains(shapely.Point(DISTRICTS["江夏区"]))
