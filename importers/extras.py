"""Source columns no schema field takes, kept as typed extra attributes of the layer.

An extra keeps its column's name, made safe only where it must be: not empty, no control
characters, and no clash (case-insensitive, as SQLite and most GIS formats compare column
names) with the layer's declared fields, the reserved names (`id`, `geom`, `source`, ...) or
another column. Its type (integer, float, text, date, datetime, boolean) is read from its
values: a text column whose every value is a plain integer is an integer column, and so on.
A column kept by an earlier import keeps its name, and its type widens when the new values
need it (integer + float -> float, anything else mixed -> text).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from layers.layer import coerce, json_value
from layers.models import Field, FieldType, LayerSchema
from layers.schemas import RESERVED

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_INTEGER = re.compile(r"[-+]?(0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)")
_ZERO_LED = re.compile(r"[-+]?0\d")  # `0012`: a code, not a number
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BOOLEAN = {"true": True, "false": False}
# Where a name clashes, this goes between it and a number (`NAME` of grids -> `NAME_src`).
_CLASH_SUFFIX = "_src"
_MAX_NAME = 63


@dataclass
class Extras:
    """The extra attributes of one import: their fields, source columns and typed values."""

    fields: list[Field] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    """extra attribute name -> the source column it holds"""
    values: dict[str, pd.Series] = field(default_factory=dict)
    """extra attribute name -> its values, in the dtype of its field"""


def _base_name(column: object) -> str:
    """A column name without control characters or surrounding blanks; `column` when empty."""
    name = _CONTROL.sub("", str(column)).strip()
    # Names GDAL could not decode carry lone surrogates, which no UTF-8 store can hold.
    name = name.encode("utf-8", "replace").decode("utf-8")
    return name[:_MAX_NAME] or "column"


def _whole(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values)) and np.all(values % 1 == 0))


def infer_type(values: pd.Series) -> FieldType:
    """The type of an extra attribute from its source values (text when they are mixed)."""
    dtype = values.dtype
    present = values.dropna()
    if pd.api.types.is_bool_dtype(dtype):
        return FieldType.BOOLEAN
    if pd.api.types.is_integer_dtype(dtype):
        return FieldType.INTEGER
    if pd.api.types.is_float_dtype(dtype):
        if not len(present):
            return FieldType.STRING
        nums = present.to_numpy(dtype=np.float64)
        if _whole(nums) and np.all(np.abs(nums) < 2**53):
            return FieldType.INTEGER
        return FieldType.FLOAT
    if pd.api.types.is_datetime64_any_dtype(dtype):
        if getattr(values.dt, "tz", None) is None and (present == present.dt.normalize()).all():
            return FieldType.DATE
        return FieldType.DATETIME
    if not len(present):
        return FieldType.STRING
    kinds = {type(v) for v in present.tolist()}
    if all(issubclass(k, bool | np.bool_) for k in kinds):
        return FieldType.BOOLEAN
    if all(issubclass(k, int | np.integer) and not issubclass(k, bool) for k in kinds):
        return FieldType.INTEGER
    if all(issubclass(k, int | float | np.number) and not issubclass(k, bool) for k in kinds):
        return infer_type(pd.Series(present.tolist(), dtype=np.float64))
    if kinds != {str}:
        return FieldType.STRING
    # Text columns are read by their distinct values: few, as a rule.
    texts = pd.Series(pd.unique(present), dtype=object)
    if texts.str.lower().isin(list(_BOOLEAN)).all():
        return FieldType.BOOLEAN
    if texts.str.fullmatch(_INTEGER).all():
        return FieldType.INTEGER
    if (texts.str.fullmatch(_FLOAT) & ~texts.str.match(_ZERO_LED)).all():
        return FieldType.FLOAT
    if (
        texts.str.fullmatch(_DATE).all()
        and pd.to_datetime(texts, errors="coerce", format="%Y-%m-%d").notna().all()
    ):
        return FieldType.DATE
    return FieldType.STRING


def widen(a: FieldType, b: FieldType) -> FieldType:
    """The type that holds the values of both `a` and `b`."""
    if a is b:
        return a
    pair = {a, b}
    if pair == {FieldType.INTEGER, FieldType.FLOAT}:
        return FieldType.FLOAT
    if pair == {FieldType.DATE, FieldType.DATETIME}:
        return FieldType.DATETIME
    return FieldType.STRING


def _text(v: object) -> str:
    """A source value as text: numbers as JSON writes them (5.0 -> 5), dates in ISO 8601."""
    if isinstance(v, str):
        return v
    j = json_value(v)
    if isinstance(j, bool):
        return "true" if j else "false"
    return str(j)


def typed_values(values: pd.Series, ftype: FieldType) -> pd.Series:
    """`values` in the dtype of `ftype`, as `infer_type` (or a wider type) read them."""
    s = values.reset_index(drop=True)
    if ftype is FieldType.STRING:
        if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
            return coerce(s, ftype)
        return coerce(s.map(_text, na_action="ignore").astype(object).where(s.notna(), None), ftype)
    if ftype is FieldType.BOOLEAN:
        if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            s = s.map(
                lambda v: _BOOLEAN.get(v.lower()) if isinstance(v, str) else bool(v),
                na_action="ignore",
            )
        return coerce(s.astype(object).where(s.notna(), None), ftype)
    if ftype in (FieldType.INTEGER, FieldType.FLOAT):
        if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            s = pd.to_numeric(s.astype(object).where(s.notna(), None), errors="coerce")
        return coerce(s, ftype)
    if not pd.api.types.is_datetime64_any_dtype(s.dtype):
        s = pd.to_datetime(s, errors="coerce", utc=ftype is FieldType.DATETIME)
    return coerce(s, ftype)


def keep_extras(
    frame: pd.DataFrame,
    columns: Sequence[str],
    declared: LayerSchema,
    stored: LayerSchema | None,
) -> Extras:
    """Extra attributes for `columns` of `frame`, beside `declared`'s fields.

    `stored` is the layer as already stored (None for a new layer): a column it keeps as an
    extra (compared case-insensitively) is kept under the same name, its type widened where
    the new values need it.
    """
    earlier_of: dict[str, Field] = {}
    for f in stored.extras if stored is not None else ():
        for alias in (f.name, *f.aliases):
            earlier_of.setdefault(_base_name(alias).casefold(), f)
    taken = {f.name.casefold() for f in declared.fields} | set(RESERVED)
    # A column keeps its own name where it can, so no clash renames another onto it.
    others = {_base_name(c).casefold() for c in columns} | {
        f.name.casefold() for f in earlier_of.values()
    }
    out = Extras()
    for column in columns:
        base = _base_name(column)
        key = base.casefold()
        earlier = earlier_of.get(key)
        if earlier is not None and earlier.name.casefold() not in taken:
            name = earlier.name
        elif key not in taken:
            name, earlier = base, None
        else:
            stem = base[: _MAX_NAME - len(_CLASH_SUFFIX) - 3] + _CLASH_SUFFIX
            name, k = stem, 2
            while name.casefold() in taken or name.casefold() in others:
                name, k = f"{stem}{k}", k + 1
            earlier = None
        taken.add(name.casefold())
        ftype = infer_type(frame[column])
        if earlier is not None:
            # A column empty throughout says nothing of its type.
            has_values = bool(frame[column].notna().any())
            ftype = widen(earlier.type, ftype) if has_values else earlier.type
        out.fields.append(
            Field(name, ftype, f"Source column {column!s}", aliases=(str(column),), extra=True)
        )
        out.columns[name] = str(column)
        out.values[name] = typed_values(frame[column], ftype)
    return out
