"""Source columns onto schema fields: by the schema's aliases, `--map` and `--set`.

Column names are compared case-insensitively, with spaces, dots and hyphens read as `_`
(`Install Date` finds `install_date`). A field takes the first of its aliases the file has,
skipping columns that are empty throughout; for an enumerated field (network, status, ...)
the candidate whose values the field recognises best wins, so Ottawa's `FUNCTION`
(LOCAL, COLLECTOR) loses `network` to a column of real network codes. Among levels of one
name (`NAME`, `NAME_1`, `NAME_2`), the one that tells features apart best wins: the most
distinct values, then the most specific level (the highest number). Each source column
feeds at most one field; `--map` always wins, and `--map COLUMN=` or `--drop COLUMN` drops
a column on purpose. What no field takes is kept as an extra attribute (`importers.extras`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from importers.cleaning import ValueNote, clean, recognised_share
from importers.errors import InvalidOption
from layers.layer import dtype_of
from layers.models import Field, FieldType, LayerSchema

_SEPARATORS = re.compile(r"[\s.\-]+")


def column_key(name: str) -> str:
    """How column names are compared: lower case, spaces/dots/hyphens as `_`."""
    return _SEPARATORS.sub("_", str(name).strip().lower())


@dataclass
class MappingPlan:
    """Which source column feeds each field, the constants, and the columns left out."""

    columns: dict[str, str] = field(default_factory=dict)
    """field -> source column"""
    constants: dict[str, Any] = field(default_factory=dict)
    """field -> cleaned constant value"""
    dropped: list[str] = field(default_factory=list)
    """source columns dropped on purpose (`--map COLUMN=`)"""

    def unmapped(self, columns: Sequence[str], *, also_used: Sequence[str] = ()) -> list[str]:
        """Source columns no field takes and none dropped, in file order."""
        used = set(self.columns.values()) | set(self.dropped) | set(also_used)
        return [c for c in columns if c not in used]


def _find(columns: Sequence[str], wanted: str) -> str | None:
    if wanted in columns:
        return wanted
    key = column_key(wanted)
    return next((c for c in columns if column_key(c) == key), None)


def _constant(f: Field, raw: str, schema: LayerSchema) -> Any:
    """The cleaned value of `--set field=raw`; `InvalidOption` when it cannot be one."""
    if raw == "":
        return None
    values, _ = clean(pd.Series([raw], dtype=object), f)
    value = values.iloc[0]
    if pd.isna(value):
        what = f"one of {', '.join(f.choices)}" if f.choices else f"a valid {f.type.value}"
        if f.minimum is not None or f.maximum is not None:
            what += f" within {f.minimum if f.minimum is not None else ''}–{f.maximum if f.maximum is not None else ''}"
        raise InvalidOption(f"--set {f.name}={raw}: {raw!r} is not {what}")
    return value


def plan_mapping(
    frame: pd.DataFrame,
    schema: LayerSchema,
    mapping: Mapping[str, str],
    constants: Mapping[str, str],
    drop: Sequence[str] = (),
) -> MappingPlan:
    """Decide which column feeds which field; `InvalidOption` for a bad `--map`/`--set`/`--drop`."""
    columns = [str(c) for c in frame.columns if c != "geometry"]
    names = schema.field_names
    plan = MappingPlan()
    for src in drop:
        col = _find(columns, src)
        if col is None:
            raise InvalidOption(
                f"--drop {src}: the file has no column {src!r}; its columns are "
                + ", ".join(columns)
            )
        if col not in plan.dropped:
            plan.dropped.append(col)
    for src, dst in mapping.items():
        col = _find(columns, src)
        if col is None:
            raise InvalidOption(
                f"--map {src}={dst}: the file has no column {src!r}; its columns are "
                + ", ".join(columns)
            )
        if dst == "":
            if col not in plan.dropped:
                plan.dropped.append(col)
            continue
        if dst not in names:
            raise InvalidOption(
                f"--map {src}={dst}: {schema.name} has no field {dst!r}; its fields are "
                + ", ".join(names)
            )
        if dst in plan.columns:
            raise InvalidOption(f"--map: field {dst!r} is given two source columns")
        plan.columns[dst] = col
    for name, raw in constants.items():
        if name not in names:
            raise InvalidOption(
                f"--set {name}={raw}: {schema.name} has no field {name!r}; its fields are "
                + ", ".join(names)
            )
        plan.constants[name] = _constant(schema.field(name), raw, schema)
    taken = set(plan.columns.values()) | set(plan.dropped)
    for f in schema.fields:
        if f.name in plan.columns or f.name in plan.constants:
            continue
        candidates: list[str] = []
        for alias in (f.name, *f.aliases):
            for c in columns:
                if column_key(c) == column_key(alias) and c not in taken and c not in candidates:
                    candidates.append(c)
        candidates = [c for c in candidates if frame[c].notna().any()]
        if not candidates:
            continue
        chosen = candidates[0]
        if f.choices and len(candidates) > 1:
            scores = [recognised_share(frame[c], f) for c in candidates]
            best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
            if scores[best] > 0:
                chosen = candidates[best]
        else:
            chosen = _most_telling(frame, chosen, candidates)
        plan.columns[f.name] = chosen
        taken.add(chosen)
    return plan


_LEVEL = re.compile(r"^(.*?)_?(\d+)$")


def _level(column: str) -> tuple[str, int]:
    """A column's name stem and level: `NAME_2` -> (`name`, 2), `NAME` -> (`name`, 0)."""
    key = column_key(column)
    m = _LEVEL.match(key)
    return (m.group(1), int(m.group(2))) if m and m.group(1) else (key, 0)


def _most_telling(frame: pd.DataFrame, chosen: str, candidates: Sequence[str]) -> str:
    """Among `chosen` and the other levels of its name (`NAME`, `NAME_1`, `NAME_2`), the one
    with the most distinct values; on a tie the most specific level (the highest number)."""
    stem = _level(chosen)[0]
    levels = [c for c in candidates if _level(c)[0] == stem]
    if len(levels) < 2:
        return chosen
    return max(levels, key=lambda c: (frame[c].nunique(dropna=True), _level(c)[1]))


def build_attrs(
    frame: pd.DataFrame, schema: LayerSchema, plan: MappingPlan
) -> tuple[pd.DataFrame, list[ValueNote]]:
    """The typed attribute table of `schema` from `frame` by `plan`, with cleaning notes."""
    n = len(frame)
    cols: dict[str, pd.Series] = {}
    notes: list[ValueNote] = []
    for f in schema.fields:
        if f.name in plan.constants:
            value = plan.constants[f.name]
            cols[f.name] = _repeat(value, n, f)
        elif f.name in plan.columns:
            values, field_notes = clean(frame[plan.columns[f.name]], f)
            cols[f.name] = values
            notes.extend(field_notes)
        else:
            cols[f.name] = _repeat(None, n, f)
    return pd.DataFrame(cols, index=pd.RangeIndex(n)), notes


def _repeat(value: Any, n: int, f: Field) -> pd.Series:
    """`value` (None: null) on `n` rows, in field `f`'s dtype (broadcast, not a list of n)."""
    dtype = dtype_of(f.type)
    if value is None:
        value = pd.NaT if f.type in (FieldType.DATE, FieldType.DATETIME) else pd.NA
    return pd.Series(value, index=pd.RangeIndex(n), dtype=dtype)
