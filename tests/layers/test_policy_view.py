"""A caller's view of a layer kept in step with readings: after a batch that changes no value
a rule of the view looks at, the view keeps the same rows and shares their spatial index; after
one that does, the rows are worked out again."""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
import shapely

from layers.layer import Layer, coerce, empty_attrs
from layers.models import Role
from layers.policy import Policy, View, Who
from layers.schemas import LIGHTS

POLICY = Policy.parse('[[layers.lights.rows]]\nmatch = { status = "fault" }\n')


def lamps(n: int = 400) -> Layer:
    rng = np.random.default_rng(4)
    attrs = empty_attrs(LIGHTS, n)
    attrs["status"] = coerce(pd.Series(["on"] * n), LIGHTS.field("status").type)
    attrs["lamp_type"] = coerce(pd.Series(["LED"] * n), LIGHTS.field("lamp_type").type)
    geom = shapely.points(114.2 + rng.random(n) * 0.2, 30.4 + rng.random(n) * 0.2)
    return Layer(LIGHTS, np.array([f"L{i}" for i in range(n)], dtype=object), geom, attrs)


def readings(layer: Layer, column: str, rows: list[int], value: str) -> Layer:
    n = len(layer)
    new = layer.with_state(
        {column: (np.array(rows), [value] * len(rows))},
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
    )
    new.previous = weakref.ref(layer)
    return new


def test_a_view_follows_readings_sharing_what_did_not_change() -> None:
    view = View(POLICY, Who(Role.VIEWER), area=shapely.box(114.2, 30.4, 114.3, 30.5))
    layer = lamps()
    first = view.apply(layer)
    inside = shapely.intersects(layer.geometry, shapely.box(114.2, 30.4, 114.3, 30.5))
    assert first.ids.tolist() == layer.ids[inside].tolist()
    _ = first.tree
    # A value no rule looks at: the same rows, the same index, the new values.
    row = int(np.flatnonzero(inside)[0])
    second = readings(layer, "lamp_type", [row], "sodium")
    seen = view.apply(second)
    assert seen.ids.tolist() == first.ids.tolist()
    assert seen.tree is first.tree
    assert seen.attrs["lamp_type"].iloc[0] == "sodium"
    # A value the row rule looks at: worked out again (the lamp in fault is hidden).
    third = readings(second, "status", [row], "fault")
    again = view.apply(third)
    assert again.ids.tolist() == [i for i in first.ids.tolist() if i != layer.ids[row]]
    assert again.tree is not first.tree
    assert len(again.tree.geometries) == len(again)
