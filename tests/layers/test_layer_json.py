"""JSON of layer attributes: values and texts written column-wise (codes into distinct values or
straight from the arrays) equal the hand-written expected values and `json.dumps` of them."""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import shapely

from layers.layer import JsonColumn, Layer, coerce, empty_attrs
from layers.schemas import custom_schema

SCHEMA = custom_schema(
    {
        "name": "things",
        "fields": {
            "label": "string",
            "count": "integer",
            "size_m": "float",
            "ok": "boolean",
            "since": "date",
            "seen": "datetime",
        },
    }
)

T0 = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
T1 = dt.datetime(2021, 6, 1, 12, 30, tzinfo=dt.UTC)
T2 = dt.datetime(2021, 6, 1, 12, 30, 0, 250_000, tzinfo=dt.UTC)

# Each row's values as stored, and the JSON value each must come out as.
ROWS = [
    ("plain", 3, 2.5, True, "2020-01-31", T1),
    ('quote " back \\ slash', None, 300.0, False, None, T2),
    ("ünïcödé 路灯 \u2028 tab\t nl\n", -(2**62), -0.0, None, "1999-12-31", None),
    (None, 0, float("nan"), True, "2020-01-31", T1),
    ("%s %d 100%", 7, float("inf"), False, "2000-02-29", T0),
    ("", 2**53 + 1, 1e20, True, None, None),
    ("plain", 3, 0.1 + 0.2, None, "2020-01-31", T1),
    ("x", None, 2.0**53, False, "2020-01-31", None),
]
EXPECTED = [
    {
        "label": "plain",
        "count": 3,
        "size_m": 2.5,
        "ok": True,
        "since": "2020-01-31",
        "seen": "2021-06-01T12:30:00Z",
    },
    {
        "label": 'quote " back \\ slash',
        "count": None,
        "size_m": 300,
        "ok": False,
        "since": None,
        "seen": "2021-06-01T12:30:00.250000Z",
    },
    {
        "label": "ünïcödé 路灯 \u2028 tab\t nl\n",
        "count": -(2**62),
        "size_m": 0,
        "ok": None,
        "since": "1999-12-31",
        "seen": None,
    },
    {
        "label": None,
        "count": 0,
        "size_m": None,
        "ok": True,
        "since": "2020-01-31",
        "seen": "2021-06-01T12:30:00Z",
    },
    {
        "label": "%s %d 100%",
        "count": 7,
        "size_m": math.inf,
        "ok": False,
        "since": "2000-02-29",
        "seen": "1970-01-01T00:00:00Z",
    },
    {"label": "", "count": 2**53 + 1, "size_m": 1e20, "ok": True, "since": None, "seen": None},
    {
        "label": "plain",
        "count": 3,
        "size_m": 0.30000000000000004,
        "ok": None,
        "since": "2020-01-31",
        "seen": "2021-06-01T12:30:00Z",
    },
    {
        "label": "x",
        "count": None,
        "size_m": 2.0**53,
        "ok": False,
        "since": "2020-01-31",
        "seen": None,
    },
]


def _layer(rows: list[tuple]) -> Layer:
    attrs = empty_attrs(SCHEMA, len(rows))
    for i, f in enumerate(SCHEMA.fields):
        attrs[f.name] = coerce(pd.Series([r[i] for r in rows], dtype=object), f.type)
    attrs["source"] = coerce(pd.Series(["test"] * len(rows)), SCHEMA.fields[0].type)
    ids = np.array([f"t{i}" for i in range(len(rows))], dtype=object)
    return Layer(SCHEMA, ids, shapely.points(np.arange(len(rows)), np.zeros(len(rows))), attrs)


def _text(expected: dict) -> str:
    """What `json.dumps` gives, with the infinite number (no JSON for it) as null."""
    finite = {
        k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in expected.items()
    }
    return json.dumps(finite, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _coded(layer: Layer, max_distinct: int | None) -> None:
    """Make the layer's JSON columns with `max_distinct` before anything asks for them."""
    for c in layer.attrs:
        col = JsonColumn(layer.attrs[c].array, max_distinct=max_distinct)
        assert layer.derived(("json", c), lambda col=col: col) is col
        assert layer.json_column(c) is col


@pytest.mark.parametrize("max_distinct", [None, 0])
def test_values_and_texts_equal_the_expected_json(max_distinct):
    layer = _layer(ROWS)
    # None: every column coded by its distinct values; 0: every column read row by row.
    _coded(layer, max_distinct)
    rows = np.array([4, 0, 7, 1, 2, 3, 5, 6, 0])
    props = layer.properties(rows)
    texts = layer.properties_json(rows)
    for r, p, t in zip(rows.tolist(), props, texts, strict=True):
        want = {**EXPECTED[r], "source": "test"}
        assert p == want
        assert list(p) == list(want)  # property order is the schema's
        assert [type(v) for v in p.values()] == [type(v) for v in want.values()]
        assert t == _text(want)
        assert json.loads(t) == {
            k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in want.items()
        }
    assert layer.properties_json([]) == [] and layer.properties([]) == []


def test_system_columns_and_ids():
    layer = _layer(ROWS[:3])
    layer.attrs["_updated"] = coerce(
        pd.Series([dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)] * 3), SCHEMA.fields[5].type
    )
    (text,) = layer.properties_json([2], system=True)
    got = json.loads(text)
    assert list(got)[-3:] == ["source", "_version", "_updated"]
    assert got["_version"] == 1 and got["_updated"] == "2024-05-06T07:08:09Z"
    assert layer.id_texts([1, 0]) == ['"t1"', '"t0"']


@pytest.mark.parametrize("max_distinct", [None, 3])
def test_columns_after_readings_equal_the_expected_json(max_distinct):
    """Batches of readings set values of other rows of the table (`Layer.with_state`); the
    JSON columns, made from the earlier layer's for the rows changed only, give what the
    table says of each row's values now (a column of more distinct values than
    `max_distinct` is read again whole)."""
    layer = _layer(ROWS * 40)
    _coded(layer, max_distinct)
    n = len(layer)
    expected = [dict(EXPECTED[i % len(ROWS)]) for i in range(n)]
    names = SCHEMA.field_names
    rng = np.random.default_rng(2)
    for batch in range(8):
        rows = np.unique(rng.integers(0, n, 50))
        src = rng.integers(0, len(ROWS), len(rows)).tolist()
        changed = names[batch % 3 :: 2]
        values = {name: (rows, [ROWS[s][names.index(name)] for s in src]) for name in changed}
        counts = np.zeros(n, dtype=np.int64)
        counts[rows] = 1
        stamps = np.where(counts > 0, 1_700_000_000_000, np.iinfo(np.int64).min)
        later = layer.with_state(values, counts, stamps)
        assert later.origin is not None and later.origin.base() is layer
        layer = later
        for r, s in zip(rows.tolist(), src, strict=True):
            for name in changed:
                expected[r][name] = EXPECTED[s][name]
        every = np.arange(n)
        assert layer.properties(every) == [{**e, "source": "test"} for e in expected]
        assert layer.properties_json(every) == [_text({**e, "source": "test"}) for e in expected]


def test_rows_of_gives_each_ids_first_row_or_minus_one():
    ids = np.array(["a", "b", "c", "b", "d"], dtype=object)
    layer = Layer(SCHEMA, ids, shapely.points(np.zeros((5, 2))), empty_attrs(SCHEMA, 5))
    asked = ["d", "x", "b", "a", "b", ""]
    first = {fid: i for i, fid in reversed(list(enumerate(ids.tolist())))}
    assert layer.rows_of(asked).tolist() == [first.get(fid, -1) for fid in asked]
    assert layer.rows_of([]).tolist() == []


@pytest.mark.parametrize("max_distinct", [None, 0])
def test_random_columns_equal_a_row_by_row_reference(max_distinct):
    rng = np.random.default_rng(4)
    n = 3000
    words = np.array(["a", "b\\", 'c"', "d\x01", "é", ""], dtype=object)
    raw = {
        "label": [None if rng.random() < 0.1 else w for w in rng.choice(words, n)],
        "count": [None if rng.random() < 0.1 else int(v) for v in rng.integers(-5, 5, n)],
        "size_m": [
            None if rng.random() < 0.1 else round(float(v), int(d))
            for v, d in zip(rng.normal(0, 100, n), rng.integers(0, 4, n), strict=True)
        ],
        "ok": [None if rng.random() < 0.2 else bool(v) for v in rng.integers(0, 2, n)],
    }
    schema = custom_schema(
        {
            "name": "rnd",
            "fields": {"label": "string", "count": "integer", "size_m": "float", "ok": "boolean"},
        }
    )
    attrs = empty_attrs(schema, n)
    for f in schema.fields:
        attrs[f.name] = coerce(pd.Series(raw[f.name], dtype=object), f.type)
    layer = Layer(
        schema, np.arange(n).astype(str).astype(object), shapely.points(np.zeros((n, 2))), attrs
    )
    _coded(layer, max_distinct)
    rows = rng.integers(0, n, 500)
    for r, text in zip(rows.tolist(), layer.properties_json(rows), strict=True):
        want = {}
        for name in schema.field_names:
            v = raw[name][r]
            # Whole floats are written as integers, the way the layer always has.
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            want[name] = v
        want["source"] = None
        assert text == json.dumps(want, ensure_ascii=False, separators=(",", ":"))


def test_derived_is_made_once_per_layer_even_when_threads_race():
    layer, other = _layer(ROWS), _layer(ROWS)
    calls: list[int] = []
    started = threading.Barrier(8)

    def make() -> list[int]:
        calls.append(1)
        time.sleep(0.05)  # widen the window in which a second make could start
        return [len(calls)]

    def ask() -> list[int]:
        started.wait()
        return layer.derived("thing", make)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: ask(), range(8)))
    assert len(calls) == 1 and all(g is got[0] for g in got)
    assert layer.derived("thing", make) is got[0] and len(calls) == 1
    # Another key, or another layer, is made anew.
    assert layer.derived("other", make) == [2]
    assert other.derived("thing", make) == [3]
