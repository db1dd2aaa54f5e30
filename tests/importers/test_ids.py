"""Stable ids: re-importing changes nothing; newer versions update, add and remove by id."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely

from layers.layer import VERSION
from tests.importers.conftest import by_id, load, pipes_frame, run_import


def write(frame: gpd.GeoDataFrame, path):
    frame.to_file(path, driver="GeoJSON")
    return path


def test_reimport_changes_nothing(store, pipes_file):
    first = run_import(store, "pipes", pipes_file)
    again = run_import(store, "pipes", pipes_file)
    assert (first.added, first.updated, first.unchanged) == (6, 0, 0)
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, 6, 0)
    layer = load(store, "pipes")
    assert (layer.attrs[VERSION] == 1).all()
    assert [h.unchanged for h in store.history("pipes")] == [6, 0]


def test_newer_version_updates_adds_and_replace_removes(store, tmp_path):
    old = pipes_frame(6)
    run_import(store, "pipes", write(old, tmp_path / "v1.geojson"), source="mains")
    new = pipes_frame(8).drop(index=[0])  # P0 gone, P6 and P7 new
    new.loc[new["PIPE_ID"] == "P3", "MATERIAL"] = "CI"
    path = write(new, tmp_path / "v2.geojson")
    up = run_import(store, "pipes", path, source="mains")
    assert (up.added, up.updated, up.unchanged, up.removed) == (2, 1, 4, 0)
    assert len(load(store, "pipes")) == 8
    rep = run_import(store, "pipes", path, source="mains", mode="replace")
    assert (rep.added, rep.updated, rep.unchanged, rep.removed) == (0, 0, 7, 1)
    layer = load(store, "pipes")
    assert sorted(layer.ids) == sorted(f"mains:{p}" for p in new["PIPE_ID"])
    assert by_id(layer, "material")["mains:P3"] == "CI"
    assert by_id(layer, VERSION)["mains:P3"] == 2 and by_id(layer, VERSION)["mains:P1"] == 1


def test_sources_are_kept_apart(store, tmp_path):
    a = pipes_frame(3)
    b = pipes_frame(3)
    b.geometry = b.geometry.translate(0.1, 0)
    run_import(store, "pipes", write(a, tmp_path / "a.geojson"), source="toronto")
    run_import(store, "pipes", write(b, tmp_path / "b.geojson"), source="ottawa", mode="replace")
    layer = load(store, "pipes")
    assert len(layer) == 6
    assert sorted(set(layer.attrs["source"])) == ["ottawa", "toronto"]


def test_content_ids_keep_identical_rows_apart_and_stay_stable(store, tmp_path):
    line = shapely.LineString([(114.3, 30.3), (114.31, 30.3)])
    frame = gpd.GeoDataFrame(
        {"MATERIAL": ["PE", "PE", "DI"]},
        geometry=[line, line, shapely.LineString([(114.3, 30.4), (114.31, 30.4)])],
        crs="EPSG:4326",
    )
    path = write(frame, tmp_path / "noid.geojson")
    first = run_import(store, "pipes", path)
    assert first.added == 3 and first.id_column == "content"
    ids = sorted(load(store, "pipes").ids)
    assert len(set(ids)) == 3 and sum(i.endswith("-2") for i in ids) == 1
    assert run_import(store, "pipes", path).unchanged == 3
    frame.loc[2, "MATERIAL"] = "CI"
    changed = run_import(store, "pipes", write(frame, tmp_path / "noid.geojson"), mode="replace")
    assert (changed.added, changed.unchanged, changed.removed) == (1, 2, 1)
    assert sorted(load(store, "pipes").attrs["material"]) == ["CI", "PE", "PE"]


def test_an_id_column_with_repeats_is_passed_over_and_said(store, tmp_path):
    frame = pipes_frame(4)
    frame["FACILITYID"] = ["F1", "F1", None, "F4"]  # PIPE_ID comes first, and is clean
    frame = frame.rename(columns={"PIPE_ID": "ASSET_ID"})
    frame["ASSET_ID"] = ["A", "A", "B", "C"]
    report = run_import(store, "pipes", write(frame, tmp_path / "dups.geojson"))
    assert report.id_column == "content"
    assert "ids not taken from ASSET_ID: it has 1 repeated values" in report.notes
    assert "ids not taken from FACILITYID: it has 1 empty and 1 repeated values" in report.notes


def test_an_explicit_id_column_rejects_rows_it_cannot_identify(store, tmp_path):
    frame = pipes_frame(5)
    frame["TAG"] = ["t1", "t2", "t1", None, 7]
    report = run_import(store, "pipes", write(frame, tmp_path / "tags.geojson"), id_column="tag")
    assert report.added == 3
    assert [(r.row, r.reason) for r in report.rejected] == [
        (3, "id 't1' of TAG repeats row 1"),
        (4, "no id: TAG is empty"),
    ]
    assert sorted(load(store, "pipes").ids) == ["tags:7", "tags:t1", "tags:t2"]
    assert np.isin(["tags:7"], load(store, "pipes").ids).all()
