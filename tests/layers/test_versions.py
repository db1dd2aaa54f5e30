"""Every version of a feature is kept: what the store recorded at any instant can be read back
(`as_of`), and a feature's earlier versions listed (`versions`), for imports, deletions and
readings alike."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from layers.gpkg import GeoPackageStore
from layers.layer import Layer
from layers.models import Access, Reading
from layers.schemas import LIGHTS
from tests.twin.serve_fixtures import make_layer

ALL = Access.RESTRICTED


def lights(ids: list[str], xs: list[float], status: list[str]) -> Layer:
    return make_layer(
        LIGHTS, shapely.points(np.array(xs), np.full(len(xs), 30.35)), ids, status=status
    )


def stamp() -> str:
    """Now, as the store writes times; the writes around it are a few ms apart."""
    time.sleep(0.005)
    t = dt.datetime.now(dt.UTC)
    time.sleep(0.005)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def same(a: Layer, b: Layer) -> None:
    assert a.ids.tolist() == b.ids.tolist()
    assert shapely.equals_exact(a.geometry, b.geometry, tolerance=0).all()
    pd.testing.assert_frame_equal(a.attrs, b.attrs)


def test_the_store_as_recorded_at_any_instant(tmp_path: Path) -> None:
    store = GeoPackageStore(tmp_path)
    before = stamp()
    store.write(lights(["a", "b", "c"], [114.30, 114.31, 114.32], ["on"] * 3), source="s", user="u")
    first = stamp()
    snapshot = store.load("lights", ALL)
    store.write(lights(["b", "d"], [114.35, 114.40], ["fault", "on"]), source="s", user="ann")
    store.delete_features("lights", ["c"], user="bob", source="api")
    t = dt.datetime.now(dt.UTC)
    store.observe([Reading("lights", "a", "status", t, "off")], user="sensor")
    last = stamp()
    same(store.as_of("lights", first, ALL), snapshot)
    same(store.as_of("lights", last, ALL), store.load("lights", ALL))
    assert len(store.as_of("lights", before, ALL)) == 0
    assert store.as_of("lights", first, ALL, ids=["b"]).attrs["status"].tolist() == ["on"]
    # b's earlier version, ended by ann's import; c's, ended by bob's deletion.
    old_b, ended_b = store.versions("lights", "b", ALL)
    assert old_b.attrs["status"].tolist() == ["on"]
    assert shapely.get_x(old_b.geometry[0]) == 114.31
    ((valid_to, user, why),) = ended_b
    assert first < valid_to < last and user == "ann" and "from s" in why
    (ended_c,) = store.versions("lights", "c", ALL)[1]
    assert ended_c[1:] == ("bob", "delete by api")
    # a reading is a new version too: its earlier state is kept
    old_a, ended_a = store.versions("lights", "a", ALL)
    assert old_a.attrs["status"].tolist() == ["on"] and ended_a[0][1] == "sensor"
    assert store.as_of("lights", last, ALL, ids=["a"]).attrs["status"].tolist() == ["off"]
    store.close()
