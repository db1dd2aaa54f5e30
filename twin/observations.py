"""Readings of the live twin: batches of `{collection, id, time, property, value}` checked one
by one against the layers and their schemas. Each reading lands whole or is rejected with its
place in the batch and the reason; the store keeps every reading as history and makes the
newest of each feature's property (by its time) the feature's state."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter
from typing import Any

import numpy as np

from layers.catalog import Catalog, Lens
from layers.layer import Layer
from layers.models import Field, FieldType, Reading, Readings, parse_utc, utc_stamp
from twin.errors import InvalidParameter

KEYS = ("collection", "id", "time", "property", "value")
_KEYSET = frozenset(KEYS)
FUTURE_S = 300.0
"""A reading stamped further ahead than this (a sensor clock gone wrong) is refused."""


@dataclass
class Batch:
    """A batch of readings checked: those that land (as columns) and those refused, by index."""

    accepted: Readings = field(default_factory=lambda: Readings([], [], [], [], []))
    rejected: list[dict[str, Any]] = field(default_factory=list)


def readings_of(body: Any, max_readings: int) -> list[Any]:
    """The readings of a request body: a JSON array, or `{"observations": [...]}`."""
    if isinstance(body, dict) and set(body) == {"observations"}:
        body = body["observations"]
    if not isinstance(body, list):
        raise InvalidParameter(
            'send a JSON array of readings (or {"observations": [...]}), each '
            '{"collection", "id", "time", "property", "value"}'
        )
    if len(body) > max_readings:
        raise InvalidParameter(
            f"{len(body)} readings in one batch; at most {max_readings} (TWIN_MAX_READINGS)"
        )
    return body


def check(catalog: Catalog, scope: Lens, items: list[Any], now: dt.datetime) -> Batch:
    """Each reading checked against the layers `scope` may see and their schemas.

    Column by column first (each member over the whole batch, the ids looked up and the
    times read in one step each): the readings that finds good land as they are. Each of the
    others is checked on its own (`_reading`), which lands it or says why not."""
    layers = batch_layers(catalog, scope, items)
    fields = {n: {f.name: f for f in lyr.schema.fields} for n, lyr in layers.items()}
    at, columns = _members(items)
    sure, stamps = _vouched(layers, fields, columns, now)
    batch = Batch()
    names, ids, _, props, values = columns
    if len(at) == len(items) and sure.all():  # a working sensor gateway's batch
        batch.accepted = Readings(list(names), list(ids), list(props), stamps, list(values))
        return batch
    landed = {
        at[j]: (names[j], ids[j], props[j], stamps[j], values[j])
        for j in np.flatnonzero(sure).tolist()
    }
    for i in sorted(set(range(len(items))).difference(landed)):
        try:
            r = _reading(layers, fields, items[i], now)
        except ValueError as exc:
            batch.rejected.append({"index": i, "reason": str(exc)})
        else:
            landed[i] = (r.collection, r.id, r.property, utc_stamp(r.time), r.value)
    if landed:
        rows = [landed[i] for i in sorted(landed)]
        batch.accepted = Readings(*(list(col) for col in zip(*rows, strict=True)))
    return batch


def batch_layers(catalog: Catalog, scope: Lens, items: list[Any]) -> dict[str, Layer]:
    """The layers a batch names, as `scope` sees them: those held, or (a catalog not holding
    its layers) each holding at least the features the batch names."""
    if catalog.holds:
        return catalog.layers(scope)
    wanted: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, dict):
            name, fid = item.get("collection"), item.get("id")
            if isinstance(name, str) and isinstance(fid, str):
                wanted.setdefault(name, []).append(fid)
    heads = catalog.heads(scope)
    return {n: catalog.picked(n, scope, ids) for n, ids in wanted.items() if n in heads}


_MEMBERS = itemgetter(*KEYS)


def _members(items: list[Any]) -> tuple[list[int], list[tuple[Any, ...]]]:
    """The places of the readings that are objects of the five members and no others, and
    their members column by column (in the order of `KEYS`)."""
    rows: list[tuple[Any, ...]] | None = None
    if set(map(type, items)) == {dict} and set(map(len, items)) == {len(KEYS)}:
        try:  # five members each: the five asked for, unless one is missing
            rows = list(map(_MEMBERS, items))
            at = list(range(len(items)))
        except KeyError:
            rows = None
    if rows is None:
        at = [i for i, x in enumerate(items) if type(x) is dict and x.keys() == _KEYSET]
        rows = [_MEMBERS(items[i]) for i in at]
    return at, list(zip(*rows, strict=True)) if rows else [()] * len(KEYS)


def _vouched(
    layers: dict[str, Layer],
    fields_of: dict[str, dict[str, Field]],
    columns: list[tuple[Any, ...]],
    now: dt.datetime,
) -> tuple[np.ndarray, list[str]]:
    """Which readings (rows of `columns`) checks over whole columns find good, and each
    one's time as the store writes times (`utc_stamp`; "" where not found good). They vouch
    for readings `_reading` lands alike, and leave every doubt to it."""
    names, ids, times, props, values = columns
    m = len(names)
    sure = _of_type(names, str) & _of_type(ids, str) & _of_type(props, str)
    sure &= _of_type(times, str)
    for name, rows in _groups(names, np.flatnonzero(sure)).items():
        layer = layers.get(name)
        if layer is None:
            sure[rows] = False
            continue
        fids = _at(ids, rows)
        if not layer.id_set.issuperset(fids):
            known = np.fromiter(map(layer.id_set.__contains__, fids), bool, len(rows))
            sure[rows[~known]] = False
        have = fields_of[name]
        for prop, where in _groups(props, rows[sure[rows]]).items():
            f = have.get(prop)
            sure[where] = False if f is None else _fitting(_at(values, where), f)
    where = np.flatnonzero(sure)
    found, got = utc_stamps(_at(times, where), now, round(FUTURE_S * 1e6))
    sure[where] = found
    if len(where) == m:
        return sure, got
    stamps = [""] * m
    for j, stamp in zip(where.tolist(), got, strict=True):
        stamps[j] = stamp
    return sure, stamps


def _at(column: tuple[Any, ...], rows: np.ndarray) -> list[Any]:
    """The values of `column` in rows `rows` (ascending, each once)."""
    if len(rows) == len(column):
        return list(column)
    return list(map(column.__getitem__, rows.tolist()))


def _of_type(column: tuple[Any, ...], kind: type) -> np.ndarray:
    """Which values of `column` are of type `kind` (not of a subclass)."""
    if set(map(type, column)) == {kind}:
        return np.ones(len(column), dtype=bool)
    return np.fromiter((type(v) is kind for v in column), bool, len(column))


def _groups(column: tuple[Any, ...], rows: np.ndarray) -> dict[Any, np.ndarray]:
    """The rows `rows` of `column` (of texts) by value."""
    picked = _at(column, rows)
    distinct = set(picked)
    if len(distinct) <= 1:
        return {v: rows for v in distinct}
    out: dict[Any, list[int]] = {}
    for j, v in zip(rows.tolist(), picked, strict=True):
        out.setdefault(v, []).append(j)
    return {v: np.array(js) for v, js in out.items()}


_NONE = type(None)


def _fitting(values: list[Any], f: Field) -> np.ndarray:
    """Which of `values` `field_value` takes as they are for field `f` (some it takes may be
    left out: dates, and numbers past what a float holds exactly)."""
    n = len(values)
    kinds = set(map(type, values))
    if f.type is FieldType.STRING:
        if kinds <= {str, _NONE} and (f.choices is None or {*f.choices, None} >= set(values)):
            return np.ones(n, dtype=bool)
        return np.fromiter(
            (
                v is None or (type(v) is str and (f.choices is None or v in f.choices))
                for v in values
            ),
            bool,
            n,
        )
    if f.type is FieldType.BOOLEAN:
        return np.fromiter((v is None or type(v) is bool for v in values), bool, n)
    fine = np.fromiter((v is None for v in values), bool, n)
    if f.type not in (FieldType.INTEGER, FieldType.FLOAT):
        return fine  # dates and times: each on its own
    allowed = {int} if f.type is FieldType.INTEGER else {int, float}
    number = np.fromiter((type(v) in allowed for v in values), bool, n)
    try:
        x = np.array(list(compress(values, number.tolist())), dtype=np.float64)
    except OverflowError:  # an integer past a float
        return fine
    ok = np.isfinite(x) & (np.abs(x) <= _EXACT)  # an integer's float is then itself
    for bound, within in ((f.minimum, np.greater_equal), (f.maximum, np.less_equal)):
        if bound is not None:
            if not (isinstance(bound, float) or abs(bound) <= _EXACT):
                return fine
            ok &= within(x, bound)
    fine[number] = ok
    return fine


_EXACT = 2.0**53
"""Integers up to this are floats exactly."""


def _reading(
    layers: dict[str, Layer], fields_of: dict[str, dict[str, Any]], item: Any, now: dt.datetime
) -> Reading:
    if not isinstance(item, dict):
        raise ValueError("a reading is an object {collection, id, time, property, value}")
    if item.keys() != _KEYSET:  # one comparison for the readings that are well formed
        missing = [k for k in KEYS if k not in item]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        unknown = sorted(set(item) - _KEYSET)
        raise ValueError(f"unknown member {', '.join(map(repr, unknown))}")
    name, fid, prop = item["collection"], item["id"], item["property"]
    if not isinstance(name, str) or name not in layers:
        raise ValueError(f"no collection {name!r}")
    layer = layers[name]
    if not isinstance(fid, str) or fid not in layer.id_set:
        raise ValueError(f"no feature {fid!r} in {name}")
    fields = fields_of[name]
    if not isinstance(prop, str) or prop not in fields:
        raise ValueError(
            f"{name} has no property {prop!r}; it has {', '.join(sorted(fields))}"[:300]
        )
    time = _time(item["time"], now)
    f = fields[prop]
    return Reading(name, fid, prop, time, field_value(item["value"], f.type, f.choices, f))


def _utc(value: Any, what: str) -> dt.datetime:
    """An ISO 8601 text with its UTC offset, as a UTC time; ValueError saying `what` it is."""
    if not isinstance(value, str):
        raise ValueError(f"{what} an ISO 8601 text with its UTC offset, not {value!r}")
    try:
        return parse_utc(value)
    except ValueError as exc:
        raise ValueError(f"{what} a time with its UTC offset: {exc}") from None


def _time(value: Any, now: dt.datetime) -> dt.datetime:
    t = _utc(value, "time is")
    if (t - now).total_seconds() > FUTURE_S:
        raise ValueError(f"time {value!r} is in the future")
    return t


def field_value(value: Any, ftype: FieldType, choices: tuple[str, ...] | None, f: Any) -> Any:
    """`value` as stored for a field of `ftype`; ValueError naming what is wrong."""
    if value is None:
        return None
    what = f"{f.name} takes"
    if ftype is FieldType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"{what} text, not {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"{what} one of {', '.join(choices)}, not {value!r}")
        return value
    if ftype is FieldType.BOOLEAN:
        if not isinstance(value, bool):
            raise ValueError(f"{what} true or false, not {value!r}")
        return value
    if ftype in (FieldType.INTEGER, FieldType.FLOAT):
        number = ftype is FieldType.FLOAT and isinstance(value, int | float)
        if isinstance(value, bool) or not (number or isinstance(value, int)):
            kind = "a number" if ftype is FieldType.FLOAT else "a whole number"
            raise ValueError(f"{what} {kind}, not {value!r}")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ValueError(f"{what} a number a 64-bit integer holds, not {str(value)[:40]}...")
        if not math.isfinite(value):
            raise ValueError(f"{what} a finite number, not {value!r}")
        if f.minimum is not None and value < f.minimum:
            raise ValueError(f"{what} at least {f.minimum:g}, not {value!r}")
        if f.maximum is not None and value > f.maximum:
            raise ValueError(f"{what} at most {f.maximum:g}, not {value!r}")
        return value
    if ftype is FieldType.DATE:
        try:
            return dt.date.fromisoformat(value).isoformat()
        except (TypeError, ValueError):
            raise ValueError(f"{what} an ISO 8601 date, not {value!r}") from None
    return utc_stamp(_utc(value, what))


# -- times, column by column ------------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LONGEST = 32
"""Characters of the longest time read column-wise (`...SS.ffffff+HH:MM`)."""
_STAMP = np.frombuffer("0000-00-00T00:00:00.000Z".encode("utf-32-le"), dtype=np.uint32)
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


@dataclass(frozen=True)
class _Layout:
    """One form of time text: `body` characters of date and time (`YYYY-MM-DDTHH:MM:SS`,
    then `.fff` or `.ffffff`), then `Z` or an offset `+HH:MM` / `-HH:MM`. Per column the
    range of codes allowed (`low`, `high`), and the weight of its digit in year, month, day,
    hour, minute, second, microsecond and offset minutes (`weights`)."""

    body: int
    zulu: bool
    low: np.ndarray
    high: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, body: int, zulu: bool) -> _Layout:
        digits: list[tuple[int, int, int]] = []  # column, field, weight
        for at, (start, width) in enumerate(((0, 4), (5, 2), (8, 2), (11, 2), (14, 2), (17, 2))):
            digits += [(start + k, at, 10 ** (width - 1 - k)) for k in range(width)]
        digits += [(20 + k, 6, 10 ** (5 - k)) for k in range(body - 20)]
        marks = {4: "-", 7: "-", 10: "T", 13: ":", 16: ":"} | ({19: "."} if body > 19 else {})
        if zulu:
            marks[body] = "Z"
        else:
            marks[body + 3] = ":"
            digits += [(body + 1, 7, 600), (body + 2, 7, 60), (body + 4, 7, 10), (body + 5, 7, 1)]
        low = np.zeros(_LONGEST, dtype=np.uint32)  # past the end: none (NUL)
        high = np.zeros(_LONGEST, dtype=np.uint32)
        weights = np.zeros((_LONGEST, 8), dtype=np.float32)  # sums below 2**24: exact
        for col, at, w in digits:
            low[col], high[col], weights[col, at] = ord("0"), ord("9"), w
        for col, mark in marks.items():
            low[col] = high[col] = ord(mark)
        if not zulu:
            low[body], high[body] = ord("+"), ord("-")  # and "," between, refused apart
        return cls(body, zulu, low, high, weights)

    @property
    def length(self) -> int:
        return self.body + (1 if self.zulu else 6)


_LAYOUTS = {
    (lay.length, lay.zulu): lay
    for lay in (_Layout.of(body, zulu) for body in (19, 23, 26) for zulu in (True, False))
}


def utc_stamps(texts: list[str], now: dt.datetime, ahead_us: int) -> tuple[np.ndarray, list[str]]:
    """Times as texts read in one step: which are ISO 8601 times with their UTC offsets of
    the usual forms (`2026-12-07T10:00:00Z`, `...T10:00:00.250+08:00`: no fraction or 3 or 6
    digits, `Z` or `±HH:MM`; years 1001 to 9998) no more than `ahead_us` after `now`, and
    each as `utc_stamp(parse_utc(text))` ("" for the others, which may be times of other
    forms: `_reading` reads those)."""
    m = len(texts)
    if not m:
        return np.zeros(0, dtype=bool), []
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=m)
    fits = lengths <= _LONGEST
    if not fits.all():
        texts = [t if f else "" for t, f in zip(texts, fits.tolist(), strict=True)]
        lengths[~fits] = 0
    codes = np.array(texts, dtype=f"U{_LONGEST}").view(np.uint32).reshape(m, _LONGEST)
    zulu = codes[np.arange(m), np.maximum(lengths - 1, 0)] == ord("Z")
    forms = lengths * 2 + zulu
    if (forms == forms[0]).all():
        groups: list[tuple[int, Any]] = [(int(forms[0]), slice(None))]
    else:
        groups = [(int(k), np.flatnonzero(forms == k)) for k in np.unique(forms)]
    ok = np.zeros(m, dtype=bool)
    us = np.zeros(m, dtype=np.int64)  # since 1970, UTC
    offset = np.zeros(m, dtype=np.int64)  # minutes
    body = np.zeros(m, dtype=np.int64)
    for form, rows in groups:
        lay = _LAYOUTS.get((form // 2, bool(form % 2)))
        if lay is None:
            continue
        c = codes[rows]
        good = ((c >= lay.low) & (c <= lay.high)).all(axis=1)
        digits = (c.view(np.int32) - ord("0")).astype(np.float32)
        digits[~good] = 0
        year, month, day, hour, minute, second, micro, east = (
            (digits @ lay.weights).astype(np.int64).T
        )
        good &= (year >= 1001) & (year <= 9998) & (month >= 1) & (month <= 12) & (day >= 1)
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        good &= day <= _MONTH_DAYS[np.clip(month, 0, 12)] + (leap & (month == 2))
        good &= (hour <= 23) & (minute <= 59) & (second <= 59)
        good &= east < 24 * 60  # (as `datetime` takes it: +05:75 is +06:15)
        if not lay.zulu:
            sign = c[:, lay.body]
            good &= sign != ord(",")
            east = np.where(sign == ord("-"), -east, east)
        # Days since 1970 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
        y = year - (month <= 2)
        era = y // 400
        yoe = y - era * 400
        doy = (153 * np.where(month > 2, month - 3, month + 9) + 2) // 5 + day - 1
        days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
        seconds = days * 86400 + hour * 3600 + minute * 60 + second - east * 60
        us[rows] = seconds * 1_000_000 + micro
        ok[rows], offset[rows], body[rows] = good, east, lay.body
    ok &= us - (now - _EPOCH) // dt.timedelta(microseconds=1) <= ahead_us
    # A UTC time's stamp is its own text to the millisecond; the others' made from the time.
    out = codes[:, :24].copy()
    out[:, 23] = ord("Z")
    whole = body == 19
    if whole.any():
        out[whole, 19:23] = _STAMP[19:23]
    moved = ok & (offset != 0)
    if moved.any():
        out[moved] = _stamp_codes(us[moved] // 1000)
    return ok, out.view("U24").ravel().tolist()


def _stamp_codes(ms: np.ndarray) -> np.ndarray:
    """UTC times (ms since 1970, years 1000 to 9999) as the codes of their stamps."""
    days, in_day = np.divmod(ms, 86_400_000)
    # The date of a day since 1970 (H. Hinnant's civil_from_days).
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    second, milli = np.divmod(in_day, 1000)
    hour, second = np.divmod(second, 3600)
    minute, second = np.divmod(second, 60)
    out = np.empty((len(ms), 24), dtype=np.uint32)
    out[:] = _STAMP
    for start, v, width in (
        (0, year, 4),
        (5, month, 2),
        (8, day, 2),
        (11, hour, 2),
        (14, minute, 2),
        (17, second, 2),
        (20, milli, 3),
    ):
        for k in range(width - 1, -1, -1):
            v, digit = np.divmod(v, 10)
            out[:, start + k] = digit + ord("0")
    return out
