"""A tile drawn again from what its last drawing kept (`draw_tile`), after readings changed
attribute values: byte for byte the tile a fresh render draws, and decoded by
mapbox-vector-tile it holds the new values."""

from __future__ import annotations

from typing import Any

import mapbox_vector_tile
import numpy as np
import pytest
import shapely

from layers.layer import Layer, json_value
from tests.tiles.test_render import LAT, LON, SETTINGS, _city
from tiles import render
from tiles.grid import TMS, Tile
from tiles.render import draw_tile, render_tile
from tiles.settings import TileSettings

NOW_MS = 1_760_000_000_000


def _readings(layer: Layer, rng: np.random.Generator, values: dict[str, list[Any]]) -> Layer:
    """`layer` after a batch of readings (as `Catalog.follow` applies them): random rows of
    each named property set to random choices of its `values`."""
    n = len(layer)
    sets = {}
    counts = np.zeros(n, dtype=np.int64)
    for prop, choices in values.items():
        rows = np.unique(rng.integers(0, n, max(1, n // 5)))
        picked = [choices[i] for i in rng.integers(0, len(choices), len(rows))]
        sets[prop] = (rows, picked)
        counts[rows] += 1
    return layer.with_state(sets, counts, np.where(counts > 0, NOW_MS, np.iinfo(np.int64).min))


CHANGES: dict[str, dict[str, list[Any]]] = {
    # diameter_mm ranks pipes below the detail zoom: their order there changes too.
    "pipes": {"material": ["PE", "steel", None], "diameter_mm": [100.0, 600.0, None]},
    "valves": {"normally_open": [True, False, None]},
    "parks": {"name": ["North", "South", None]},
}


def _around(z: int) -> list[Tile]:
    centre = TMS.tile(LON, LAT, z)
    return [Tile(centre.x + dx, centre.y + dy, z) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]


def _expected_properties(layer: Layer, fid: str) -> dict[str, Any]:
    """What a tile should carry of feature `fid`, read from the layer's own columns."""
    row = layer.row(fid)
    out: dict[str, Any] = {"id": fid}
    for f in layer.schema.fields:
        v = json_value(layer.attrs[f.name].iloc[row])
        if v is not None:
            out[f.name] = v
    return out


@pytest.mark.parametrize("z", [11, 13, 14, 15, 16])
def test_redrawn_tile_is_a_fresh_render_byte_for_byte(z: int) -> None:
    layers = list(_city())
    rng = np.random.default_rng(z)
    drafts = {}
    for t in _around(z):
        raw, drafts[t] = draw_tile([(lyr, None) for lyr in layers], t, SETTINGS)
        assert raw == render_tile([(lyr, None) for lyr in layers], t, SETTINGS)
    checked = 0
    for _ in range(3):
        layers = [_readings(lyr, rng, CHANGES[lyr.name]) for lyr in layers]
        requests = [(lyr, None) for lyr in layers]
        for t in _around(z):
            raw, drafts[t] = draw_tile(requests, t, SETTINGS, drafts[t])
            assert raw == render_tile(requests, t, SETTINGS), t
            decoded = mapbox_vector_tile.decode(raw) if raw else {}
            for lyr in layers:
                for f in decoded.get(lyr.name, {"features": []})["features"]:
                    if "point_count" in f["properties"]:
                        continue  # a cluster
                    fid = f["properties"]["id"]
                    assert f["properties"] == pytest.approx(_expected_properties(lyr, fid))
                    checked += 1
    assert checked > 100


def test_redraw_encodes_no_geometry_again_when_only_values_changed(monkeypatch) -> None:
    layers = list(_city())
    t = Tile(*TMS.tile(LON, LAT, 15)[:2], 15)
    raw, draft = draw_tile([(lyr, None) for lyr in layers], t, SETTINGS)
    assert draft is not None
    calls = []
    encode = render.encode_geometry
    monkeypatch.setattr(
        render, "encode_geometry", lambda *a, **k: calls.append(1) or encode(*a, **k)
    )
    rng = np.random.default_rng(1)
    later = [_readings(lyr, rng, CHANGES[lyr.name]) for lyr in layers]
    again, _ = draw_tile([(lyr, None) for lyr in later], t, SETTINGS, draft)
    assert calls == []
    assert again != raw
    monkeypatch.undo()
    assert again == render_tile([(lyr, None) for lyr in later], t, SETTINGS)


def test_a_moved_feature_or_other_rows_are_cut_anew() -> None:
    _, valves, _ = _city()
    t = Tile(*TMS.tile(LON, LAT, 15)[:2], 15)
    _, draft = draw_tile([(valves, None)], t, SETTINGS)
    inside = mapbox_vector_tile.decode(render_tile([(valves, None)], t, SETTINGS))
    fid = inside["valves"]["features"][0]["properties"]["id"]
    # The valve moves off this tile, and another one (made from its row) takes a new id.
    moved = valves.take([valves.row(fid)])
    moved.geometry = np.array([shapely.Point(LON + 1, LAT + 1)], dtype=object)
    later = valves.patched(moved)
    assert not later.origin.same_geometry  # type: ignore[union-attr]
    raw, _ = draw_tile([(later, None)], t, SETTINGS, draft)
    assert raw == render_tile([(later, None)], t, SETTINGS)
    ids = {f["properties"]["id"] for f in mapbox_vector_tile.decode(raw)["valves"]["features"]}
    assert fid not in ids and len(ids) == len(inside["valves"]["features"]) - 1
    # The same layer limited to some rows (a filter) is not the tile drawn before.
    rows = np.arange(0, len(valves), 2)
    raw, _ = draw_tile([(valves, rows)], t, SETTINGS, draft)
    assert raw == render_tile([(valves, rows)], t, SETTINGS)
    assert raw != render_tile([(valves, None)], t, SETTINGS)


def test_a_tile_over_its_budget_keeps_nothing_to_draw_again() -> None:
    pipes, valves, _ = _city()
    small = TileSettings(_env_file=None, max_bytes=1_000)  # type: ignore[call-arg]
    t = Tile(*TMS.tile(LON, LAT, 14)[:2], 14)
    raw, draft = draw_tile([(pipes, None), (valves, None)], t, small)
    assert draft is None
    assert raw == render_tile([(pipes, None), (valves, None)], t, small)
    assert 0 < len(raw) <= 1_000
    # A draft from other settings is not used for these.
    _, other = draw_tile([(pipes, None), (valves, None)], t, SETTINGS)
    raw, _ = draw_tile([(pipes, None), (valves, None)], t, small, other)
    assert raw == render_tile([(pipes, None), (valves, None)], t, small)
