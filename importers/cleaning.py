"""Cleaning source values into a schema field's type, noting every value that was changed.

Numbers and dates are converted with numpy and pandas over whole columns; text is cleaned
one *distinct* value at a time (a city file has few distinct materials or statuses), so no
Python loop runs per feature. Values that cannot be kept become unknown (null), and each
such change is counted in a `ValueNote` with examples, for the import report.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from importers.vocabulary import UNKNOWN, boolean, fold, vocabulary
from layers.layer import coerce
from layers.models import Field, FieldType

_NUMBER = re.compile(
    r"^\s*(?:dn|φ|ø)?\s*([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*(mm|cm|m|km|w|kw|in|\"|ft|')?\s*$",
    re.I,
)
# Units written after a number, by the unit in a field's name: the factor to that unit.
_UNITS = {
    "mm": {"": 1.0, "mm": 1.0, "cm": 10.0, "m": 1000.0, "in": 25.4, '"': 25.4},
    "m": {"": 1.0, "m": 1.0, "mm": 0.001, "cm": 0.01, "km": 1000.0, "ft": 0.3048, "'": 0.3048},
    "m2": {"": 1.0},
    "w": {"": 1.0, "w": 1.0, "kw": 1000.0},
    "kmh": {"": 1.0},
}
# Epoch milliseconds are told from years by size: any |value| >= 1e5 is no plausible year.
_EPOCH_MS = 1e5
_MS_PER_DAY = 86_400_000
# Fields holding codes, not prose: upper-cased so `Pvc` and `PVC` are one material.
UPPER_CASE_FIELDS = frozenset({"material"})
_MAX_EXAMPLES = 5


@dataclass
class ValueNote:
    """Values of one field changed the same way, with how many and a few examples."""

    field: str
    message: str
    count: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        """`install_year: 19 values (0) read as unknown: not a plausible year`."""
        ex = ", ".join(self.examples)
        more = "" if len(self.examples) >= self.count else ", ..."
        plural = "value" if self.count == 1 else "values"
        return f"{self.field}: {self.count:,} {plural} ({ex}{more}) {self.message}"


class _Notes:
    """Collects `ValueNote`s of one field by message."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_message: dict[str, ValueNote] = {}

    def add(self, message: str, value: Any, count: int) -> None:
        if count <= 0:
            return
        note = self.by_message.setdefault(message, ValueNote(self.name, message))
        note.count += int(count)
        shown = repr(value) if isinstance(value, str) else str(value)
        if len(note.examples) < _MAX_EXAMPLES and shown not in note.examples:
            note.examples.append(shown)

    def add_mask(self, message: str, values: np.ndarray, mask: np.ndarray) -> None:
        """Note the values where `mask` holds; the most frequent few become the examples."""
        if not mask.any():
            return
        uniq, counts = np.unique(values[mask], return_counts=True)
        top = np.argsort(-counts, kind="stable")[:_MAX_EXAMPLES]
        note = self.by_message.setdefault(message, ValueNote(self.name, message))
        note.count += int(counts.sum())
        for u in uniq[top].tolist():
            shown = repr(u) if isinstance(u, str) else str(_show(u))
            if len(note.examples) < _MAX_EXAMPLES and shown not in note.examples:
                note.examples.append(shown)

    @property
    def notes(self) -> list[ValueNote]:
        return list(self.by_message.values())


def _show(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    return v


def _by_distinct(
    values: pd.Series, fn: Callable[[Any, int], Any]
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Apply `fn(value, count)` to each distinct non-null value; returns codes, counts, results."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    results = [fn(u, c) for u, c in zip(uniques, counts.tolist(), strict=True)]
    return codes, counts, results


def _spread(codes: np.ndarray, results: list[Any], dtype: Any = object) -> np.ndarray:
    """Results of distinct values back onto every row (None/NaN for null rows)."""
    fill: Any = np.nan if dtype is float else None
    table = np.array([*results, fill], dtype=dtype)
    return table[np.where(codes >= 0, codes, len(results))]


def _kind(values: pd.Series) -> str:
    """The broad kind of a source column: number, bool, datetime or text."""
    dt = values.dtype
    if pd.api.types.is_bool_dtype(dt):
        return "bool"
    if pd.api.types.is_numeric_dtype(dt):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(dt):
        return "datetime"
    return "text"


def _unknown_text(notes: _Notes) -> Callable[[Any, int], str | None]:
    """Strip text and turn the words for unknown into None (noted)."""

    def fn(v: Any, n: int) -> str | None:
        s = v.strip() if isinstance(v, str) else _text_of_number(v).strip()
        if fold(s) in UNKNOWN:
            notes.add("read as unknown", v, n)
            return None
        return s

    return fn


# -- text ---------------------------------------------------------------------------------


def _text_of_number(v: Any) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    return str(v)


def _clean_text(values: pd.Series, f: Field, notes: _Notes) -> pd.Series:
    kind = _kind(values)
    if kind == "datetime":
        values = values.dt.strftime("%Y-%m-%d")
    unknown = _unknown_text(notes)
    vocab = vocabulary(f.choices) if f.choices else None

    def fn(v: Any, n: int) -> str | None:
        s = unknown(v if kind == "text" else _text_of_number(v), n)
        if s is None:
            return None
        if vocab is not None:
            c = vocab.normalise(s)
            if c is None:
                notes.add(f"not one of {', '.join(vocab.choices)}; read as unknown", s, n)
            return c
        if f.name in UPPER_CASE_FIELDS:
            return s.upper()
        return s

    codes, _, results = _by_distinct(values, fn)
    return pd.Series(_spread(codes, results), dtype=object)


# -- numbers ------------------------------------------------------------------------------


def _number_of_text(
    notes: _Notes, *, years: bool = False, unit: str | None = None
) -> Callable[[Any, int], float]:
    """Parse one distinct text value as a number (`300`, `300 mm`, `12 in`, `DN300`), in the
    `unit` of the field's name (`mm` for `diameter_mm`); with `years`, a date (`1985-06-01`)
    gives its year. What cannot be read becomes NaN, with a note."""
    unknown = _unknown_text(notes)
    factors = _UNITS.get(unit or "", {"": 1.0})

    def fn(v: Any, n: int) -> float:
        s = unknown(v, n)
        if s is None:
            return np.nan
        m = _NUMBER.match(s)
        if m is not None:
            written = (m.group(2) or "").lower()
            if written not in factors:
                notes.add(f"has a unit that is not {unit}; read as unknown", s, n)
                return np.nan
            if written and factors[written] != 1.0:
                notes.add(f"converted to {unit}", s, n)
            return float(m.group(1)) * factors[written]
        if not years:
            notes.add("is not a number; read as unknown", s, n)
            return np.nan
        t = pd.to_datetime(s, errors="coerce", format="mixed")
        if pd.isna(t):
            notes.add("is neither a year nor a date; read as unknown", s, n)
            return np.nan
        return float(t.year)

    return fn


def _compact_dates(x: np.ndarray) -> np.ndarray:
    """Which numbers are dates written as digits, yyyymmdd (`20180719`)."""
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(x) & (x == np.round(x)) & (x >= 1700_01_01) & (x <= 2100_12_31)
        month = (x // 100) % 100
        day = x % 100
    return whole & (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)


def _years_of_numbers(x: np.ndarray, f: Field, notes: _Notes) -> np.ndarray:
    """Years of numbers: years stay, yyyymmdd dates and epoch milliseconds (negative before
    1970) become years, 0 is the common 'unknown' sentinel."""
    x = x.astype(float)
    out = x.copy()
    compact = _compact_dates(x)
    if compact.any():
        out[compact] = x[compact] // 10000
        notes.add_mask("read as yyyymmdd dates", x, compact)
    ms = np.isfinite(x) & (np.abs(x) >= _EPOCH_MS) & ~compact
    if ms.any():
        days = np.floor(x[ms] / _MS_PER_DAY).astype("int64")
        out[ms] = days.astype("datetime64[D]").astype("datetime64[Y]").astype(int) + 1970
        notes.add_mask("epoch milliseconds read as dates", x, ms)
    zero = x == 0
    notes.add_mask("read as unknown (0 is no year)", x, zero)
    out[zero] = np.nan
    return out


def _clean_number(values: pd.Series, f: Field, notes: _Notes) -> pd.Series:
    kind = _kind(values)
    is_year = f.type is FieldType.INTEGER and f.name.endswith("_year")
    if kind == "datetime":
        if is_year:
            x = values.dt.year.to_numpy(dtype=float, na_value=np.nan, copy=True)
        else:
            notes.add_mask(
                "is a date, not a number; read as unknown",
                values.astype(str).to_numpy(),
                values.notna().to_numpy(),
            )
            x = np.full(len(values), np.nan)
    elif kind in ("number", "bool"):
        x = values.to_numpy(dtype=float, na_value=np.nan, copy=True)
        if is_year:
            x = _years_of_numbers(x, f, notes)
    elif is_year:
        codes, _, results = _by_distinct(values, _number_of_text(notes, years=True))
        x = _years_of_numbers(_spread(codes, results, float), f, notes)
    else:
        unit = f.name.rsplit("_", 1)[-1] if "_" in f.name else None
        codes, _, results = _by_distinct(values, _number_of_text(notes, unit=unit))
        x = _spread(codes, results, float)
    lo = f.minimum if f.minimum is not None else -np.inf
    hi = f.maximum if f.maximum is not None else np.inf
    with np.errstate(invalid="ignore"):
        out_of_range = np.isfinite(x) & ((x < lo) | (x > hi))
    if out_of_range.any():
        span = f"{_show(f.minimum) if f.minimum is not None else ''}–{_show(f.maximum) if f.maximum is not None else ''}"
        notes.add_mask(f"outside {span}; read as unknown", x, out_of_range)
        x[out_of_range] = np.nan
    if f.type is FieldType.INTEGER:
        with np.errstate(invalid="ignore"):
            fractional = np.isfinite(x) & (x != np.round(x))
        notes.add_mask("is not a whole number; read as unknown", x, fractional)
        x[fractional] = np.nan
    x[~np.isfinite(x)] = np.nan
    return pd.Series(x)


# -- booleans and dates ---------------------------------------------------------------------


def _clean_bool(values: pd.Series, f: Field, notes: _Notes) -> pd.Series:
    kind = _kind(values)
    if kind == "bool":
        return values.astype("boolean")
    unknown = _unknown_text(notes)

    def fn(v: Any, n: int) -> bool | None:
        s = unknown(_text_of_number(v) if kind != "text" else v, n)
        if s is None:
            return None
        b = boolean(s)
        if b is None:
            notes.add("is not yes/no; read as unknown", s, n)
        return b

    codes, _, results = _by_distinct(values, fn)
    return pd.Series(_spread(codes, results), dtype=object)


def _clean_date(values: pd.Series, f: Field, notes: _Notes) -> pd.Series:
    kind = _kind(values)
    if kind == "datetime":
        s = values
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return s.astype("datetime64[ms]")
    if kind in ("number", "bool"):
        x = values.to_numpy(dtype=float, na_value=np.nan, copy=True)
        compact = _compact_dates(x)
        ms = np.isfinite(x) & (np.abs(x) >= _EPOCH_MS) & ~compact
        years = np.isfinite(x) & ~ms & (x >= 1700) & (x <= 2100) & (x == np.round(x))
        out = np.full(len(x), np.datetime64("NaT"), dtype="datetime64[ms]")
        out[ms] = x[ms].astype("int64").astype("datetime64[ms]")
        if compact.any():
            digits = pd.Series(x[compact].astype("int64").astype(str))
            out[compact] = pd.to_datetime(digits, format="%Y%m%d", errors="coerce").to_numpy(
                dtype="datetime64[ms]"
            )
            notes.add_mask("read as yyyymmdd dates", x, compact)
        out[years] = (
            (x[years].astype("int64") - 1970).astype("datetime64[Y]").astype("datetime64[ms]")
        )
        notes.add_mask("epoch milliseconds read as dates", x, ms)
        notes.add_mask("a year read as 1 January of it", x, years)
        notes.add_mask(
            "is not a date; read as unknown", x, np.isfinite(x) & ~ms & ~years & ~compact
        )
        return pd.Series(out)
    unknown = _unknown_text(notes)

    def fn(v: Any, n: int) -> Any:
        s = unknown(v, n)
        if s is None:
            return pd.NaT
        t = pd.to_datetime(s, errors="coerce", format="mixed")
        if pd.isna(t):
            notes.add("is not a date; read as unknown", s, n)
            return pd.NaT
        if t.tzinfo is not None:
            t = t.tz_convert("UTC").tz_localize(None)
        return t

    codes, _, results = _by_distinct(values, fn)
    return pd.Series(pd.to_datetime(pd.Series(_spread(codes, results))), dtype="datetime64[ms]")


_CLEANERS = {
    FieldType.STRING: _clean_text,
    FieldType.INTEGER: _clean_number,
    FieldType.FLOAT: _clean_number,
    FieldType.BOOLEAN: _clean_bool,
    FieldType.DATE: _clean_date,
    FieldType.DATETIME: _clean_date,
}


def clean(values: pd.Series, f: Field) -> tuple[pd.Series, list[ValueNote]]:
    """`values` cleaned into field `f`'s dtype, and notes of every value that changed."""
    notes = _Notes(f.name)
    values = values.reset_index(drop=True)
    out = _CLEANERS[f.type](values, f, notes)
    if f.type is FieldType.DATETIME:
        out = pd.to_datetime(out).dt.tz_localize("UTC")
    return coerce(out, f.type), notes.notes


def recognised_share(values: pd.Series, f: Field) -> float:
    """Share of non-null values of `values` that an enumerated field `f` recognises (0..1)."""
    if not f.choices:
        return 0.0
    vocab = vocabulary(f.choices)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    total = int(counts.sum())
    if total == 0:
        return 0.0
    hits = sum(
        c
        for u, c in zip(uniques, counts.tolist(), strict=True)
        if vocab.normalise(_text_of_number(u) if not isinstance(u, str) else u) is not None
    )
    return hits / total
