"""Which features of a layer an items request selects: bbox, property equality, time, CQL2.

Pure and vectorised: every condition is a boolean mask over the bbox candidates, so the
number matched is a count of the mask, never of serialised features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import shapely

from layers.layer import Layer
from layers.life import (  # noqa: F401  (what `datetime` matches is part of selecting)
    END_NAMES,
    ENDED,
    INSTALL_YEAR,
    START_NAMES,
    Life,
    life,
)
from layers.models import Bounds, FieldType, LayerSchema
from layers.where import Equals, Where
from twin.cql2 import Filter, evaluate, lower, scalar
from twin.errors import InvalidParameter


class Interval(NamedTuple):
    """A closed time interval in UTC; None is open-ended."""

    start: pd.Timestamp | None
    end: pd.Timestamp | None


@dataclass(frozen=True)
class Selection:
    """The conditions of one items request, all of which a feature must meet."""

    bbox: Bounds | None = None
    equals: Mapping[str, str] = field(default_factory=dict)
    interval: Interval | None = None
    filter: Filter | None = None


def parse_datetime(value: str) -> Interval:
    """An OGC `datetime` value (instant, `start/end`, `../end`, `start/..`) as an `Interval`.

    A date without a time stands for that whole (UTC) day.
    """
    text = value.strip()
    if "/" in text:
        parts = text.split("/")
        if len(parts) != 2:
            raise InvalidParameter(f"datetime {value!r}: an interval is start/end")
        start = _instant(parts[0], end=False)
        end = _instant(parts[1], end=True)
        if start is not None and end is not None and start > end:
            raise InvalidParameter(f"datetime {value!r}: the start is after the end")
        if start is None and end is None:
            return Interval(None, None)
        return Interval(start, end)
    start, end = _instant(text, end=False), _instant(text, end=True)
    if start is None:
        raise InvalidParameter(f"datetime {value!r} is not a date, a time or an interval")
    return Interval(start, end)


def _instant(text: str, *, end: bool) -> pd.Timestamp | None:
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        t = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise InvalidParameter(f"datetime: {text!r} is not an RFC 3339 date or time") from None
    if t is pd.NaT:
        raise InvalidParameter(f"datetime: {text!r} is not an RFC 3339 date or time")
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    date_only = len(text) <= 10
    if date_only and end:
        t = t + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1)
    return t


def coerce_value(schema: LayerSchema, name: str, raw: str) -> Any:
    """A query-string value as the type of field `name` (for `property=value` equality)."""
    ftype = schema.field(name).type
    text = raw.strip()
    try:
        if ftype is FieldType.INTEGER:
            return int(text)
        if ftype is FieldType.FLOAT:
            v = float(text)
            if not np.isfinite(v):
                raise ValueError
            return v
        if ftype is FieldType.BOOLEAN:
            low = text.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError
        if ftype is FieldType.DATE:
            return pd.Timestamp(text).normalize().tz_localize(None)
        if ftype is FieldType.DATETIME:
            t = pd.Timestamp(text)
            return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    except (ValueError, TypeError):
        raise InvalidParameter(
            f"{name}={raw!r}: {name} is a {ftype.value} field; give a {ftype.value}"
        ) from None
    return raw


def select(
    layer: Layer,
    sel: Selection,
    *,
    within: Callable[..., np.ndarray] | None = None,
) -> np.ndarray:
    """Sorted row numbers of the features of `layer` meeting every condition of `sel`."""
    if sel.filter is not None:
        sel.filter.check(layer.schema)
    for name in sel.equals:
        if name not in layer.schema.field_names:
            raise InvalidParameter(f"{name!r} is not a property of {layer.name!r}")
    if sel.bbox is not None:
        rows = layer.query(shapely.box(*sel.bbox), "intersects")
    else:
        rows = np.arange(len(layer), dtype=np.int64)
    if len(rows) == 0:
        return rows
    mask = np.ones(len(rows), dtype=bool)
    whole = sel.bbox is None
    for name, raw in sel.equals.items():
        value = coerce_value(layer.schema, name, raw)
        col = layer.attrs[name] if whole else layer.attrs[name].iloc[rows]
        mask &= np.asarray((col == value).fillna(False), dtype=bool)
    if sel.interval is not None:
        lived = life(layer)
        start = lived.start if whole else lived.start.iloc[rows]
        end = lived.end if whole else lived.end.iloc[rows]
        lo, hi = sel.interval
        known = (start.notna() | end.notna()).to_numpy()
        if lo is not None:
            # An open end (no end date) still runs; a missing start began long ago.
            mask &= np.asarray((end.isna() | (end >= lo)).to_numpy(), dtype=bool)
        if hi is not None:
            mask &= np.asarray((start.isna() | (start <= hi)).to_numpy(), dtype=bool)
        mask &= known
    if sel.filter is not None:
        mask &= evaluate(sel.filter, layer, None if whole else rows, within=within)
    return rows[mask]


def where_of(sel: Selection, schema: LayerSchema) -> Where:
    """`sel` over a layer of `schema` as a store answers it in one query (`Store.select`): the
    same checks and errors as `select`, values typed as `select` types them; `Uncompiled` for
    what only the in-memory evaluator answers exactly (see `twin.cql2.lower`)."""
    flt = None if sel.filter is None else lower(sel.filter, schema)
    equals = []
    for name, raw in sel.equals.items():
        if name not in schema.field_names:
            raise InvalidParameter(f"{name!r} is not a property of {schema.name!r}")
        ftype = schema.field(name).type
        value = coerce_value(schema, name, raw)
        equals.append(Equals(name, ftype, value if isinstance(value, int) else scalar(value)))
    interval = None
    if sel.interval is not None:
        lo, hi = (None if t is None else scalar(t) for t in sel.interval)
        interval = (lo, hi)
    bbox = None if sel.bbox is None else Bounds(*(float(v) for v in sel.bbox))
    return Where(bbox, tuple(equals), interval, flt)  # type: ignore[arg-type]
