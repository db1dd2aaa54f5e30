"""The check of a batch of readings column by column (`observations.check`) against the same
readings checked one by one (`observations._reading`, the reference): the same readings land
with the same values and times, the same are refused with the same reasons at the same
places; and its parts (times read in one step, the newest reading of each property, values
as JSON) against `parse_utc`/`utc_stamp`, a brute-force search and `json.dumps`."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from typing import Any

import numpy as np
import pytest
import shapely

from layers.layer import Layer
from layers.models import (
    Access,
    Field,
    FieldType,
    GeometryFamily,
    LayerSchema,
    Reading,
    Readings,
    parse_utc,
    utc_stamp,
)
from tests.twin.serve_fixtures import make_layer
from twin import observations

NOW = dt.datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=dt.UTC)
AHEAD_US = round(observations.FUTURE_S * 1e6)
SENSORS = LayerSchema(
    "sensors",
    "Sensors",
    GeometryFamily.POINT,
    (
        Field("status", FieldType.STRING, choices=("on", "off", "fault")),
        Field("note", FieldType.STRING),
        Field("count", FieldType.INTEGER, minimum=0, maximum=1000),
        Field("level", FieldType.FLOAT, minimum=-5.5, maximum=99.5),
        Field("ratio", FieldType.FLOAT),
        Field("open", FieldType.BOOLEAN),
        Field("serviced", FieldType.DATE),
        Field("seen", FieldType.DATETIME),
    ),
)
IDS = [f"S{i}" for i in range(50)]
FORMS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?(Z|[+-]\d\d:\d\d)", re.ASCII)
"""The forms of time the check reads in one step (`observations.utc_stamps`)."""


class Layers:
    """The part of a catalog the check uses: the layers a scope sees (held)."""

    holds = True

    def __init__(self, layers: dict[str, Layer]) -> None:
        self._layers = layers

    def layers(self, scope: Any) -> dict[str, Layer]:
        return self._layers


@pytest.fixture(name="catalog", scope="module")
def catalog_fixture() -> Any:
    points = shapely.points(np.arange(50) * 1e-4 + 114.3, np.full(50, 30.35))
    return Layers({"sensors": make_layer(SENSORS, points, IDS)})


def one_by_one(catalog: Any, items: list[Any]) -> tuple[list[tuple], list[dict[str, Any]]]:
    """The reference: each reading checked on its own."""
    layers = catalog.layers(Access.RESTRICTED)
    fields = {n: {f.name: f for f in lyr.schema.fields} for n, lyr in layers.items()}
    landed, refused = [], []
    for i, item in enumerate(items):
        try:
            r = observations._reading(layers, fields, item, NOW)
        except ValueError as exc:
            refused.append({"index": i, "reason": str(exc)})
        else:
            landed.append((r.collection, r.id, r.property, utc_stamp(r.time), r.value))
    return landed, refused


def columns_of(readings: Readings) -> list[tuple]:
    cols = (readings.collection, readings.id, readings.property, readings.time, readings.value)
    return list(zip(*cols, strict=True))


def good_time(rng: random.Random) -> str:
    t = NOW + dt.timedelta(microseconds=rng.randint(-(10**12), 2 * 10**8))
    zone = dt.timezone(dt.timedelta(minutes=rng.choice([0, 0, 480, -300, 330, -720, 840])))
    text = t.astimezone(zone).isoformat(timespec=rng.choice(["seconds", "milliseconds", "auto"]))
    return text.replace("+00:00", "Z") if rng.random() < 0.5 else text


def any_time(rng: random.Random) -> Any:
    return rng.choice(
        [
            good_time(rng),
            good_time(rng),
            good_time(rng),
            good_time(rng)[:-6],  # no offset
            good_time(rng).replace("T", " "),
            "2026-12-07T10:00:00.5Z",
            "2026-02-29T10:00:00Z",
            "2024-02-29T10:00:00+05:75",
            "2026-12-07T24:00:00Z",
            "2026-13-07T10:00:00Z",
            "2999-01-01T00:00:00Z",
            (NOW + dt.timedelta(seconds=300)).isoformat(),
            (NOW + dt.timedelta(seconds=300, microseconds=1)).isoformat(),
            "0999-12-31T23:00:00-05:00",
            "9999-12-31T23:00:00-05:00",
            "yesterday",
            "",
            "２０２６-12-07T10:00:00Z",
            12,
            None,
        ]
    )


def any_value(rng: random.Random, prop: str) -> Any:
    return rng.choice(
        {
            "status": ["on", "off", "fault", "broken", None, 1, True],
            "note": ["a, b", 'say "hi"', "灯", None, 3.5, ["x"]],
            "count": [0, 7, 1000, 1001, -1, 2.0, True, None, 10**20, "3"],
            "level": [-5.5, -5.6, 0.1, 99.5, 99.51, 7, float("inf"), float("nan"), None, False],
            "ratio": [1e300, -0.0, 2**53 + 1, 1.5, None, "x", {"a": 1}],
            "open": [True, False, None, 0, "true"],
            "serviced": ["2026-12-01", "2026-02-30", "20261201", None, 5],
            "seen": ["2026-12-01T10:00:00Z", "2026-12-01T10:00:00", None, 5],
            "colour": ["red"],
        }[prop]
    )


def any_reading(rng: random.Random) -> Any:
    prop = rng.choice([*SENSORS.field_names, "colour"])
    item: Any = {
        "collection": rng.choice(["sensors"] * 8 + ["lamps", 5]),
        "id": rng.choice(IDS * 4 + ["S404", 7, None]),
        "time": any_time(rng),
        "property": prop,
        "value": any_value(rng, prop),
    }
    roll = rng.random()
    if roll < 0.03:
        item["unit"] = "none"
    elif roll < 0.06:
        del item[rng.choice(observations.KEYS)]
    elif roll < 0.08:
        item = rng.choice([["sensors", "S1"], "reading", 3, None])
    return item


@pytest.mark.parametrize("seed", range(12))
def test_a_batch_checked_column_wise_lands_and_refuses_as_one_by_one(
    catalog: Any, seed: int
) -> None:
    rng = random.Random(seed)
    items = [any_reading(rng) for _ in range(rng.choice([1, 50, 400]))]
    batch = observations.check(catalog, Access.RESTRICTED, items, NOW)
    landed, refused = one_by_one(catalog, items)
    got = columns_of(batch.accepted)
    assert len(got) + len(batch.rejected) == len(items)
    assert got == landed
    # The same values and their types (1 and 1.0 and True are equal, not the same).
    assert [type(r[4]) for r in got] == [type(r[4]) for r in landed]
    assert batch.rejected == refused


def test_a_clean_batch_lands_whole_in_order(catalog: Any) -> None:
    rng = random.Random(3)
    items = [
        {
            "collection": "sensors",
            "id": rng.choice(IDS),
            "time": (NOW - dt.timedelta(seconds=100 - i * 0.0015)).isoformat(),
            "property": "level",
            "value": rng.uniform(-5.5, 99.5),
        }
        for i in range(1000)
    ]
    batch = observations.check(catalog, Access.RESTRICTED, items, NOW)
    assert batch.rejected == []
    assert batch.accepted.value == [x["value"] for x in items]
    assert batch.accepted.id == [x["id"] for x in items]
    assert batch.accepted.time == [utc_stamp(parse_utc(x["time"])) for x in items]
    assert observations.check(catalog, Access.RESTRICTED, [], NOW).accepted.id == []


def test_times_read_in_one_step_are_parse_utc_and_utc_stamp() -> None:
    rng = random.Random(11)
    texts = [str(any_time(rng)) for _ in range(4000)]
    # Forms it reads itself, some past the edges of what datetime takes.
    texts += [
        f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"
        for y, mo, d, h, mi, s, frac, zone in (
            (
                rng.choice([1000, 1001, 1900, 2000, 2024, 2025, 9998, 9999]),
                rng.randint(0, 13),
                rng.randint(0, 32),
                rng.randint(0, 24),
                rng.randint(0, 60),
                rng.randint(0, 60),
                rng.choice(["", ".000", ".999", ".123456", ".000999", ".5", ".1234567"]),
                rng.choice(["Z", "+00:00", "-00:00", "+08:00", "-23:59", "+24:00", "+05:75", "z"]),
            )
            for _ in range(20000)
        )
    ]
    ok, stamps = observations.utc_stamps(texts, NOW, AHEAD_US)
    for text, vouched, stamp in zip(texts, ok.tolist(), stamps, strict=True):
        try:
            t = parse_utc(text)
            good = (t - NOW).total_seconds() <= observations.FUTURE_S
        except ValueError:
            good = False
        # Every good time of the forms it knows is read in the step, and no other.
        known = FORMS.fullmatch(text) is not None and 1001 <= int(text[:4]) <= 9998
        assert vouched == (good and known), text
        if vouched:
            assert stamp == utc_stamp(t), text
    # The forms a sensor sends are all read there.
    usual = [good_time(rng) for _ in range(2000)]
    ok, stamps = observations.utc_stamps(usual, NOW, AHEAD_US)
    assert ok.all()
    assert stamps == [utc_stamp(parse_utc(t)) for t in usual]


@pytest.mark.parametrize("seed", range(6))
def test_the_newest_reading_of_each_property_by_time_later_on_a_tie(seed: int) -> None:
    rng = random.Random(seed)
    stamps = sorted(
        utc_stamp(NOW + dt.timedelta(milliseconds=rng.randint(0, 30))) for _ in range(3)
    )
    n = rng.choice([1, 10, 300])
    readings = [
        Reading("c", rng.choice("abcd"), rng.choice("pq"), parse_utc(rng.choice(stamps)), i)
        for i in range(n)
    ]
    if seed % 2:  # in time order, as a batch mostly is
        readings.sort(key=lambda r: r.time)
    batch = Readings.of(readings)
    want: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(readings):  # the brute-force search
        key = (r.collection, r.id, r.property)
        if key not in want or batch.time[i] >= batch.time[want[key]]:
            want[key] = i
    got = batch.newest()
    assert got == want and list(got) == list(want)  # first met first


def test_values_as_json_texts() -> None:
    plain = [1, -0.0, 1e300, 0.1, True, False, None, 2**70, 7.25]
    mixed = [*plain, "on", "a, b", "灯", 'say "hi"', "on"]
    for values in (plain, mixed, []):
        assert Readings([], [], [], [], list(values)).texts() == [json.dumps(v) for v in values]
