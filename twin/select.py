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

from layers.layer import UPDATED, Layer
from layers.models import Bounds, Field, FieldType, LayerSchema
from twin.cql2 import Filter, evaluate
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


INSTALL_YEAR = "install_year"
START_NAMES = ("start_date", "install_date", "installed", "installation_date", "date_installed")
"""Fields (dates) a feature's life starts at, besides `install_year`; first found wins."""
END_NAMES = (
    "end_date",
    "removed_date",
    "removal_date",
    "date_removed",
    "abandoned_date",
    "abandon_date",
    "date_abandoned",
    "decommissioned_date",
    "removed_year",
    "removal_year",
    "year_removed",
    "abandoned_year",
    "year_abandoned",
)
"""Fields (dates, or years) a feature's life ends at; first found wins."""
ENDED = ("abandoned", "removed")
"""Statuses of an asset whose life has ended."""


@dataclass(frozen=True)
class Life:
    """When each feature of a layer existed, as `datetime` matches it (UTC; NaT: unknown)."""

    start: pd.Series
    end: pd.Series
    kind: str
    """`life` (installed to removed), `period` (start and end dates) or `changed` (the time
    of the feature's last change, for layers that record no life)."""


def _field(schema: LayerSchema, names: tuple[str, ...]) -> Field | None:
    by_name = {f.name.lower(): f for f in schema.fields}
    for name in names:
        f = by_name.get(name)
        if f is not None and f.type in (FieldType.DATE, FieldType.DATETIME, FieldType.INTEGER):
            return f
    return None


def _times(col: pd.Series, ftype: FieldType, *, end: bool) -> pd.Series:
    """A date, date-time or year column as UTC timestamps (a year ends on its last instant)."""
    if ftype is FieldType.INTEGER:
        years = pd.to_numeric(col, errors="coerce").astype("float64")
        years = years.where((years >= 1678) & (years <= 2261))  # what timestamps hold
        days = pd.DataFrame({"year": years, "month": 1, "day": 1}, index=col.index)
        t = _as_utc(pd.to_datetime(days, errors="coerce"))
        return t + pd.DateOffset(years=1) - pd.Timedelta(milliseconds=1) if end else t
    t = _as_utc(pd.to_datetime(col, errors="coerce", utc=ftype is FieldType.DATETIME))
    if ftype is FieldType.DATE and end:
        t = t + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1)
    return t


def life(layer: Layer) -> Life:
    """When each feature of `layer` existed, as `datetime` (OGC API Features) matches it.

    An asset's life runs from its installation (`install_year`, from the first instant of that
    year, or an install date) to its removal (a removal or abandonment date or year, when the
    schema has one); an asset whose status says it was abandoned or removed, with no date for
    it, ended at an unknown time before its last change, taken as its end. A layer with
    `start_date` and `end_date` (construction sites) is matched by the period it covers; any
    other by the time of its last change (`_updated`). Made once per layer.
    """
    return layer.derived(life, lambda: _life(layer))


def _life(layer: Layer) -> Life:
    schema = layer.schema
    names = schema.field_names
    if "start_date" in names and "end_date" in names:
        first, last = schema.field("start_date"), schema.field("end_date")
        return Life(
            _times(layer.attrs["start_date"], first.type, end=False),
            _times(layer.attrs["end_date"], last.type, end=True),
            "period",
        )
    start_f = _field(schema, (INSTALL_YEAR, *START_NAMES))
    if start_f is None:
        changed = _as_utc(pd.to_datetime(layer.attrs[UPDATED], utc=True))
        return Life(changed, changed, "changed")
    start = _times(layer.attrs[start_f.name], start_f.type, end=False)
    end_f = _field(schema, END_NAMES)
    if end_f is not None:
        end = _times(layer.attrs[end_f.name], end_f.type, end=True)
    else:
        end = pd.Series(pd.NaT, index=layer.attrs.index, dtype="datetime64[ns, UTC]")
    if "status" in names:
        ended = np.asarray(layer.attrs["status"].isin(ENDED).fillna(False), dtype=bool)
        changed = _as_utc(pd.to_datetime(layer.attrs[UPDATED], utc=True))
        end = end.where(~(ended & end.isna().to_numpy()), changed)
    return Life(start, end, "life")


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


def _as_utc(col: pd.Series) -> pd.Series:
    if getattr(col.dt, "tz", None) is None:
        return col.dt.tz_localize("UTC")
    return col


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
