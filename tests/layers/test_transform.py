"""`layers.transform.transformer`: the same coordinates as pyproj's searched transformer, from
a pipeline any thread remakes without searching the PROJ database."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pyproj import Transformer
from pyproj.transformer import TransformerFromCRS

from layers.transform import transformer

# Wuhan (CGCS2000 Gauss-Kruger zones, UTM 50N, Web Mercator, lat/lon order) and Cambridge MA.
CASES = [
    ("OGC:CRS84", "EPSG:4547", True, (114.3, 30.6)),
    ("EPSG:4547", "EPSG:4326", True, (560_000.0, 3_386_000.0)),
    (4326, 32650, True, (114.3, 30.6)),
    ("OGC:CRS84", "EPSG:3857", True, (114.3, 30.6)),
    ("OGC:CRS84", "EPSG:4490", False, (114.3, 30.6)),
    ("OGC:CRS84", "EPSG:2249", True, (-71.1, 42.37)),
    (4326, 6933, True, (-71.1, 42.37)),
]


@pytest.mark.parametrize(("src", "dst", "always_xy", "point"), CASES)
def test_same_coordinates_as_the_searched_transformer(src, dst, always_xy, point) -> None:
    searched = Transformer.from_crs(src, dst, always_xy=always_xy)
    fast = transformer(src, dst, always_xy=always_xy)
    rng = np.random.default_rng(7)
    span = 0.2 if abs(point[0]) < 200 else 20_000.0
    xs = point[0] + rng.uniform(-span, span, 500)
    ys = point[1] + rng.uniform(-span, span, 500)
    expected = np.column_stack(searched.transform(xs, ys))
    got = np.column_stack(fast.transform(xs, ys))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_a_new_thread_does_not_search_the_proj_database(monkeypatch) -> None:
    fast = transformer("OGC:CRS84", "EPSG:4547")
    searched = Transformer.from_crs("OGC:CRS84", "EPSG:4547", always_xy=True)
    expected = searched.transform(114.3, 30.6)
    searches = []
    real = TransformerFromCRS.__call__

    def counted(self):
        searches.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(TransformerFromCRS, "__call__", counted)
    out: list[tuple[float, float]] = []
    thread = threading.Thread(target=lambda: out.append(fast.transform(114.3, 30.6)), name="a")
    thread.start()
    thread.join()
    assert searches == []
    assert out[0] == pytest.approx(expected, abs=1e-9)
    # pyproj's own transformer searches again in a new thread: what the pipeline avoids.
    thread = threading.Thread(target=lambda: searched.transform(114.3, 30.6), name="b")
    thread.start()
    thread.join()
    assert searches == ["b"]


def test_several_candidate_operations_keep_the_searched_transformer() -> None:
    # NAD27 -> WGS84: PROJ picks among grid-based operations point by point.
    t = transformer("EPSG:4267", "EPSG:4326")
    assert t.definition.startswith("unavailable")
    ref = Transformer.from_crs("EPSG:4267", "EPSG:4326", always_xy=True)
    assert t.transform(-71.1, 42.37) == pytest.approx(ref.transform(-71.1, 42.37), abs=1e-12)
