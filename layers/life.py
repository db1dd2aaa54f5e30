"""When each feature of a layer existed, as OGC API Features' `datetime` matches it, and the
temporal extent of a layer: its features' first and last instants (a store not held in
memory works the extent out itself, by the same rules: `LifeFields`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from layers.layer import UPDATED, Layer
from layers.models import Field, FieldType, LayerSchema

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


def life_field(schema: LayerSchema, names: tuple[str, ...]) -> Field | None:
    by_name = {f.name.lower(): f for f in schema.fields}
    for name in names:
        f = by_name.get(name)
        if f is not None and f.type in (FieldType.DATE, FieldType.DATETIME, FieldType.INTEGER):
            return f
    return None


def times(col: pd.Series, ftype: FieldType, *, end: bool) -> pd.Series:
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
            times(layer.attrs["start_date"], first.type, end=False),
            times(layer.attrs["end_date"], last.type, end=True),
            "period",
        )
    start_f = life_field(schema, (INSTALL_YEAR, *START_NAMES))
    if start_f is None:
        changed = _as_utc(pd.to_datetime(layer.attrs[UPDATED], utc=True))
        return Life(changed, changed, "changed")
    start = times(layer.attrs[start_f.name], start_f.type, end=False)
    end_f = life_field(schema, END_NAMES)
    if end_f is not None:
        end = times(layer.attrs[end_f.name], end_f.type, end=True)
    else:
        end = pd.Series(pd.NaT, index=layer.attrs.index, dtype="datetime64[ns, UTC]")
    if "status" in names:
        ended = np.asarray(layer.attrs["status"].isin(ENDED).fillna(False), dtype=bool)
        changed = _as_utc(pd.to_datetime(layer.attrs[UPDATED], utc=True))
        end = end.where(~(ended & end.isna().to_numpy()), changed)
    return Life(start, end, "life")


def _as_utc(col: pd.Series) -> pd.Series:
    if getattr(col.dt, "tz", None) is None:
        return col.dt.tz_localize("UTC")
    return col


@dataclass(frozen=True)
class LifeFields:
    """Which fields a layer's life is read from (see `life`): `kind` `period` (start and end
    dates), `life` (installed to removed; `status` ending it at the last change when no end
    date says when) or `changed` (the time of the last change)."""

    kind: str
    start: Field | None
    end: Field | None
    status: bool


def life_fields(schema: LayerSchema) -> LifeFields:
    """The fields `schema`'s life is read from."""
    names = schema.field_names
    if "start_date" in names and "end_date" in names:
        return LifeFields("period", schema.field("start_date"), schema.field("end_date"), False)
    start_f = life_field(schema, (INSTALL_YEAR, *START_NAMES))
    if start_f is None:
        return LifeFields("changed", None, None, False)
    return LifeFields("life", start_f, life_field(schema, END_NAMES), "status" in names)


def temporal_extent(layer: Layer) -> list[str | None] | None:
    """[first, last] instant of the features' lives, as `datetime` matches them (`life`); the
    end is open (None) while a feature of known start has no end. Computed once per layer
    version."""
    ext = layer.derived(temporal_extent, lambda: _life_span(layer))
    return None if ext == [None, None] else ext


def extent_text(first: Any, last: Any, open_end: bool, kind: str) -> list[str | None] | None:
    """The temporal extent of a layer from its lives' first start and last end (NaT / None:
    none known) and whether a life of known start has no end."""
    first, last = (
        None if t is None or pd.isna(t) else _utc(pd.Timestamp(t)) for t in (first, last)
    )
    if first is None and last is None and not open_end:
        return None
    if kind != "changed" and open_end:
        last = None  # still in service
    out = [None if t is None else t.isoformat().replace("+00:00", "Z") for t in (first, last)]
    return None if out == [None, None] else out


def _utc(t: pd.Timestamp) -> pd.Timestamp:
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _life_span(layer: Layer) -> list[str | None]:
    lived = life(layer)
    known = lived.start.notna() | lived.end.notna()
    if not known.any():
        return [None, None]
    first = lived.start.min() if lived.start.notna().any() else None
    last = lived.end.max() if lived.end.notna().any() else None
    open_end = bool((lived.end.isna() & lived.start.notna()).any())
    return extent_text(first, last, open_end, lived.kind) or [None, None]
