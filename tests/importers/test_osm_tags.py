"""OSM tag values into typed attributes, including osmnx's lists from merged ways."""

from __future__ import annotations

import datetime as dt

import pytest

from importers import osm_tags as tag


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("50", 50.0),
        ("30 mph", 48.3),
        (["30", "50"], 50.0),
        ("none", None),
        ("RO:urban", None),
        ("walk", None),
        (None, None),
        (float("nan"), None),
        ("50;70", 70.0),
    ],
)
def test_speed_kmh(raw, expected):
    assert tag.speed_kmh(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [("2", 2), ("2;3", 3), (["1", "2"], 2), ("1.5", None), ("two", None), (None, None)],
)
def test_integer(raw, expected):
    assert tag.integer(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("300", 300.0),
        ('4"', 101.6),
        ("4 in", 101.6),
        ("0.4 m", 400.0),
        ("40 cm", 400.0),
        ("300 mm", 300.0),
        ("DN150", 150.0),
        ("", None),
        (None, None),
    ],
)
def test_length_mm(raw, expected):
    assert tag.length_mm(raw) == expected


@pytest.mark.parametrize("raw, expected", [("8", 8.0), ("8 m", 8.0), ("16'", 4.877), ("x", None)])
def test_metres(raw, expected):
    assert tag.metres(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("yes", True),
        ("no", False),
        ("viaduct", True),
        (True, True),
        (False, False),
        (["no", "yes"], True),
        (["no", "no"], False),
        ("-1", True),
        (None, None),
    ],
)
def test_flag(raw, expected):
    assert tag.flag(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("2021-06-01", dt.date(2021, 6, 1)),
        ("2019-03", dt.date(2019, 3, 1)),
        ("2018", dt.date(2018, 1, 1)),
        ("2021-13-01", None),
        ("last spring", None),
    ],
)
def test_date(raw, expected):
    assert tag.date(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [("good", 2), ("Fair", 3), ("very bad", 5), ("4", 4), ("9", None), ("shiny", None)],
)
def test_condition(raw, expected):
    assert tag.condition(raw) == expected


def test_text_first_voltage_and_values():
    assert tag.values(["a;b", "b", None, " c "]) == ["a", "b", "c"]
    assert tag.text(["Main St", "Main St", "High St"]) == "Main St;High St"
    assert tag.first(["residential", "tertiary"]) == "residential"
    assert tag.voltage_kv("110000;20000") == 110.0
    assert tag.voltage_kv("medium") is None
